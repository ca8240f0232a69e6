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
