"""Property tests (hypothesis): output shapes follow the documented rule; adjoints hold."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gpu_deconv as gd

MODES = ["full", "same", "valid", "circular"]
BOUNDARIES = ["zero", "periodic", "symmetric", "reflect", "replicate"]


@st.composite
def problems(draw):
    nd = draw(st.integers(1, 3))
    n = tuple(draw(st.lists(st.integers(1, 9 if nd < 3 else 5), min_size=nd, max_size=nd)))
    k = tuple(draw(st.lists(st.integers(1, 12 if nd < 3 else 6), min_size=nd, max_size=nd)))
    mode = draw(st.sampled_from(MODES))
    boundary = "periodic" if mode == "circular" else draw(st.sampled_from(BOUNDARIES))
    convention = draw(st.sampled_from(["scipy", "matlab"]))
    if mode == "valid" and any(kk > nn for kk, nn in zip(k, n)):
        convention = "matlab"  # scipy refuses; tested elsewhere
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, k, mode, boundary, convention, batch, seed


def expected_shape(n, k, mode, convention):
    if mode == "full":
        return tuple(a + b - 1 for a, b in zip(n, k))
    if mode in ("same", "circular"):
        return n
    return tuple(max(a - b + 1, 0) for a, b in zip(n, k))


@settings(max_examples=150, deadline=None)
@given(problems())
def test_shapes_and_adjoint(p):
    n, k, mode, boundary, convention, batch, seed = p
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(k)
    x = rng.standard_normal(batch + n)
    y = gd.convolve(x, h, mode, boundary=boundary, convention=convention)
    assert y.shape == batch + expected_shape(n, k, mode, convention)
    assert np.isfinite(y).all()
    op = gd.ConvolutionOperator(h, n, mode, boundary=boundary, convention=convention)
    r = rng.standard_normal(y.shape)
    lhs = float((op(x) * r).sum())
    rhs = float((x * op.adjoint(r)).sum())
    scale = 1 + np.linalg.norm(x) * np.linalg.norm(r) * np.abs(h).sum()
    assert abs(lhs - rhs) <= 1e-11 * scale
