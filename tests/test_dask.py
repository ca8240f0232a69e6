"""gpu_deconv.dask on a real dask.distributed LocalCluster (2 worker processes) and the threaded scheduler.

Every lazy result is compared with the in-memory call on the same data: the
batched solver treats each image independently, so chunking must not change
the answer beyond rounding.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import gpu_deconv as gd

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("dask.distributed")
gdd = pytest.importorskip("gpu_deconv.dask")

RNG = np.random.default_rng(7)
H = RNG.random((5, 4))  # even width and not symmetric: exercises the origin convention
Y = RNG.random((3, 4, 30, 31))
LAM = 1e-3 + 1e-2 * RNG.random((3, 4))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None, memory_limit="1GiB")
    c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_workers_are_separate_processes(client):
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.parametrize("mode,boundary", [("valid", "zero"), ("same", "symmetric"), ("circular", "zero"),
                                           ("full", "zero"), ("same", "replicate")])
def test_deconvolve_on_cluster_equals_in_memory(client, mode, boundary):
    y = da.from_array(Y, chunks=(2, 3, -1, -1))
    lam = da.from_array(LAM, chunks=(1, 4))  # other chunks than y: realigned to y's batch chunks
    kw = dict(mode=mode, boundary=boundary, reg="laplacian")
    x = gdd.deconvolve(y, H, lam=lam, **kw)
    ref = gd.deconvolve(Y, H, lam=LAM, **kw)
    assert x.shape == ref.shape and x.dtype == ref.dtype
    assert x.chunks[:2] == ((2, 1), (3, 1))
    _close(client.compute(x).result(), ref)


def test_convolve_and_correlate_on_cluster(client):
    x = da.from_array(Y, chunks=(1, 2, -1, -1))
    for fn, ref_fn in ((gdd.convolve, gd.convolve), (gdd.correlate, gd.correlate)):
        for mode in ("full", "same", "valid", "circular"):
            lazy = fn(x, H, mode, convention="matlab")
            ref = ref_fn(Y, H, mode, convention="matlab")
            assert lazy.shape == ref.shape
            _close(client.compute(lazy).result(), ref)


def test_return_info_on_cluster(client):
    y = da.from_array(Y, chunks=(1, 4, -1, -1))
    x, info = gdd.deconvolve(y, H, mode="valid", lam=LAM, reg="gradient", return_info=True)
    xc, ic = client.compute([x, info], sync=True)
    ref, rinfo = gd.deconvolve(Y, H, mode="valid", lam=LAM, reg="gradient", return_info=True)
    _close(xc, ref)
    assert ic.shape == (3, 4) and ic.dtype == gdd.INFO_DTYPE
    assert (ic["method"] == "cg").all()
    np.testing.assert_array_equal(ic["iterations"], rinfo.iterations)
    np.testing.assert_array_equal(ic["converged"], rinfo.converged)
    np.testing.assert_allclose(ic["residual"], rinfo.residual, rtol=1e-6)


@pytest.mark.parametrize("mode, crit", [("circular", "gcv"), ("same", "gcv"), ("same", "discrepancy")])
def test_chosen_lam_on_cluster_equals_in_memory(client, mode, crit):
    """lam is chosen per image inside each task; the images are independent, so chunks change nothing."""
    y = da.from_array(Y, chunks=(2, 3, -1, -1))
    kw = dict(mode=mode, reg="laplacian", lam=crit)
    if crit == "discrepancy":
        kw["noise_sigma"] = 0.05
    x, info = gdd.deconvolve(y, H, return_info=True, **kw)
    xc, ic = client.compute([x, info], sync=True)
    ref, rinfo = gd.deconvolve(Y, H, return_info=True, **kw)
    np.testing.assert_allclose(ic["lam"], rinfo.lam, rtol=1e-9)
    np.testing.assert_allclose(xc, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_threaded_scheduler_float32_with_z_and_x0():
    y32 = Y.astype(np.float32)
    n = (Y.shape[2] + 4, Y.shape[3] + 3)  # the valid-mode unknown
    z = RNG.random(n)  # spatial only: broadcast over the batch
    x0 = da.from_array(RNG.random((3, 4) + n), chunks=(3, 1, -1, -1))
    alpha = np.linspace(0.1, 0.5, 12).reshape(3, 4)
    kw = dict(mode="valid", lam=1e-3, alpha=alpha, z=z, reg="laplacian", rtol=1e-4)
    lazy = gdd.deconvolve(da.from_array(y32, chunks=(1, 2, -1, -1)), H.astype(np.float32), x0=x0, **kw)
    got = lazy.compute(scheduler="threads")
    ref = gd.deconvolve(y32, H.astype(np.float32), x0=x0.compute(), **kw)
    assert got.dtype == np.float32 == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_single_image_without_batch_axes():
    y = da.from_array(Y[0, 0], chunks=-1)
    got = gdd.deconvolve(y, H, mode="same", boundary="symmetric", lam=1e-3).compute(scheduler="sync")
    _close(got, gd.deconvolve(Y[0, 0], H, mode="same", boundary="symmetric", lam=1e-3))


_CALLS = []


def _count(b):
    _CALLS.append(b.shape)
    return b


def test_lazy_until_computed():
    _CALLS.clear()
    y = da.from_array(Y, chunks=(1, 4, -1, -1)).map_blocks(_count, meta=np.empty((0,) * 4))
    x = gdd.deconvolve(y, H, mode="valid", lam=1e-3)
    assert _CALLS == [] and isinstance(x, da.Array)
    x.compute(scheduler="threads")
    assert len(_CALLS) == 3


def test_errors_are_clear():
    y = da.from_array(Y, chunks=(1, 4, 10, -1))
    with pytest.raises(ValueError, match=r"spatial axes \[2\].*rechunk\(\{2: -1, 3: -1\}\)"):
        gdd.deconvolve(y, H)
    with pytest.raises(ValueError, match="rechunk"):
        gdd.convolve(y, H, "same")
    y = y.rechunk({2: -1})
    with pytest.raises(ValueError, match=r"batch shape \(3, 4\).*got shape \(5,\)"):
        gdd.deconvolve(y, H, lam=np.ones(5))
    with pytest.raises(ValueError, match=r"batch shape \(3, 4\).*dask array of shape \(4,\)"):
        gdd.deconvolve(y, H, lam=da.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        gdd.deconvolve(y, H, lam=-1.0)
    with pytest.raises(TypeError, match="compute"):
        gdd.deconvolve(y, da.from_array(H))
    with pytest.raises(ValueError, match="per-image kernels"):
        gdd.deconvolve(y, np.stack([H] * 4), ndim=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        gdd.deconvolve(y, H, mode="wrap")
    with pytest.raises(ValueError, match="mode='valid' needs the kernel no larger"):
        gdd.convolve(da.ones((2, 3, 3), chunks=(1, 3, 3)), H, "valid")
    with pytest.raises(ValueError, match="unknown's shape"):
        gdd.deconvolve(y, H, mode="valid", alpha=1.0, z=np.zeros((30, 31)))


def test_import_gpu_deconv_does_not_import_dask():
    code = "import sys, gpu_deconv; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
