"""The grid executor of the simulator: real ``kernels/*.cu`` files compiled by g++ and run on the CPU.

A module's source is compiled with ``cuda_host.h`` force-included (it maps
``__global__``, ``__shared__``, ``threadIdx``, ``__syncthreads()``... onto
host C++; see that file) into a shared library, together with one generated
``extern "C"`` launch entry per ``__global__`` kernel, and called through
:mod:`ctypes`. Libraries are cached on disk by the digest of everything that
goes into them (``GPU_DECONV_SIMULATOR_CACHE``, default a folder of the
temporary directory), so a source edit rebuilds and nothing else does.

The same sources can be linked instead with ``driver.cpp`` into a program
built with ``-fsanitize=thread`` or ``-fsanitize=address``
(:meth:`Module.run_sanitized`): a sanitizer runtime cannot be loaded into a
running Python, so those launches run in a child process.

This proves the kernels' logic (indexing, loops, barriers) on the CPU; it says
nothing of their speed or of the device's own rules beyond those checked here.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Module", "KernelInfo", "LaunchError", "compiler", "cache_dir", "SANITIZERS",
           "CUDA_LIMITS", "check_launch_dims"]

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_host.h"
DRIVER = HERE / "driver.cpp"
#: Version of the wrapper generator (part of the cache key).
_GEN_VERSION = "4"
#: How the threads of a block run (the `threaded` argument of gdsim::launch in cuda_host.h).
THREAD_MODES = {"serial": 0, "pool": 1, "fibers": 2}
#: Sanitizers :meth:`Module.run_sanitized` knows.
SANITIZERS = ("thread", "address")
#: CUDA's launch limits (compute capability >= 3.0), checked before every launch.
CUDA_LIMITS = {"grid": (2**31 - 1, 65535, 65535), "block": (1024, 1024, 64), "threads_per_block": 1024}

_C_DTYPES = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "gd_complex<float>": np.dtype(np.complex64), "gd_complex<double>": np.dtype(np.complex128),
    "long long": np.dtype(np.int64), "bool": np.dtype(np.bool_),
}
_C_SCALARS = {"long long": (np.int64, ctypes.c_longlong), "int": (np.int32, ctypes.c_int),
              "unsigned int": (np.uint32, ctypes.c_uint),
              "unsigned long long": (np.uint64, ctypes.c_ulonglong), "double": (np.float64, ctypes.c_double)}


class LaunchError(RuntimeError):
    """A launch the simulator refuses (bad arguments or dimensions) or that failed (barrier misuse)."""


@dataclass(frozen=True)
class KernelInfo:
    """One ``__global__`` kernel: its C parameter types and whether it uses shared memory."""

    name: str
    params: tuple
    threaded: bool

    def param_kind(self, i):
        """``("ptr", dtype)`` or ``("scalar", numpy type)`` of parameter i."""
        t = self.params[i]
        if t.endswith("*"):
            base = re.sub(r"\bconst\b", "", t[:-1]).strip()
            if base not in _C_DTYPES:
                raise LaunchError(f"kernel {self.name}: no array dtype for C type {t!r}")
            return "ptr", _C_DTYPES[base]
        if t not in _C_SCALARS:
            raise LaunchError(f"kernel {self.name}: no scalar type for C type {t!r}")
        return "scalar", _C_SCALARS[t][0]


def compiler() -> str | None:
    """The host C++ compiler (``CXX`` or g++), or None when there is none."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def cache_dir() -> Path:
    """Where built libraries are kept (``GPU_DECONV_SIMULATOR_CACHE`` or a temp folder)."""
    d = os.environ.get("GPU_DECONV_SIMULATOR_CACHE")
    p = Path(d) if d else Path(tempfile.gettempdir()) / f"gpu_deconv_simulator_{os.getuid()}"
    p.mkdir(parents=True, exist_ok=True)
    return p


def check_launch_dims(grid, block):
    """(grid, block) as 3-tuples of ints, checked against CUDA's limits (LaunchError)."""
    out = []
    for what, dims in (("grid", grid), ("block", block)):
        dims = tuple(dims)
        if not 1 <= len(dims) <= 3 or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise LaunchError(f"{what} must be a tuple of 1 to 3 Python ints; got {dims!r}")
        dims = dims + (1,) * (3 - len(dims))
        for axis, (d, lim) in enumerate(zip(dims, CUDA_LIMITS[what])):
            if not 1 <= d <= lim:
                raise LaunchError(f"{what} dimension {'xyz'[axis]} = {d} outside CUDA's range 1..{lim}")
        out.append(dims)
    if out[1][0] * out[1][1] * out[1][2] > CUDA_LIMITS["threads_per_block"]:
        raise LaunchError(f"block {out[1]} has more than {CUDA_LIMITS['threads_per_block']} threads")
    return out[0], out[1]


def _host_options(options):
    """The -I / -D options of an NVRTC option list (the rest means nothing to g++)."""
    out = []
    for o in options:
        if o.startswith(("-I", "-D")) and len(o) > 2:
            out.append(o)
    return out


def _included_files(options):
    files = []
    for o in options:
        if o.startswith("-I"):
            d = Path(o[2:])
            if d.is_dir():
                files += sorted(p for p in d.iterdir() if p.suffix in (".cuh", ".h", ".cu"))
    return files


def _split_params(text):
    text = text.strip()
    if not text or text == "void":
        return ()
    params = []
    for p in text.split(","):
        p = re.sub(r"\b__restrict__\b|\b__restrict\b", "", p)
        p = " ".join(p.replace("*", " * ").split())
        m = re.match(r"^(.*?)\s*([A-Za-z_]\w*)$", p)
        if not m:
            raise LaunchError(f"cannot parse kernel parameter {p!r}")
        params.append(m.group(1).replace(" *", "*").replace("* ", "*").strip())
    return tuple(params)


_KERNEL_RE = re.compile(r'extern\s+"C"\s+GDSIM_KERNEL\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{')


def scan_kernels(preprocessed: str) -> list:
    """The ``extern "C" __global__`` kernels of a preprocessed source (marker build)."""
    kernels = []
    for m in _KERNEL_RE.finditer(preprocessed):
        depth, i = 1, m.end()
        while depth and i < len(preprocessed):
            c = preprocessed[i]
            depth += (c == "{") - (c == "}")
            i += 1
        body = preprocessed[m.end():i]
        kernels.append(KernelInfo(m.group(1), _split_params(m.group(2)), "GDSIM_SHARED" in body))
    return kernels


def _wrappers(src_name, kernels):
    lines = [f'#include "{src_name}"', "", '// Generated by gpu_deconv._simulator.executor.']
    for k in kernels:
        call = ", ".join(f"gdsim::arg<{t}>(a, {i})" for i, t in enumerate(k.params))
        lines += [
            f'extern "C" int gdsim_launch_{k.name}(const unsigned* g, const unsigned* b, void** a, int rev, '
            "int threaded) {",
            f"    const std::function<void()> body = [a]() {{ {k.name}({call}); }};",
            "    return gdsim::launch(g, b, rev, threaded, body);",
            "}",
        ]
    lines += ['extern "C" const gdsim_entry gdsim_table[] = {']
    lines += [f'    {{"{k.name}", gdsim_launch_{k.name}}},' for k in kernels]
    lines += ["};", f'extern "C" const int gdsim_ntable = {len(kernels)};',
              'extern "C" const char* gdsim_error() { return gdsim::error.c_str(); }',
              'extern "C" void gdsim_shutdown() { gdsim::pool.stop(); }', ""]
    return "\n".join(lines)


_LOCK = threading.Lock()
_LOADED: dict = {}
_BASE_FLAGS = ("-std=c++20", "-pthread", "-fPIC", "-w", "-U_FORTIFY_SOURCE")  # fibers _longjmp across stacks


def _run(cmd, what):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise LaunchError(f"{what} failed ({shlex.join(cmd)}):\n{res.stderr[-6000:]}")
    return res.stdout


class Module:
    """A ``.cu`` source compiled for the host: its kernels, launchable through ctypes.

    Parameters
    ----------
    code : str
        The CUDA source (as given to ``cupy.RawModule``).
    options : sequence of str
        NVRTC options; the ``-I`` and ``-D`` ones are passed to g++.
    opt : str
        Optimisation flag of the host build.
    """

    def __init__(self, code: str, options=(), *, opt="-O1"):
        cxx = compiler()
        if cxx is None:
            raise LaunchError("the simulator needs a C++ compiler (g++ or $CXX); none found")
        self.cxx = cxx
        self.code = code
        self.options = _host_options(options)
        self.opt = opt
        h = hashlib.sha256()
        for part in (_GEN_VERSION, HEADER.read_text(), DRIVER.read_text(), code, "\0".join(self.options), opt,
                     cxx, _run([cxx, "--version"], "compiler version")):
            h.update(part.encode())
            h.update(b"\0")
        for p in _included_files(self.options):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        self.key = h.hexdigest()[:20]
        self.dir = cache_dir() / self.key
        self._lib = None
        self.kernels = self._prepare()

    # ------------------------------------------------------------- building
    def _flags(self):
        return [*_BASE_FLAGS, "-include", str(HEADER), f"-I{HERE}", *self.options]

    def _prepare(self) -> dict:
        with _LOCK:
            wrap = self.dir / "wrap.cpp"
            if not wrap.is_file():
                tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".build-"))
                try:
                    self._generate(tmp)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                try:
                    tmp.rename(self.dir)
                except OSError:  # another process built it first
                    shutil.rmtree(tmp, ignore_errors=True)
            kernels = {}
            for line in (self.dir / "kernels.txt").read_text().splitlines():
                name, threaded, params = line.split("|")
                kernels[name] = KernelInfo(name, tuple(p for p in params.split(";") if p), threaded == "1")
            return kernels

    def _generate(self, tmp):
        """Preprocess the source, find its kernels, write the wrappers and the kernel list into `tmp`."""
        (tmp / "module.cu").write_text(self.code)
        pre = _run([self.cxx, "-x", "c++", "-E", "-P", "-D__global__=GDSIM_KERNEL",
                    "-D__shared__=GDSIM_SHARED static", *self._flags(), str(tmp / "module.cu")],
                   "preprocessing the module")
        kernels = scan_kernels(pre)
        if not kernels:
            raise LaunchError("no extern \"C\" __global__ kernel found in the module")
        (tmp / "wrap.cpp").write_text(_wrappers("module.cu", kernels))
        (tmp / "kernels.txt").write_text(
            "\n".join(f"{k.name}|{int(k.threaded)}|{';'.join(k.params)}" for k in kernels) + "\n")

    def _build(self, target: Path, extra, what, sources=()):
        if target.is_file():
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        _run([self.cxx, *self._flags(), *extra, "-o", str(tmp), str(self.dir / "wrap.cpp"), *sources], what)
        os.replace(tmp, target)
        return target

    def library(self) -> Path:
        """Path of the shared library (built on first use)."""
        with _LOCK:
            return self._build(self.dir / "module.so", [self.opt, "-shared"], "compiling the module")

    def sanitized_program(self, sanitizer: str) -> Path:
        """Path of the stand-alone driver built with ``-fsanitize=<sanitizer>``."""
        if sanitizer not in SANITIZERS:
            raise ValueError(f"sanitizer must be one of {', '.join(SANITIZERS)}; got {sanitizer!r}")
        with _LOCK:
            return self._build(self.dir / f"driver-{sanitizer}", ["-O1", "-g", f"-fsanitize={sanitizer}",
                                                                 "-fno-omit-frame-pointer"],
                               f"compiling the {sanitizer}-sanitized driver", sources=[str(DRIVER)])

    def _load(self):
        if self._lib is None:
            path = str(self.library())
            with _LOCK:
                lib = _LOADED.get(path)
                if lib is None:
                    lib = ctypes.CDLL(path)
                    lib.gdsim_error.restype = ctypes.c_char_p
                    for k in self.kernels:
                        fn = getattr(lib, f"gdsim_launch_{k}")
                        fn.restype = ctypes.c_int
                        fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                       ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
                    _LOADED[path] = lib
                self._lib = lib
        return self._lib

    # ------------------------------------------------------------ launching
    def info(self, name) -> KernelInfo:
        try:
            return self.kernels[name]
        except KeyError:
            have = ", ".join(sorted(self.kernels))
            raise LaunchError(f"the module has no kernel {name!r}; it has {have}") from None

    def check_args(self, name, args):
        """Arguments checked against the kernel's C signature; returns its KernelInfo.

        Arrays (``numpy.ndarray``, C-contiguous, of the exact dtype the C
        pointer points to) for pointer parameters; for the others exactly the
        NumPy scalar type CuPy would pass (``numpy.int64`` for ``long long``,
        ``numpy.int32`` for ``int``): a Python int is refused, since which
        width CuPy gives it is not what the kernel must rely on.
        """
        k = self.info(name)
        if len(args) != len(k.params):
            raise LaunchError(f"kernel {name} takes {len(k.params)} arguments; got {len(args)}")
        for i, a in enumerate(args):
            kind, t = k.param_kind(i)
            if kind == "ptr":
                if not isinstance(a, np.ndarray):
                    raise LaunchError(f"kernel {name}: argument {i} ({k.params[i]}) must be an array; got "
                                      f"{type(a).__name__}")
                if a.dtype != t:
                    raise LaunchError(f"kernel {name}: argument {i} ({k.params[i]}) must have dtype {t}; got "
                                      f"{a.dtype}")
                if not a.flags.c_contiguous:
                    raise LaunchError(f"kernel {name}: argument {i} must be C-contiguous")
            elif type(a) is not t:
                raise LaunchError(f"kernel {name}: argument {i} ({k.params[i]}) must be {t.__name__}; got "
                                  f"{type(a).__name__} {a!r}")
        return k

    def launch(self, name, grid, block, args, *, reverse=False, threads=None):
        """Run kernel `name` over `grid` x `block` on numpy arrays (modified in place).

        Parameters
        ----------
        reverse : bool
            Run the blocks, and the threads of a block, in reverse order.
        threads : {"fibers", "pool", "serial"}, optional
            How the threads of a block run: as fibers switched at each
            ``__syncthreads()`` (the default for kernels that declare
            ``__shared__``), on a pool of blockDim OS threads meeting at a
            barrier (what the sanitizer runs use), or one after another (the
            default for the others; a ``__syncthreads()`` is then an error).
        """
        grid, block = check_launch_dims(grid, block)
        k = self.check_args(name, args)
        lib = self._load()
        keep, ptrs = [], (ctypes.c_void_p * len(args))()
        for i, a in enumerate(args):
            kind, _ = k.param_kind(i)
            if kind == "ptr":
                v = ctypes.c_void_p(a.ctypes.data if a.size else 0)
            else:
                v = _C_SCALARS[k.params[i]][1](a.item())
            keep.append(v)
            ptrs[i] = ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        mode = threads or ("fibers" if k.threaded else "serial")
        if mode not in THREAD_MODES:
            raise ValueError(f"threads must be one of {', '.join(THREAD_MODES)}; got {threads!r}")
        rc = getattr(lib, f"gdsim_launch_{name}")(g, b, ptrs, int(bool(reverse)), THREAD_MODES[mode])
        if rc:
            raise LaunchError(f"kernel {name}: {lib.gdsim_error().decode()}")

    def run_sanitized(self, sanitizer, buffers, launches, *, timeout=600):
        """Run launches in the sanitized driver on copies of `buffers`; returns (new buffers, stderr).

        Parameters
        ----------
        buffers : list of numpy.ndarray
        launches : list of (name, grid, block, args[, reverse])
            An argument is an int index into `buffers` wrapped as ``("buf", i)``
            or a NumPy scalar of the parameter's type.

        Raises
        ------
        LaunchError
            With the sanitizer's report, when the program fails or reports.
        """
        exe = self.sanitized_program(sanitizer)
        out = bytearray(struct.pack("<I", len(buffers)))
        for b in buffers:
            b = np.ascontiguousarray(b)
            out += struct.pack("<Q", b.nbytes) + b.tobytes()
        out += struct.pack("<I", len(launches))
        for item in launches:
            name, grid, block, args = item[:4]
            rev = item[4] if len(item) > 4 else False
            grid, block = check_launch_dims(grid, block)
            k = self.info(name)
            if len(args) != len(k.params):
                raise LaunchError(f"kernel {name} takes {len(k.params)} arguments; got {len(args)}")
            enc = name.encode()
            mode = THREAD_MODES["pool" if k.threaded else "serial"]  # real threads for the sanitizer
            out += struct.pack("<I", len(enc)) + enc + struct.pack("<3I3Iii", *grid, *block, int(rev), mode)
            out += struct.pack("<I", len(args))
            for i, a in enumerate(args):
                kind, t = k.param_kind(i)
                if kind == "ptr":
                    if not (isinstance(a, tuple) and a[0] == "buf"):
                        raise LaunchError(f"kernel {name}: argument {i} must be ('buf', index)")
                    if np.dtype(buffers[a[1]].dtype) != t:
                        raise LaunchError(f"kernel {name}: argument {i} must have dtype {t}")
                    out += struct.pack("<BI", 0, a[1])
                else:
                    if type(a) is not t:
                        raise LaunchError(f"kernel {name}: argument {i} must be {t.__name__}")
                    raw = a.tobytes()
                    out += struct.pack("<BI", 1, len(raw)) + raw
        with tempfile.TemporaryDirectory(dir=cache_dir()) as d:
            fin, fout = Path(d) / "in.bin", Path(d) / "out.bin"
            fin.write_bytes(bytes(out))
            env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0",
                       ASAN_OPTIONS="halt_on_error=1 exitcode=67 detect_leaks=0")
            res = subprocess.run([str(exe), str(fin), str(fout)], capture_output=True, text=True,
                                 timeout=timeout, env=env)
            if res.returncode:
                raise LaunchError(f"the {sanitizer}-sanitized run failed (exit {res.returncode}):\n"
                                  f"{res.stderr[-8000:]}")
            raw = fout.read_bytes()
        new, pos = [], 0
        for b in buffers:
            b = np.ascontiguousarray(b)
            new.append(np.frombuffer(raw[pos:pos + b.nbytes], dtype=b.dtype).reshape(b.shape).copy())
            pos += b.nbytes
        return new, res.stderr
