"""Bad input fails at the door with ValueError/TypeError naming the argument."""

import subprocess
import sys

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv._backend import get_backend, is_cupy_array


@pytest.mark.parametrize("kw,match", [
    ({"mode": "fulll"}, "mode must be one of"),
    ({"mode": None}, "mode must be one of"),
    ({"boundary": "mirror"}, "boundary must be one of"),
    ({"convention": "octave"}, "convention must be one of"),
    ({"mode": "circular", "boundary": "symmetric"}, "circular"),
])
def test_bad_strings(kw, match):
    mode = kw.pop("mode", "same")
    with pytest.raises(ValueError, match=match):
        gd.convolve(np.ones((4, 4)), np.ones((2, 2)), mode, **kw)
    with pytest.raises(ValueError, match=match):
        gd.ConvolutionOperator(np.ones((2, 2)), (4, 4), mode, **kw)


@pytest.mark.parametrize("x,exc,match", [
    (np.array(["a", "b"]), TypeError, "x must"),
    (np.array([1.0, np.nan * 1j, 2.0]), ValueError, "x contains NaN or Inf"),
    (np.array([object(), 1], dtype=object), TypeError, "x must"),
    ("abc", TypeError, "x must be an array"),
    (None, TypeError, "x must be an array"),
    ({"a": 1}, TypeError, "x must be an array"),
    (np.zeros((0, 3)), ValueError, "x must not be empty"),
    (np.array([1.0, np.nan, 2.0]), ValueError, "x contains NaN or Inf"),
    (np.array([1.0, np.inf, 2.0]), ValueError, "x contains NaN or Inf"),
    (np.float64(3.0), ValueError, "at least one dimension"),
])
def test_bad_images(x, exc, match):
    with pytest.raises(exc, match=match):
        gd.convolve(x, np.ones(2))


@pytest.mark.parametrize("h,exc,match", [
    (np.array([np.nan, 1.0]), ValueError, "h contains NaN"),
    (np.ones((0,)), ValueError, "h must not be empty"),
    (np.ones((2, 2, 2, 2)), ValueError, "more spatial dimensions"),
])
def test_bad_kernels(h, exc, match):
    with pytest.raises(exc, match=match):
        gd.convolve(np.ones((5, 5, 5)), h)


def test_bad_operator_arguments():
    with pytest.raises(ValueError, match="in_shape"):
        gd.ConvolutionOperator(np.ones((2, 2)), (4,))
    with pytest.raises(ValueError, match="in_shape"):
        gd.ConvolutionOperator(np.ones(2), (0,))
    with pytest.raises(TypeError, match="in_shape"):
        gd.ConvolutionOperator(np.ones(2), "abc")
    with pytest.raises(TypeError, match="dtype"):
        gd.ConvolutionOperator(np.ones(2), (4,), dtype=np.int32)
    with pytest.raises(ValueError, match="ndim"):
        gd.ConvolutionOperator(np.ones(2), (4,), ndim=2)
    op = gd.ConvolutionOperator(np.ones((3, 3)), (6, 6), "valid")
    with pytest.raises(ValueError, match=r"x must have trailing shape \(6, 6\)"):
        op.forward(np.ones((5, 6)))
    with pytest.raises(ValueError, match=r"y must have trailing shape \(4, 4\)"):
        op.adjoint(np.ones((6, 6)))


def test_to_matrix_refuses_huge():
    op = gd.ConvolutionOperator(np.ones((3, 3)), (1024, 1024), "same")
    with pytest.raises(ValueError, match="dense"):
        op.to_matrix()
    big = gd.ConvolutionOperator(np.ones((31, 31)), (1024, 1024), "same")
    with pytest.raises(ValueError, match="limit"):
        big.to_matrix(sparse=True)


def test_workers_argument():
    with pytest.raises(ValueError, match="workers"):
        gd.set_workers(0)
    with gd.set_workers(1):
        assert gd.get_workers() == 1
    assert gd.get_workers() >= 1


class FakeCupyArray:
    """Stands in for a cupy array's *type identity* only, to test detection without a GPU."""


FakeCupyArray.__module__ = "cupy._core.core"


def test_cupy_detection_and_mixing_without_cupy():
    fake = FakeCupyArray()
    assert is_cupy_array(fake)
    assert not is_cupy_array(np.ones(2))
    with pytest.raises(TypeError, match=r"x on the host \(NumPy\), h on the GPU"):
        get_backend(x=np.ones(3), h=fake)
    with pytest.raises(TypeError, match="mix NumPy and CuPy"):
        gd.convolve(np.ones(3), fake)
    assert get_backend(x=np.ones(3), h=[1.0, 2.0]).name == "numpy"


def test_import_is_light_and_needs_no_cupy():
    # Make cupy unimportable, then import gpu_deconv and use it. "Fast" is
    # checked structurally: importing pulls in none of the heavy optional
    # modules (their import time is what would make it slow).
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cupy' or name.startswith(('cupy.', 'cupyx')):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import gpu_deconv\n"
        "heavy = [m for m in ('cupy', 'cupyx', 'scipy.signal', 'scipy.sparse', 'matplotlib',\n"
        "                     'dask', 'tifffile', 'tqdm', 'imageio') if m in sys.modules]\n"
        "import numpy as np\n"
        "print(gpu_deconv.convolve(np.ones(3), np.ones(2)).tolist(), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 2.0, 2.0, 1.0] []"


def test_inputs_not_modified(rng):
    x = rng.standard_normal((2, 8, 8))
    h = rng.standard_normal((3, 3))
    y = rng.standard_normal((2, 8, 8))
    for a in (x, h, y):
        a.setflags(write=False)
    x0, h0, y0 = x.copy(), h.copy(), y.copy()
    for boundary in ("zero", "symmetric", "periodic"):
        gd.convolve(x, h, "same", boundary=boundary)
        gd.correlate(x, h, "full", boundary=boundary)
        gd.grad_x(x, h, y, "same", boundary=boundary)
        gd.grad_h(x, h, y, "same", boundary=boundary)
        op = gd.ConvolutionOperator(h, (8, 8), "same", boundary=boundary)
        op.normal(x)
        op.adjoint(y)
    assert np.array_equal(x, x0) and np.array_equal(h, h0) and np.array_equal(y, y0)


def test_only_the_backend_imports_cupy():
    # One module answers "which array module": every other one goes through it.
    import ast
    import pathlib

    pkg = pathlib.Path(gd.__file__).parent
    offenders = []
    for path in sorted(pkg.rglob("*.py")):
        if path.name == "_backend.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == "cupy" or n.startswith(("cupy.", "cupyx")) for n in names):
                offenders.append(f"{path.relative_to(pkg)}:{node.lineno}")
    assert offenders == []
