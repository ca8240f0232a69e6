"""The CUDA sources compile, and the Python side calls them by the right names and C types.

* every ``kernels/*.cu`` compiles with ``nvcc`` for sm_80 and sm_90 (skipped,
  with the reason, where nvcc is not on PATH);
* every ``kernels/*.cu`` compiles with NVRTC -- the compiler cupy.RawModule
  uses -- with the exact options of ``gpu_deconv._cuda.modules``, one module per
  precision, and holds every kernel ``gpu_deconv._cuda`` may ask for
  (skipped where no libnvrtc is found; ``GPU_DECONV_NVRTC=/path/libnvrtc.so``
  points at one);
* every header compiles with the host C++ compiler alone;
* the ``extern "C"`` signatures in the sources, read from the preprocessed
  code, are those of ``gpu_deconv._cuda.SIGNATURES`` (the launchers convert
  their arguments by that table), and every kernel the sources define is one
  the launchers know;
* importing gpu_deconv compiles nothing and imports no cupy; the sources are
  found both as package data and from a plain checkout on PYTHONPATH.
"""

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_deconv import _cuda
from gpu_deconv._cuda import launch as _launch
from gpu_deconv._cuda import modules as _kernels

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
CU_FILES = sorted(KERNELS.glob("*.cu"))
CUH_FILES = sorted(KERNELS.glob("*.cuh"))
ARCHS = ("80", "90")
DTYPES = (np.float32, np.float64)
NVCC = shutil.which("nvcc")


def _cxx():
    for c in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


CXX = _cxx()


def test_sources_are_where_the_loader_looks():
    assert {p.stem for p in CU_FILES} == set(_kernels.MODULES)
    assert _kernels.source_dir().resolve() == KERNELS.resolve()
    assert set(_cuda.MODULE_OF.values()) == set(_kernels.MODULES)


# ---------------------------------------------------------------------- nvcc
@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    """Compile every .cu for sm_80 and sm_90 (device code only), all files at once."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH: the CUDA sources were NOT compiled (install the CUDA toolkit "
                    "to check them)")
    out = tmp_path_factory.mktemp("nvcc")
    gencode = [a for cc in ARCHS for a in ("-gencode", f"arch=compute_{cc},code=sm_{cc}")]
    procs = {}
    for cu in CU_FILES:
        cmd = [NVCC, "-std=c++14", f"-I{KERNELS}", "--fatbin", *gencode, "-o", str(out / f"{cu.stem}.fatbin"),
               str(cu)]
        procs[cu.name] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True))
    results = {}
    for name, (cmd, proc) in procs.items():
        text, _ = proc.communicate(timeout=600)
        results[name] = (proc.returncode, " ".join(cmd), text, out / f"{Path(name).stem}.fatbin")
    return results


@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_nvcc_compiles_for_sm80_and_sm90(nvcc_results, cu):
    rc, cmd, text, fatbin = nvcc_results[cu]
    assert rc == 0, f"{cmd}\n{text}"
    assert fatbin.stat().st_size > 0


# --------------------------------------------------------------------- NVRTC
def _nvrtc_candidates():
    env = os.environ.get("GPU_DECONV_NVRTC")
    if env:
        yield env
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    for root in roots:
        yield from sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")))
    for root in filter(None, (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        yield from sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found


def _load_nvrtc():
    for cand in _nvrtc_candidates():
        folder = os.path.dirname(cand)
        try:
            # libnvrtc opens its builtins library by name: load it first, globally.
            for b in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so*"))):
                if ".alt." not in b:
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                    break
            lib = ctypes.CDLL(cand)
            lib.nvrtcCreateProgram  # noqa: B018  (an attribute error means not NVRTC)
            return lib, cand
        except (OSError, AttributeError):
            continue
    return None, None


@pytest.fixture(scope="module")
def nvrtc():
    lib, path = _load_nvrtc()
    if lib is None:
        pytest.skip("no libnvrtc found (pip wheel nvidia-cuda-nvrtc, the CUDA toolkit, or "
                    "GPU_DECONV_NVRTC=/path/libnvrtc.so): the NVRTC compile of the sources was NOT checked")
    return lib


def _nvrtc_compile(lib, source, name, options, *, cubin=False):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), 0, None, None)
    assert rc == 0, f"nvrtcCreateProgram failed ({rc})"
    try:
        opts = [o.encode() for o in options]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            return rc, log.value.decode(errors="replace"), b""
        get_size, get = ((lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin
                         else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX))
        assert get_size(prog, ctypes.byref(size)) == 0
        code = ctypes.create_string_buffer(size.value)
        assert get(prog, code) == 0
        return rc, log.value.decode(errors="replace"), code.raw if cubin else code.value
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _expected_names(module, dtype):
    names = set()
    for kind, mod in _cuda.MODULE_OF.items():
        if mod != module:
            continue
        if kind in _launch.PER_BOUNDARY:
            names |= {_cuda.kernel_name(kind, dtype, boundary=b, ndim=nd)
                      for b in _cuda.BOUNDARY_CODES for nd in range(1, _cuda.MAX_NDIM + 1)}
        elif kind in _launch.PER_NDIM:
            names |= {_cuda.kernel_name(kind, dtype, ndim=nd) for nd in range(1, _cuda.MAX_NDIM + 1)}
        else:
            names.add(_cuda.kernel_name(kind, dtype))
    return names


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("module", _kernels.MODULES)
def test_nvrtc_compiles_as_cupy_would(nvrtc, module, dtype):
    source = (KERNELS / f"{module}.cu").read_bytes()
    # cupy >= 13 adds -std=c++14 and -ftz=true, and the target of the device.
    options = list(_kernels.compile_options(dtype)) + ["-std=c++14", "-ftz=true",
                                                       "--gpu-architecture=compute_80"]
    rc, log, ptx = _nvrtc_compile(nvrtc, source, f"{module}.cu", options)
    assert rc == 0, f"NVRTC failed on {module}.cu with {options}:\n{log}"
    entries = set(re.findall(rb"\.entry\s+(\w+)", ptx))
    entries = {e.decode() for e in entries}
    assert entries == _expected_names(module, dtype)


# The options CuPy itself passes to NVRTC for a RawModule on an sm_90 device
# (CuPy 13.6: C++11; CuPy 14.2: C++17), after the module's own.
CUPY_OPTION_SETS = {
    "cupy13": ("--std=c++11", "-ftz=true", "-arch=sm_90", "--device-as-default-execution-space"),
    "cupy14": ("--std=c++17", "-ftz=true", "-arch=sm_90", "--device-as-default-execution-space"),
}


@pytest.mark.parametrize("cupy_options", list(CUPY_OPTION_SETS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("module", _kernels.MODULES)
def test_nvrtc_compiles_a_cubin_with_cupys_options(nvrtc, module, dtype, cupy_options):
    source = (KERNELS / f"{module}.cu").read_bytes()
    options = list(_kernels.compile_options(dtype)) + list(CUPY_OPTION_SETS[cupy_options])
    rc, log, cubin = _nvrtc_compile(nvrtc, source, f"{module}.cu", options, cubin=True)
    assert rc == 0, f"NVRTC failed on {module}.cu with {options}:\n{log}"
    assert cubin[:4] == b"\x7fELF", "not a cubin"
    # every kernel is a global function symbol with its own .text section in the ELF
    entries = {e.decode() for e in re.findall(rb"\.text\.(gd_\w+)\x00", cubin)}
    assert entries == _expected_names(module, dtype)


# -------------------------------------------------------------- host compiler
@pytest.mark.skipif(CXX is None, reason="no host C++ compiler on PATH")
def test_headers_compile_with_the_host_compiler_alone():
    for h in CUH_FILES:
        cmd = [CXX, "-std=c++14", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-x", "c++",
               f"-I{KERNELS}", str(h)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"


def test_sources_use_no_outside_headers():
    for f in CU_FILES + CUH_FILES:
        for inc in re.findall(r'#\s*include\s*[<"]([^>"]+)[>"]', f.read_text()):
            assert (KERNELS / inc).is_file(), f"{f.name} includes {inc}, which is not a sibling header"


# ---------------------------------------------------------------- signatures
_CTYPES = {"i64": "long long", "i32": "int", "f64": "double", "f64*": "double*", "i64*": "long long*",
           "b*": "bool*"}


def _c_type(spec, dtype):
    spec = spec.lstrip("?")
    real = "float" if np.dtype(dtype) == np.float32 else "double"
    if spec == "T*":
        return f"{real}*"
    if spec == "C*":
        return f"gd_complex<{real}>*"
    return _CTYPES[spec]


def _normalize(param):
    p = re.sub(r"\b(const|__restrict__)\b", " ", param)
    p = re.sub(r"\s*\*\s*", "* ", p)
    p = re.sub(r"\s*<\s*", "<", re.sub(r"\s*>\s*", ">", p))
    words = p.split()
    return " ".join(words[:-1]) if words[-1][-1] != "*" else " ".join(words)


@pytest.fixture(scope="module")
def kernel_signatures():
    if CXX is None:
        pytest.skip("no host C++ compiler on PATH to preprocess the sources")
    sigs = {}
    for cu in CU_FILES:
        res = subprocess.run([CXX, "-E", "-P", "-x", "c++", f"-I{KERNELS}", str(cu)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        text = " ".join(res.stdout.split())
        for name, params in re.findall(r'extern "C" __global__ void (\w+)\s*\(([^)]*)\)', text):
            sigs[name] = (cu.stem, tuple(_normalize(p) for p in params.split(",")))
    return sigs


def test_launchers_match_kernel_signatures(kernel_signatures):
    seen = set()
    for dtype in DTYPES:
        for module in _kernels.MODULES:
            for name in _expected_names(module, dtype):
                assert name in kernel_signatures, f"{name} is not defined in kernels/{module}.cu"
                src_module, params = kernel_signatures[name]
                assert src_module == module
                # the longest kind that prefixes the name (crop_scaled, not crop)
                kind = max((k for k in _cuda.SIGNATURES if name.startswith(f"gd_{k}_") or name == f"gd_{k}"),
                           key=len)
                want = tuple(_c_type(s, dtype) for s in _cuda.SIGNATURES[kind])
                assert params == want, f"{name}: source takes {params}, launcher passes {want}"
                seen.add(name)
    assert set(kernel_signatures) == seen, f"kernels no launcher calls: {set(kernel_signatures) - seen}"


# -------------------------------------------------------------- import time
def test_import_compiles_nothing_and_imports_no_cupy():
    code = ("import sys, gpu_deconv, gpu_deconv._cuda, gpu_deconv._cuda.modules, gpu_deconv._memory; "
            "assert 'cupy' not in sys.modules, 'cupy imported'; "
            "assert not gpu_deconv._cuda.modules._MODULES; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_sources_found_from_a_plain_checkout():
    # Without the editable-install finder, gpu_deconv comes from the checkout on sys.path
    # and the package gpu_deconv.kernels does not exist: the loader looks beside the package.
    code = ("import sys; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {str(ROOT)!r}); "
            "from gpu_deconv._cuda import modules as _kernels; print(_kernels.source_dir())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT / "tests"))
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).resolve() == KERNELS.resolve()


def test_compile_options_carry_the_include_path_and_source_digest():
    opts = _kernels.compile_options(np.float32)
    assert f"-I{KERNELS}" in opts or f"-I{KERNELS.resolve()}" in opts
    assert "-DGD_ONLY_F32" in opts
    assert any(o.startswith("-DGD_SOURCE_HASH=0x") for o in opts)
    with pytest.raises(TypeError, match="float16"):
        _kernels.compile_options(np.float16)
