"""Reliability for long-lived services: inputs untouched, deterministic, thread-safe, bounded.

* every entry accepts read-only inputs and never writes to them (all modes, boundaries,
  solver methods);
* the same call twice gives bit-identical output on the CPU (cold or warm cache, any
  number of FFT workers);
* calls from 8 threads at once (mixed shapes, kernels, modes, dtypes, shared operators,
  a cache small enough to evict all the time) give bit for bit the sequential results;
* the transfer-function cache stays within its byte budget, and the process's resident
  memory stays bounded over hundreds of kernel/shape combinations (measured in a
  subprocess, so that other tests do not disturb it);
* size limits refuse before allocating; regressions of the bugs the fuzzing found.

Not covered here: the Dask and CLI entries (their own test modules).
"""

import concurrent.futures as cf
import itertools
import json
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv.operators import MAX_DENSE_ENTRIES, MAX_SPARSE_ENTRIES
from gpu_deconv.solvers.kernel import MAX_KERNEL_TAPS

MODES = ["full", "same", "valid", "circular"]
BOUNDARIES = ["zero", "periodic", "symmetric", "reflect", "replicate"]
COMBOS = [(m, b) for m in MODES for b in BOUNDARIES if m != "circular" or b == "periodic"]


def frozen(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays if len(arrays) > 1 else arrays[0]


def same_bits(a, b):
    """Bit-identical: arrays (dtype, shape, bytes), tuples and SolveInfo field by field."""
    if isinstance(a, gd.SolveInfo):
        return all(same_bits(a[k], b[k]) for k in a.keys())
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same_bits(p, q) for p, q in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a == b


@pytest.fixture
def small_cache():
    """A cache budget small enough that entries are evicted all the time; restored afterwards."""
    old = gd.cache_info()["host"]["max_bytes"]
    gd.set_cache_limits(host_bytes=64 * 2**10)
    yield
    gd.set_cache_limits(host_bytes=old)


# ------------------------------------------------------------------ read-only inputs
def _solver_calls(rng, mode, boundary):
    """(name, thunk, arrays) for deconvolve with every method that applies to mode/boundary."""
    m = (9, 8)
    h = frozen(np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16)  # centre-symmetric
    k = h.shape
    n = {"same": m, "circular": m, "valid": (m[0] + 2, m[1] + 2), "full": (m[0] - 2, m[1] - 2)}[mode]
    y = frozen(rng.standard_normal((2,) + m))
    z, x0 = frozen(rng.standard_normal((2,) + n), rng.standard_normal((2,) + n))
    lam, alpha = frozen(np.array([0.1, 0.2]), np.array([0.5, 0.0]))
    reg_kernel = frozen(rng.standard_normal((3, 3)))
    per_image = [frozen(h.copy()), frozen(h[::-1].copy())]
    circ = mode == "circular" or (mode == "same" and boundary == "periodic")
    methods = ["auto", "cg", "fft_approx"] + (["fft"] if circ else [])
    if mode == "same" and boundary == "symmetric":
        methods.append("dct")
    arrays = [y, h, z, x0, lam, alpha, reg_kernel] + per_image
    calls = []
    for method in methods:
        kw = {"mode": mode, "boundary": boundary, "method": method, "lam": lam, "alpha": alpha, "z": z,
              "maxiter": 50, "return_info": True}
        calls.append((f"deconvolve[{method}]", lambda kw=kw: gd.deconvolve(y, h, x0=x0, **kw)))
        reg = "laplacian" if method in ("fft", "dct") else reg_kernel
        calls.append((f"deconvolve[{method}, reg]",
                      lambda kw=kw, reg=reg: gd.deconvolve(y, h, reg=reg, **kw)))
    # return_info: a capped maxiter is not the point here (it would warn otherwise).
    kw = {"mode": mode, "boundary": boundary, "lam": lam, "maxiter": 50, "return_info": True}
    calls.append(("deconvolve[per-image list]", lambda: gd.deconvolve(y, per_image, ndim=2, **kw)))
    op_reg = gd.ConvolutionOperator(reg_kernel, n, "circular" if circ else "same", boundary=boundary
                                    if not circ else "periodic")
    calls.append(("deconvolve[operator reg]", lambda: gd.deconvolve(y, h, reg=op_reg, **kw)))
    del k
    return calls, arrays


@pytest.mark.parametrize("mode,boundary", COMBOS)
def test_read_only_inputs_every_entry(rng, mode, boundary):
    x = frozen(rng.standard_normal((2, 9, 8)))
    h = frozen(rng.standard_normal((3, 2)))
    hb = frozen(rng.standard_normal((2, 3, 2)))  # one kernel per image
    opx = gd.ConvolutionOperator(h, (9, 8), mode, boundary=boundary)
    y = frozen(rng.standard_normal((2,) + opx.spatial_out_shape))
    kw = {"boundary": boundary}
    calls = [
        ("convolve", lambda: gd.convolve(x, h, mode, **kw)),
        ("convolve[float32]", lambda: gd.convolve(x, h, mode, dtype=np.float32, **kw)),
        ("convolve[per-image]", lambda: gd.convolve(x, hb, mode, ndim=2, **kw)),
        ("correlate", lambda: gd.correlate(x, h, mode, **kw)),
        ("grad_x", lambda: gd.grad_x(x, h, y, mode, **kw)),
        ("grad_h", lambda: gd.grad_h(x, h, y, mode, **kw)),
        ("operator", lambda: gd.ConvolutionOperator(h, (9, 8), mode, **kw)),
        ("forward", lambda: opx.forward(x)),
        ("adjoint", lambda: opx.adjoint(y)),
        ("normal", lambda: opx.normal(x)),
        ("H", lambda: (opx.H(y), opx.H.adjoint(x), opx.H.to_matrix())),
        ("to_matrix", lambda: (opx.to_matrix(), opx.to_matrix(sparse=True))),
        ("estimate_kernel", lambda: gd.estimate_kernel(x, y, (3, 2), lam=0.1, mode=mode, **kw)),
    ]
    solver_calls, solver_arrays = _solver_calls(rng, mode, boundary)
    d = frozen(rng.standard_normal((3, 3, 2)))
    zc = frozen(rng.standard_normal((2, 3, 9, 8)))
    b0 = frozen(rng.standard_normal((2, 9, 8)))
    calls += solver_calls + [
        ("solve_multichannel", lambda: gd.solve_multichannel(x, d, 0.5, zc)),
        ("cg", lambda: gd.cg(lambda v: 2 * v + opx.normal(v), x, b0, ndim=2, maxiter=50)),
    ]
    arrays = [x, h, hb, y, d, zc, b0] + solver_arrays
    before = [a.tobytes() for a in arrays]
    for name, call in calls:
        call()
        for a, a0 in zip(arrays, before):
            assert not a.flags.writeable and a.tobytes() == a0, f"{name} modified an input"


def test_cached_spectrum_is_read_only_so_callers_cannot_corrupt_the_cache(rng):
    # Regression: op.spectrum() handed out the cached array itself; ``S *= 2`` changed
    # every later convolution with that kernel, in every thread.
    h, x = rng.standard_normal((3, 3)), rng.standard_normal((8, 8))
    want = gd.convolve(x, h, "same")
    S = gd.ConvolutionOperator(h, (8, 8), "same").spectrum()
    with pytest.raises(ValueError, match="read-only"):
        S *= 2
    assert same_bits(gd.convolve(x, h, "same"), want)


# ------------------------------------------------------------------ determinism
def _entry_calls(rng):
    x = rng.standard_normal((3, 20, 17))
    x32 = x.astype(np.float32)
    h = rng.standard_normal((4, 3))
    hs = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
    y_valid = gd.convolve(x, h, "valid")
    d = rng.standard_normal((2, 3, 3))
    z = rng.standard_normal((3, 2, 20, 17))
    op = gd.ConvolutionOperator(h, (20, 17), "same", boundary="reflect")
    return {
        "convolve": lambda: gd.convolve(x, h, "same", boundary="symmetric"),
        "convolve32": lambda: gd.convolve(x32, h, "full", boundary="replicate"),
        "correlate": lambda: gd.correlate(x, h, "valid"),
        "grad_x": lambda: gd.grad_x(x, h, y_valid, "valid"),
        "grad_h": lambda: gd.grad_h(x, h, y_valid, "valid"),
        "operator": lambda: (op.forward(x), op.adjoint(x), op.normal(x), op.to_matrix()),
        "cg": lambda: gd.deconvolve(y_valid, h, mode="valid", lam=1e-3, return_info=True),
        "cg32": lambda: gd.deconvolve(y_valid.astype(np.float32), h, mode="valid", lam=1e-2, rtol=1e-4,
                                      return_info=True),
        "fft": lambda: gd.deconvolve(x, h, mode="circular", lam=1e-2, reg="laplacian", return_info=True),
        "dct": lambda: gd.deconvolve(x, hs, mode="same", boundary="symmetric", lam=1e-2, return_info=True),
        "fft_approx": lambda: gd.deconvolve(x, h, mode="full", lam=1e-2, method="fft_approx"),
        "estimate_kernel": lambda: gd.estimate_kernel(x, y_valid, (4, 3), lam=1e-3),
        "solve_multichannel": lambda: gd.solve_multichannel(x, d, 0.5, z),
        "cg_public": lambda: gd.cg(lambda v: op.normal(v) + v, x, ndim=2),
    }


def test_same_call_twice_is_bit_identical(rng):
    for name, call in _entry_calls(rng).items():
        gd.clear_cache()  # first call cold, second warm: the cache must not change a bit
        first = call()
        assert same_bits(call(), first), name


def test_results_do_not_depend_on_fft_workers(rng):
    calls = _entry_calls(rng)
    with gd.set_workers(1):
        one = {k: c() for k, c in calls.items()}
    with gd.set_workers(2):
        two = {k: c() for k, c in calls.items()}
    for k in calls:
        assert same_bits(one[k], two[k]), k


# ------------------------------------------------------------------ threads
def _thread_tasks(rng):
    """Mixed calls: 1-3 D, float32/64, every mode, shared operators, every solver."""
    tasks = []
    shared = {}
    for i, (nd, mode, boundary, dt) in enumerate(itertools.product(
            (1, 2, 3), ("full", "same", "valid", "circular"), ("zero", "symmetric", "periodic"),
            (np.float64, np.float32))):
        if mode == "circular" and boundary != "periodic":
            continue
        n = (11, 9, 6)[:nd] if nd < 3 else (6, 5, 4)
        k = (3, 2, 2)[:nd]
        x = frozen(rng.standard_normal((2,) + n).astype(dt))
        h = frozen(rng.standard_normal(k))
        key = (nd, mode, boundary)
        if key not in shared:  # one operator instance used by many threads at once
            shared[key] = gd.ConvolutionOperator(h, n, mode, boundary=boundary)
        op = shared[key]
        tasks.append(lambda x=x, h=h, m=mode, b=boundary: gd.convolve(x, h, m, boundary=b))
        tasks.append(lambda x=x, op=op: (op.forward(x), op.normal(x)))
        y = frozen(np.ascontiguousarray(op.forward(x)))
        tasks.append(lambda x=x, h=h, y=y, m=mode, b=boundary: gd.grad_h(x, h, y, m, boundary=b))
        if i % 3 == 0:
            tasks.append(lambda y=y, h=h, m=mode, b=boundary: gd.deconvolve(
                y, h, mode=m, boundary=b, lam=0.05, rtol=1e-4, maxiter=40, return_info=True))
    x2 = frozen(rng.standard_normal((3, 16, 15)))
    hs = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
    tasks += [
        lambda: gd.deconvolve(x2, hs, mode="circular", lam=1e-2, reg="laplacian"),
        lambda: gd.deconvolve(x2, hs, mode="same", boundary="symmetric", lam=1e-2, reg="gradient"),
        lambda: gd.deconvolve(x2, hs, mode="full", lam=1e-2, method="fft_approx"),
        lambda: gd.estimate_kernel(x2, gd.convolve(x2, hs, "valid"), (3, 3), lam=1e-6),
        lambda: gd.solve_multichannel(x2, hs[None] * [[[1.0]], [[2.0]]], 0.3, np.ones((3, 2, 16, 15))),
    ]
    return tasks


def test_eight_threads_give_the_sequential_results(rng, small_cache):
    tasks = _thread_tasks(rng)
    want = [t() for t in tasks]
    workers_before = gd.get_workers()
    order = [i for i in range(len(tasks)) for _ in range(3)]
    np.random.default_rng(1).shuffle(order)

    def run(i):
        if i % 7 == 0:
            gd.clear_cache()  # other threads are reading and filling the cache meanwhile
        if i % 5 == 0:
            with gd.set_workers(1 + i % 3):
                return i, tasks[i]()
        return i, tasks[i]()

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, order))
    for i, out in got:
        assert same_bits(out, want[i]), f"task {i} differs under threads"
    info = gd.cache_info()["host"]
    assert info["bytes"] <= info["max_bytes"]
    assert gd.get_workers() == workers_before


def test_set_workers_blocks_from_two_threads_end_in_any_order():
    # Regression: each `with set_workers(n)` restored "the previous value"; when two
    # threads' blocks interleaved (A enters, B enters, A leaves, B leaves) B restored A's
    # value, which then stayed process-wide for good.
    before = gd.get_workers()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with gd.set_workers(3):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with gd.set_workers(5):
            b_in.set()
            a_out.wait(10)
            seen["in_b_after_a_left"] = gd.get_workers()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["in_b_after_a_left"] == 5
    assert gd.get_workers() == before


def test_set_workers_plain_and_nested():
    before = gd.get_workers()
    try:
        with gd.set_workers(3):
            assert gd.get_workers() == 3
            with gd.set_workers(2):
                assert gd.get_workers() == 2
            assert gd.get_workers() == 3
            gd.set_workers(4)  # a plain call inside a block stays after it
            assert gd.get_workers() == 4
        assert gd.get_workers() == 4
        gd.set_workers(None)
        assert gd.get_workers() == before
    finally:
        gd.set_workers(None)


# ------------------------------------------------------------------ cache bounds
def test_cache_bytes_never_exceed_the_budget(rng):
    old = gd.cache_info()["host"]["max_bytes"]
    gd.set_cache_limits(host_bytes=2 * 2**20)
    try:
        gd.clear_cache()
        for i in range(300):
            n = 40 + i % 23
            x = rng.standard_normal((n, n + 1 + i % 5))
            h = rng.standard_normal((2 + i % 4, 3 + i % 3))
            gd.convolve(x, h, MODES[i % 4], boundary="periodic" if i % 4 == 3 else "zero")
            if i % 3 == 0:
                gd.deconvolve(x, h, mode="circular", lam=1e-2)
            info = gd.cache_info()["host"]
            assert info["bytes"] <= info["max_bytes"] == 2 * 2**20
        assert info["misses"] >= 300 and info["entries"] > 0
    finally:
        gd.set_cache_limits(host_bytes=old)


RSS_SCRIPT = r"""
import json, os, sys
import numpy as np
import gpu_deconv as gd

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

limit = int(sys.argv[1])
gd.set_cache_limits(host_bytes=limit)
rng = np.random.default_rng(0)

def step(i):
    # A distinct kernel and grid each time: 200..260 rows, kernels 3..8 wide.
    n, k = 200 + (i * 7) % 61, 3 + i % 6
    x = rng.standard_normal((n, n + 3))
    h = rng.standard_normal((k, k + 1))
    gd.convolve(x, h, "same")
    gd.deconvolve(x, h, mode="circular", lam=1e-2)
    info = gd.cache_info()["host"]
    assert info["bytes"] <= info["max_bytes"], info

for i in range(20):  # warm up: imports, allocator pools, FFT plans
    step(10_000 + i)
gd.clear_cache()
misses0 = gd.cache_info()["host"]["misses"]
start = peak = rss()
for i in range(300):
    step(i)
    peak = max(peak, rss())
print(json.dumps({"growth": peak - start, "misses": gd.cache_info()["host"]["misses"] - misses0}))
"""


@pytest.mark.slow
def test_resident_memory_stays_bounded_over_hundreds_of_kernels():
    # In a fresh process: 300 distinct kernel/grid pairs through convolve and the circular
    # closed form, with a 16 MiB cache. Each miss caches at least one spectrum of a grid of
    # >= 200 x 203 (>= 200*102*16 bytes), so an unbounded cache would hold >= 8x the budget
    # (measured: ~400 MiB with a 1 GiB budget); bounded, the growth stays within the budget
    # plus 32 MiB (measured: 3-11 MiB). The margin covers what is not ours: the allocator
    # keeping freed pages, and scipy.fft's plan cache (16 plans, well under 1 MiB here).
    limit = 16 * 2**20
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(limit)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["misses"] * 200 * 102 * 16 >= 8 * limit, res  # the loop would overflow an unbounded cache
    assert res["growth"] <= limit + 32 * 2**20, f"RSS grew by {res['growth'] / 2**20:.1f} MiB"


@pytest.mark.parametrize("kw,exc", [
    ({"host_bytes": -1}, ValueError), ({"host_bytes": True}, ValueError), ({"host_bytes": 1.5}, ValueError),
    ({"host_bytes": "16M"}, ValueError), ({"device_bytes": -5}, ValueError),
    ({"device_bytes": np.float64(3)}, ValueError),
])
def test_set_cache_limits_validation(kw, exc):
    name = next(iter(kw))
    before = gd.cache_info()
    with pytest.raises(exc, match=name):
        gd.set_cache_limits(**kw)
    assert gd.cache_info()["host"]["max_bytes"] == before["host"]["max_bytes"]


def test_cache_limit_zero_disables_and_shrinking_evicts(rng):
    old = gd.cache_info()["host"]["max_bytes"]
    x, h = rng.standard_normal((32, 30)), rng.standard_normal((5, 4))
    want = gd.convolve(x, h, "same")
    try:
        gd.set_cache_limits(host_bytes=np.int64(0))
        assert gd.cache_info()["host"]["entries"] == 0
        assert same_bits(gd.convolve(x, h, "same"), want)
        assert gd.cache_info()["host"]["bytes"] == 0
        gd.set_cache_limits(host_bytes=2**20)
        for _ in range(20):
            gd.convolve(x, rng.standard_normal((5, 4)), "same")
        assert 0 < gd.cache_info()["host"]["bytes"] <= 2**20
        gd.set_cache_limits(host_bytes=1000)  # below one spectrum: everything goes at once
        assert gd.cache_info()["host"]["bytes"] == 0
    finally:
        gd.set_cache_limits(host_bytes=old)
    assert gd.cache_info()["host"]["max_bytes"] == 128 * 2**20


# ------------------------------------------------------------------ size limits
def _peak_alloc(call):
    tracemalloc.start()
    try:
        try:
            call()
        except ValueError as exc:
            err = exc
        else:
            err = None
        return tracemalloc.get_traced_memory()[1], err
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("in_shape,sparse", [
    ((4097, 4096), False),          # dense above MAX_DENSE_ENTRIES
    ((2048, 2048, 2), True),        # sparse above MAX_SPARSE_ENTRIES
    ((2**21,) * 3, True),           # 2**63 entries: np.prod wrapped to a negative count
    ((4194304, 2097152, 2097152), False),  # 2**64: wrapped to exactly 0
])
def test_to_matrix_refuses_before_allocating(in_shape, sparse):
    op = gd.ConvolutionOperator(np.ones((3,) * len(in_shape)), in_shape, "same")
    assert op.shape[0] == int(np.prod(in_shape, dtype=object))
    peak, err = _peak_alloc(lambda: op.to_matrix(sparse=sparse))
    assert err is not None and "in_shape" in str(err) and "limit" in str(err)
    assert peak < 2**20  # refused from the shapes alone
    assert MAX_DENSE_ENTRIES == 2**24 and MAX_SPARSE_ENTRIES == 2**24


def test_band_preconditioner_falls_back_for_kernels_comparable_to_the_image(rng):
    # Was: dense w x w blocks per tangential frequency with w ~ k; a 256^2 image with a
    # 101^2 kernel took 1 GiB and 16 s before the first iteration.
    from gpu_deconv.solvers.deconvolve import build_problem
    from gpu_deconv.solvers.precond import MAX_BAND_BYTES, band_bytes

    y, h = rng.standard_normal((192, 192)), np.ones((97, 97)) / 97**2
    assert band_bytes(build_problem(y, h, mode="same", lam=0.1)) > MAX_BAND_BYTES
    peak, err = _peak_alloc(lambda: gd.deconvolve(y, h, mode="same", lam=0.1, maxiter=3, return_info=True))
    assert err is None and peak < 32 * 2**20


def test_to_matrix_sparse_argument_must_be_bool():
    op = gd.ConvolutionOperator(np.ones(2), (4,))
    for bad in ("yes", None, 1):
        with pytest.raises(TypeError, match="sparse"):
            op.to_matrix(sparse=bad)


def test_estimate_kernel_refuses_huge_kernel_shape_before_allocating(rng):
    # Regression: kernel_shape (10**5, 10**5) tried to allocate a 75 GiB probe kernel.
    x = rng.standard_normal((8, 8))
    for shape in ((10**5, 10**5), (65, 64), (17, 17, 17)):
        peak, err = _peak_alloc(lambda s=shape: gd.estimate_kernel(x, x, s))
        assert err is not None and "kernel_shape" in str(err) and "MAX_KERNEL_TAPS" in str(err)
        assert peak < 2**20
    assert MAX_KERNEL_TAPS == 4096


# ------------------------------------------------------------------ regressions from the fuzzing
def test_float64_values_beyond_float32_range_are_refused_not_warned():
    # Was: RuntimeWarning "overflow encountered in cast", then "x contains NaN or Inf".
    with pytest.raises(ValueError, match="x has values too large for float32"):
        gd.convolve(np.full(4, 1e200), np.ones(2), dtype=np.float32)
    with pytest.raises(ValueError, match="h has values too large for float32"):
        gd.convolve(np.ones(4, np.float32), np.full(2, 1e200))


@pytest.mark.parametrize("entry", ["convolve", "adjoint", "normal", "grad_x", "grad_h", "multichannel"])
def test_overflow_is_a_clear_error_naming_the_inputs(entry):
    # Finite inputs whose products overflow float64: was inf/NaN returned with RuntimeWarnings.
    x, h = np.full((6, 6), 1e200), np.full((3, 3), 1e200)
    op = gd.ConvolutionOperator(h, (6, 6), "same")
    call = {
        "convolve": lambda: gd.convolve(x, h, "same"),
        "adjoint": lambda: op.adjoint(x),
        "normal": lambda: op.normal(np.ones((6, 6))),
        "grad_x": lambda: gd.grad_x(x, h, np.zeros((6, 6)), "same"),
        "grad_h": lambda: gd.grad_h(x, h, np.zeros((6, 6)), "same"),
        "multichannel": lambda: gd.solve_multichannel(x, h[None], 1e-300, np.zeros((1, 6, 6))),
    }[entry]
    with pytest.raises(ValueError, match=r"overflows float64: the magnitudes of .*h"):
        call()


@pytest.mark.parametrize("scale", [1e-200, 1e200, 2.0**-900])
def test_cg_solves_data_far_from_unit_scale(rng, scale):
    # Was: ||b||^2 underflowed to 0 (x = 0 reported converged, residual 0) or overflowed
    # to inf (nothing solved). The solves now run on b scaled by a power of two.
    y = rng.standard_normal((10, 9))
    h = np.ones((3, 3)) / 9
    ref = gd.deconvolve(y, h, mode="valid", lam=1e-2)
    x, info = gd.deconvolve(y * scale, h, mode="valid", lam=1e-2, return_info=True)
    assert info.converged and info.iterations > 0
    err = np.abs(x / scale - ref).max() / np.abs(ref).max()
    assert err == 0 if scale == 2.0**-900 else err < 1e-12  # a power of two changes no bit
    xc, infoc = gd.deconvolve(y * scale, h, mode="circular", lam=1e-2, return_info=True)
    assert np.isfinite(infoc.residual) and infoc.residual < 1e-12
    xs, cinfo = gd.cg(lambda v: 2 * v, np.full(4, scale))
    assert cinfo.converged and np.allclose(xs / scale, 0.5)


def test_cg_float32_tiny_data_is_solved_not_reported_zero(rng):
    y = (rng.standard_normal((10, 9)) * 1e-25).astype(np.float32)
    x, info = gd.deconvolve(y, np.ones((3, 3), np.float32) / 9, mode="valid", lam=1e-2, rtol=1e-4,
                            return_info=True)
    assert np.abs(x).max() > 0 and info.iterations > 0


def test_cg_breakdown_keeps_x_finite():
    # A preconditioner that overflows: rz = inf and pq = inf gave a NaN step and NaN in x.
    b = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    with np.errstate(over="ignore"):
        x, info = gd.cg(lambda v: v, b, M=lambda r: r * 1e308 * 10, ndim=1)
    assert np.isfinite(x).all() and info.breakdown.all() and not info.converged.any()


def test_all_zero_kernel_is_refused_not_answered_with_zeros(rng):
    y = rng.standard_normal((2, 8, 8))
    for mode in ("valid", "same", "circular"):
        with pytest.raises(ValueError, match="h is all zeros and lam = alpha = 0"):
            gd.deconvolve(y, np.zeros((3, 3)), mode=mode, method="auto")
    hb = np.stack([np.ones((3, 3)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"images \[\[1\]\]"):
        gd.deconvolve(y, hb, ndim=2, lam=[0.1, 0.0])
    assert np.isfinite(gd.deconvolve(y, hb, ndim=2, lam=[0.1, 0.1])).all()


@pytest.mark.parametrize("bad", ["1", "1e-3", [0.1, "a"], np.array(["1"]), 1j])
def test_weights_must_be_numbers_not_strings(bad):
    # Was: lam="1e-3" silently parsed by np.asarray(..., float).
    with pytest.raises(TypeError, match="lam must be"):
        gd.deconvolve(np.ones((6, 6)), np.ones((3, 3)), lam=bad)
    with pytest.raises(TypeError, match="lam must be"):
        gd.estimate_kernel(np.ones((6, 6)), np.ones((4, 4)), (3, 3), lam=bad)
    with pytest.raises(TypeError, match="alpha must be"):
        gd.solve_multichannel(np.ones(6), np.ones((1, 2)), bad, np.ones((1, 6)))


def test_weights_beyond_the_working_dtype_are_refused():
    y = np.ones((6, 6), np.float32)
    with pytest.raises(ValueError, match="lam is beyond the range of the working dtype float32"):
        gd.deconvolve(y, np.ones((3, 3)), lam=1e300)
    with pytest.raises(ValueError, match="alpha must be positive"):  # 1e-300 is 0 in float32
        gd.solve_multichannel(y[0], np.ones((1, 2)), 1e-300, np.ones((1, 6), np.float32))
    assert np.isfinite(gd.deconvolve(y.astype(np.float64), np.ones((3, 3)), lam=1e300)).all()


def test_multichannel_z_with_more_batch_axes_than_y(rng):
    # Was: "non-broadcastable output operand" from an in-place update.
    y, d = rng.standard_normal(12), rng.standard_normal((2, 3))
    z = rng.standard_normal((4, 2, 12))
    x = gd.solve_multichannel(y, d, 0.5, z)
    assert x.shape == (4, 2, 12)
    for i in range(4):
        assert np.allclose(x[i], gd.solve_multichannel(y, d, 0.5, z[i]), rtol=0, atol=1e-12)


def test_batch_mismatch_names_the_arguments():
    # Was: NumPy's "shape mismatch: objects cannot be broadcast", naming no argument.
    for grad in (gd.grad_x, gd.grad_h):
        with pytest.raises(ValueError, match=r"batch axes of x \(3,\) and h \(2,\) do not broadcast"):
            grad(np.ones((3, 5)), np.ones((2, 2)), np.ones((3, 6)), ndim=1)
    with pytest.raises(ValueError, match=r"batch axes of x \(3,\) and y \(2,\) do not broadcast"):
        gd.estimate_kernel(np.ones((3, 8)), np.ones((2, 6)), (3,))


@pytest.mark.parametrize("A,M,name", [
    (lambda v: v[..., :-1], None, "A"), (lambda v: None, None, "A"), (lambda v: v * 1j, None, "A"),
    (lambda v: v.tolist(), None, "A"), (3, None, "A"), (lambda v: v, lambda r: r[..., :-1], "M"),
    (lambda v: v, "M", "M"),
])
def test_cg_checks_what_the_callables_return(A, M, name):
    # Was: "operands could not be broadcast" / a casting error / "'int' object is not callable".
    with pytest.raises((ValueError, TypeError), match=rf"^{name}\b"):
        gd.cg(A, np.ones((2, 5)), M=M, ndim=1)
    with pytest.raises(TypeError, match="callback must be callable"):
        gd.cg(lambda v: v, np.ones(3), callback=5)
