"""A fixed corpus of calls whose results must not change under a refactoring (issue 13).

Run once before the change (``save``) and after it (``compare``)::

    python benchmarks/redesign_corpus.py save /tmp/before.npz
    python benchmarks/redesign_corpus.py compare /tmp/before.npz

With ``GPU_DECONV_SIMULATOR=1`` the same calls run on CuPy arrays through the
simulated device (the CUDA launchers and kernels on the CPU).

``compare`` prints, per call, whether the arrays are bit-identical and the
iteration counts equal, and the largest relative difference otherwise; its
exit status is 1 if any result differs by more than rounding (1e-12 float64,
1e-5 float32) or any iteration count changed.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

try:
    from gpu_deconv import _simulator

    _simulator.install()
except ImportError:  # pragma: no cover
    pass

import gpu_deconv as gd
import gpu_deconv.data  # noqa: F401  (gd.data.scene)

MODES = ("full", "same", "valid", "circular")
BOUNDARIES = ("zero", "periodic", "symmetric", "reflect", "replicate")


def _xp():
    if _simulator.requested():
        import cupy

        return cupy
    return np


def corpus():
    """Yield (name, thunk); each thunk returns a dict of arrays (host)."""
    xp = _xp()
    to = xp.asarray

    def host(a):
        return a.get() if hasattr(a, "get") else np.asarray(a)

    rng = np.random.default_rng(13)
    x2 = rng.standard_normal((2, 19, 16))
    h2 = rng.standard_normal((5, 4))
    hs = np.outer([1, 2, 3, 2, 1], [1, 3, 1]).astype(float)
    hs /= hs.sum()
    x1 = rng.standard_normal((3, 31))
    h1 = rng.standard_normal(6)
    xc = x2 + 1j * rng.standard_normal(x2.shape)
    for dt in (np.float64, np.float32):
        for mode in MODES:
            for bnd in BOUNDARIES:
                if mode == "circular" and bnd != "periodic":
                    continue
                for conv in ("scipy", "matlab"):
                    def f(dt=dt, mode=mode, bnd=bnd, conv=conv):
                        x, h = to(x2.astype(dt)), to(h2.astype(dt))
                        y = gd.convolve(x, h, mode, boundary=bnd, convention=conv)
                        c = gd.correlate(x, h, mode, boundary=bnd, convention=conv)
                        op = gd.ConvolutionOperator(h, x.shape[-2:], mode, boundary=bnd, convention=conv)
                        a = op.adjoint(y)
                        nrm = op.normal(x)
                        gx = gd.grad_x(x, h, y * 0.5, mode, boundary=bnd, convention=conv)
                        gh = gd.grad_h(x, h, y * 0.5, mode, boundary=bnd, convention=conv)
                        return {k: host(v) for k, v in dict(y=y, c=c, a=a, n=nrm, gx=gx, gh=gh).items()}
                    yield f"conv/{np.dtype(dt).name}/{mode}/{bnd}/{conv}", f
        x1d, h1d = x1.astype(dt), h1.astype(dt)
        yield f"conv1d/{np.dtype(dt).name}", lambda x1d=x1d, h1d=h1d: {
            m: host(gd.convolve(to(x1d), to(h1d), m)) for m in MODES}
        # deconvolve: every method, boundary and mode, reg, alpha/z, x0, per-image kernels, batch chunks
        for mode in MODES:
            for bnd in BOUNDARIES:
                if mode == "circular" and bnd != "periodic":
                    continue
                for reg in (None, "laplacian", "gradient"):
                    for prec in (True, "circulant", False):
                        if prec is not True and (mode in ("circular",) or reg == "gradient"):
                            continue

                        def f(dt=dt, mode=mode, bnd=bnd, reg=reg, prec=prec):
                            x = x2.astype(dt)
                            h = hs.astype(dt) if bnd == "symmetric" else h2.astype(dt) / 4
                            y = gd.convolve(x, h, mode, boundary=bnd) + 0.01 * rng.standard_normal(
                                gd.convolve(x, h, mode, boundary=bnd).shape).astype(dt)
                            xs, info = gd.deconvolve(to(y), to(h), lam=[1e-2, 3e-3], reg=reg, mode=mode,
                                                     boundary=bnd, return_info=True, precondition=prec,
                                                     rtol=1e-8)
                            out = dict(x=host(xs), it=np.asarray(info.iterations), res=info.residual)
                            n = xs.shape[-2:]
                            z = rng.standard_normal((2,) + tuple(n)).astype(dt)
                            xz, iz = gd.deconvolve(to(y), to(h), lam=1e-3, reg=reg, mode=mode, boundary=bnd,
                                                   alpha=[0.1, 0.0], z=to(z), return_info=True,
                                                   precondition=prec, rtol=1e-8, batch_size=1)
                            out.update(xz=host(xz), itz=np.asarray(iz.iterations))
                            return out
                        yield f"deconv/{np.dtype(dt).name}/{mode}/{bnd}/{reg}/{prec}", f
        for meth, mode, bnd in (("fft_approx", "full", "zero"), ("fft_approx", "same", "zero"),
                                ("cg", "circular", "periodic"), ("cg", "same", "symmetric"),
                                ("dct", "same", "symmetric"), ("fft", "circular", "periodic")):
            def f(dt=dt, meth=meth, mode=mode, bnd=bnd):
                h = hs.astype(dt)
                y = gd.convolve(x2.astype(dt), h, mode, boundary=bnd)
                xs, info = gd.deconvolve(to(y), [to(h), to(h * 1.5)], lam=1e-3, reg="laplacian",
                                         mode=mode, boundary=bnd, method=meth, return_info=True, rtol=1e-8)
                return dict(x=host(xs), it=np.asarray(info.iterations), res=info.residual)
            yield f"method/{np.dtype(dt).name}/{meth}/{mode}/{bnd}", f
        # complex data
        for mode, bnd in (("circular", "periodic"), ("same", "symmetric"), ("valid", "zero")):
            def f(dt=dt, mode=mode, bnd=bnd):
                cdt = np.result_type(dt, np.complex64)
                h = hs.astype(dt)
                y = gd.convolve(to(xc.astype(cdt)), to(h), mode, boundary=bnd)
                xs, info = gd.deconvolve(y, to(h), lam=1e-3, reg="laplacian", mode=mode, boundary=bnd,
                                         return_info=True, rtol=1e-8)
                hcx = to((h2 + 0.5j * h2[::-1]).astype(cdt))
                yc = gd.convolve(to(xc.astype(cdt)), hcx, mode, boundary=bnd)
                xk, ik = gd.deconvolve(yc, hcx, lam=1e-3, mode=mode, boundary=bnd, return_info=True,
                                       rtol=1e-8)
                return dict(x=host(xs), it=np.asarray(info.iterations), xk=host(xk),
                            itk=np.asarray(ik.iterations))
            yield f"complex/{np.dtype(dt).name}/{mode}/{bnd}", f
        # lam selection
        for mode, bnd in (("circular", "periodic"), ("same", "symmetric"), ("valid", "zero")):
            for crit in ("gcv", "discrepancy"):
                def f(dt=dt, mode=mode, bnd=bnd, crit=crit):
                    h = hs.astype(dt)
                    xi = gd.data.scene((40, 36)).astype(dt)
                    y = gd.convolve(xi, h, mode, boundary=bnd)
                    y = y + 0.02 * np.random.default_rng(5).standard_normal(y.shape).astype(dt)
                    xs, info = gd.deconvolve(to(y), to(h), lam=crit, reg="laplacian", mode=mode, boundary=bnd,
                                             return_info=True)
                    return dict(x=host(xs), lam=np.asarray(info.lam), it=np.asarray(info.iterations))
                yield f"lam/{np.dtype(dt).name}/{mode}/{bnd}/{crit}", f
        # kernel side, multichannel
        for mode in ("full", "same", "valid"):
            def f(dt=dt, mode=mode):
                x = x2[0].astype(dt)
                y = gd.convolve(x, h2.astype(dt), mode)
                k = gd.estimate_kernel(to(x), to(y), (5, 4), lam=1e-3, mode=mode)
                return dict(k=host(k))
            yield f"kernel/{np.dtype(dt).name}/{mode}", f

        def f(dt=dt):
            D = to(rng.standard_normal((3, 5, 5)).astype(dt))
            y = to(rng.standard_normal((2, 16, 16)).astype(dt))
            z = to(rng.standard_normal((2, 3, 16, 16)).astype(dt))
            return dict(x=host(gd.solve_multichannel(y, D, 0.5, z)))
        yield f"multichannel/{np.dtype(dt).name}", f


def run():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, f in corpus():
            try:
                res = f()
            except Exception as exc:  # the refactoring must not change which calls fail either
                res = {"error": np.array(f"{type(exc).__name__}: {exc}")}
            for k, v in res.items():
                out[f"{name}::{k}"] = np.asarray(v)
    return out


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "compare"):
        print(__doc__)
        return 2
    res = run()
    if argv[1] == "save":
        np.savez(argv[2], **res)
        print(f"saved {len(res)} arrays to {argv[2]}")
        return 0
    ref = dict(np.load(argv[2]))
    bad = identical = rounding = 0
    for k in sorted(set(ref) | set(res)):
        a, b = ref.get(k), res.get(k)
        if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
            print(f"DIFFERENT (shape/dtype/missing) {k}")
            bad += 1
            continue
        if a.dtype.kind in "US":
            if a != b:
                print(f"DIFFERENT {k}: {a} vs {b}")
                bad += 1
            else:
                identical += 1
            continue
        if np.array_equal(a, b, equal_nan=True):
            identical += 1
            continue
        if a.dtype.kind in "iub" or k.endswith(("::it", "::itz", "::itk")):
            print(f"DIFFERENT {k}: {a.ravel()[:6]} vs {b.ravel()[:6]}")
            bad += 1
            continue
        rel = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
        tol = 1e-5 if a.dtype in (np.float32, np.complex64) else 1e-12
        if rel > tol:
            print(f"DIFFERENT {k}: rel {rel:.2e}")
            bad += 1
        else:
            print(f"rounding  {k}: rel {rel:.2e}")
            rounding += 1
    print(f"{identical} identical, {rounding} at rounding level, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
