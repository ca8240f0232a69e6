"""Operators suite: forward / adjoint / normal of ConvolutionOperator in every mode.

Cases (full sizes): 512^2 and 2048^2 in float32 and float64, a batch of 16 x 512^2
(float32), a 3-D 128^3 volume (float32, 9^3 kernel); Gaussian kernels, 15 x 15
in 2-D. The operator is built and its transfer function computed before timing
(warm-up); the timed call is the public method, validation included.
"""

from __future__ import annotations

import numpy as np
import pytest
from _bench_common import kernel, random_images

from gpu_deconv import ConvolutionOperator

MODES = ("full", "same", "valid", "circular")
OPS = ("forward", "adjoint", "normal")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_operator(benchmark, run, to_xp, op_case, mode, op):
    name, shape, k, dtype = op_case
    nd = 3 if name.endswith("^3") else 2
    spatial = shape[len(shape) - nd:]
    h = to_xp(kernel(k, dtype, ndim=nd))
    A = ConvolutionOperator(h, spatial, mode)
    if op == "adjoint":
        batch = shape[:len(shape) - nd]
        arg = to_xp(random_images(batch + A.spatial_out_shape, dtype))
        fn = A.adjoint
    else:
        arg = to_xp(random_images(shape, dtype))
        fn = A.forward if op == "forward" else A.normal
    benchmark.group = f"operators {name} {dtype} {mode}"
    benchmark.extra_info.update(case=name, dtype=dtype, mode=mode, op=op, grid=list(A.grid_shape),
                                kernel=k)
    out = run(lambda: fn(arg))
    assert out.dtype == np.dtype(dtype)


#: The regularizer's normal operator: a few-tap stencil (one gather kernel on the GPU,
#: shift-and-add on the CPU) against a 3 x 3 kernel of 9 taps, which takes the FFT path
#: (two FFT pairs in same + symmetric): the ratio of the two rows is what the stencil saves.
REG_KERNELS = {
    "laplacian (stencil)": np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    "3x3 binomial (fft)": np.outer([1.0, 2, 1], [1.0, 2, 1]) / 16,
}


@pytest.mark.parametrize("reg", list(REG_KERNELS))
def test_regularizer_normal(benchmark, run, to_xp, quick, reg):
    shape = (4, 128, 128) if quick else (16, 512, 512)
    A = ConvolutionOperator(to_xp(REG_KERNELS[reg].astype(np.float32)), shape[1:], "same",
                            boundary="symmetric")
    x = to_xp(random_images(shape, "float32"))
    benchmark.group = f"regularizer normal {shape[0]} x {shape[1]}^2 float32 same+symmetric"
    benchmark.extra_info.update(reg=reg, direct=A.direct_term() is not None)
    out = run(lambda: A.normal(x))
    assert out.shape == shape
