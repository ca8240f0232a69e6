"""The packaging metadata pins what each optional extra is meant to bring (read from pyproject.toml).

The GPU extras must install with pip alone on a machine that has the NVIDIA
driver and no CUDA toolkit: CuPy's ``[ctk]`` extra (CuPy >= 14.0, the first
release that defines it) pulls NVIDIA's runtime (with the headers CuPy 14 hands
to NVRTC), NVRTC and cuFFT wheels. A CuPy 13 floor, or a bare ``cupy-cuda12x``,
would leave such a machine without NVRTC's headers and libraries.
"""

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent

#: extra -> (CuPy distribution, its extras, lowest version)
GPU_EXTRAS = {
    "cuda12": ("cupy-cuda12x", {"ctk"}, (14, 0)),
    "cuda13": ("cupy-cuda13x", {"ctk"}, (14, 0)),
}

_REQ = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)\s*(\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[^;]*)(;.*)?$")


def parse_requirement(req):
    """``(name, extras, {operator: version tuple})`` of a PEP 508 string (the subset pyproject uses).

    >>> parse_requirement("cupy-cuda12x[ctk]>=14.0")
    ('cupy-cuda12x', {'ctk'}, {'>=': (14, 0)})
    """
    m = _REQ.match(req)
    if m is None:
        raise ValueError(f"req is not a requirement string: {req!r}")
    extras = {e.strip() for e in (m["extras"] or "").split(",") if e.strip()}
    spec = {}
    for part in filter(None, (p.strip() for p in m["spec"].split(","))):
        op, ver = re.match(r"(>=|<=|==|!=|~=|<|>)\s*(\S+)", part).groups()
        spec[op] = tuple(int(v) for v in ver.split(".") if v.isdigit())
    return m["name"].lower(), extras, spec


@pytest.fixture(scope="module")
def extras():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


@pytest.mark.parametrize("extra", sorted(GPU_EXTRAS))
def test_gpu_extra_brings_cupy_with_its_cuda_toolkit_wheels(extras, extra):
    name, want_extras, floor = GPU_EXTRAS[extra]
    reqs = [parse_requirement(r) for r in extras[extra]]
    cupy = [r for r in reqs if r[0].startswith("cupy")]
    assert len(cupy) == 1, extras[extra]  # exactly one CuPy: two CUDA variants break each other
    got_name, got_extras, spec = cupy[0]
    assert got_name == name
    assert want_extras <= got_extras, f"{extra}: {got_extras} lacks {want_extras - got_extras}"
    assert spec.get(">=") is not None and spec[">="] >= floor, f"{extra}: floor {spec} below {floor}"


def test_the_two_gpu_extras_pin_different_cuda_majors(extras):
    names = {parse_requirement(r)[0] for e in GPU_EXTRAS for r in extras[e]}
    assert names == {"cupy-cuda12x", "cupy-cuda13x"}


def test_test_extra_compiles_kernels_without_a_toolkit_and_installs_no_cupy(extras):
    # NVRTC for tests/test_kernels_compile.py; no cupy, or the suite would think a GPU stack is there.
    names = {parse_requirement(r)[0] for r in extras["test"]}
    assert "nvidia-cuda-nvrtc-cu12" in names
    assert not any(n.startswith("cupy") for n in names)


def test_bench_extra_brings_the_peers_of_compare_py(extras):
    names = {parse_requirement(r)[0] for r in extras["bench"]}
    assert {"pylops", "scikit-image"} <= names


@pytest.mark.parametrize("req,want", [
    ("cupy-cuda12x>=13.0", ("cupy-cuda12x", set(), {">=": (13, 0)})),
    ("cupy-cuda13x[ctk] >= 14.0", ("cupy-cuda13x", {"ctk"}, {">=": (14, 0)})),
    ("nvidia-cuda-nvrtc-cu12>=12.0; sys_platform == 'linux'", ("nvidia-cuda-nvrtc-cu12", set(),
                                                               {">=": (12, 0)})),
])
def test_parse_requirement(req, want):
    assert parse_requirement(req) == want


def test_parse_requirement_rejects_garbage():
    with pytest.raises(ValueError, match="req"):
        parse_requirement("[ctk]>=14")
