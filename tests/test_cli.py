"""The real command-line tool, run in a subprocess on real files written here.

Each result file is compared with the in-memory call it stands for.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv.data import gaussian_kernel, scene

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")

SUBCOMMANDS = ("deconvolve", "convolve", "estimate-kernel", "demo", "info", "bench")
PSF = gaussian_kernel(7, 1.2)
# The CLI defaults: camera-friendly model and regularization.
DEFAULTS = dict(mode="same", boundary="symmetric", lam="gcv", reg="laplacian")


def cli(*args, cwd=None, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "gpu_deconv", *map(str, args)], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=stderr, timeout=300)


def blurred(shape=(40, 44), seed=0):
    return gd.convolve(scene(shape, seed=seed), PSF, "same", boundary="symmetric")


def one_error_line(p, *needles):
    """stderr is exactly one line naming the problem, and never a traceback."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(path):
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns


@pytest.fixture
def psf_npy(tmp_path):
    p = tmp_path / "psf.npy"
    np.save(p, PSF)
    return p


# ------------------------------------------------------------------ help
def test_help_for_every_subcommand():
    p = cli("--help")
    assert p.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in p.stdout
    for sub in SUBCOMMANDS:
        p = cli(sub, "--help")
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(f"usage: gpu-deconv {sub}"), p.stdout[:80]


# ------------------------------------------------------------ deconvolve
def test_deconvolve_single_npy_input_unchanged(tmp_path, psf_npy):
    y = blurred()
    src = tmp_path / "y.npy"
    np.save(src, y)
    before = snapshot(src)
    p = cli("deconvolve", src, "--psf", psf_npy)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "1 of 1 file written (1 image)" in p.stdout and "method dct" in p.stdout
    assert "all converged" in p.stdout and "none failed" in p.stdout
    out = np.load(tmp_path / "y_deconv.npy")
    np.testing.assert_allclose(out, gd.deconvolve(y, PSF / PSF.sum(), **DEFAULTS), rtol=1e-12, atol=1e-12)
    assert snapshot(src) == before


def test_multipage_tiff_stack_and_3d_volume(tmp_path):
    stack = np.stack([blurred(seed=s) for s in range(3)])
    stack16 = np.round(stack * 40000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack16, photometric="minisblack")
    np.save(tmp_path / "psf2.npy", PSF)
    p = cli("deconvolve", tmp_path / "stack.tif", "--psf", tmp_path / "psf2.npy", "--mode", "valid",
            "--boundary", "zero", "--rtol", "1e-8", "--lam", "1e-3")
    assert p.returncode == 0, p.stderr
    assert "(3 images)" in p.stdout and "method cg (preconditioned)" in p.stdout
    out = tifffile.imread(tmp_path / "stack_deconv.tif")
    ref = gd.deconvolve(stack16.astype(np.float64), PSF / PSF.sum(), mode="valid", lam=1e-3,
                        reg="laplacian", rtol=1e-8)
    assert out.dtype == np.float32 and out.shape == (3, 46, 50)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)

    # A 3-D PSF makes the stack a volume: one 3-D deconvolution, not a batch of planes.
    vol = gd.convolve(scene((10, 16, 18)), gaussian_kernel(3, 0.8, ndim=3), "same",
                      boundary="symmetric").astype(np.float32)
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    tifffile.imwrite(tmp_path / "psf3.tif", gaussian_kernel(3, 0.8, ndim=3).astype(np.float32),
                     photometric="minisblack")
    p = cli("deconvolve", tmp_path / "vol.tif", "--psf", tmp_path / "psf3.tif", "-o", tmp_path / "v.tif")
    assert p.returncode == 0, p.stderr
    assert "(1 image)" in p.stdout
    psf3 = tifffile.imread(tmp_path / "psf3.tif").astype(np.float64)
    ref = gd.deconvolve(vol, psf3 / psf3.sum(), **DEFAULTS)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "v.tif"), ref, rtol=1e-4, atol=1e-4)


def test_png_keeps_format_and_integer_type(tmp_path, psf_npy):
    g8 = np.round(blurred() * 255).astype(np.uint8)
    rgb = np.stack([g8, g8[::-1], g8[:, ::-1]], axis=-1)
    g16 = np.round(blurred(seed=1) * 65535).astype(np.uint16)
    Image.fromarray(g8).save(tmp_path / "g8.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    p = cli("deconvolve", tmp_path / "g8.png", tmp_path / "rgb.png", tmp_path / "g16.png",
            "--psf", psf_npy, "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "3 of 3 files written (5 images)" in p.stdout
    h = PSF / PSF.sum()
    for name, src, mode in (("g8", g8, "L"), ("g16", g16, "I;16")):
        with Image.open(tmp_path / "out" / f"{name}.png") as im:
            assert im.mode == mode
            got = np.asarray(im)
        ref = gd.deconvolve(src.astype(np.float64), h, **DEFAULTS)
        expect = np.clip(np.rint(ref), 0, np.iinfo(src.dtype).max).astype(src.dtype)
        assert np.abs(got.astype(np.int64) - expect).max() <= 1
    with Image.open(tmp_path / "out" / "rgb.png") as im:
        assert im.mode == "RGB"
        got = np.asarray(im)
    ref = gd.deconvolve(np.moveaxis(rgb, -1, 0).astype(np.float64), h, **DEFAULTS)
    expect = np.moveaxis(np.clip(np.rint(ref), 0, 255), 0, -1)
    assert np.abs(got - expect).max() <= 1


def test_directory_batch_with_a_corrupt_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    ys = [blurred(seed=s) for s in range(4)]
    for i, y in enumerate(ys):
        np.save(d / f"im{i}.npy", y)
    (d / "broken.tif").write_bytes(b"this is not a TIFF file")
    (d / "notes.txt").write_text("not an image: skipped")
    np.save(d / "psf.npy", PSF)  # beside the images, but it is the PSF, not an input
    p = cli("deconvolve", d, "--psf", d / "psf.npy", "-o", tmp_path / "out", "--batch-size", "3")
    assert p.returncode == 1
    line = one_error_line(p, "broken.tif", "cannot read as TIFF")
    assert line.startswith("gpu-deconv deconvolve: error: ")
    assert "4 of 5 files written (4 images)" in p.stdout and "1 failed" in p.stdout
    assert sorted(os.listdir(tmp_path / "out")) == [f"im{i}.npy" for i in range(4)]
    # Solved in batches of 3 + 1: the same answer as one image at a time.
    for i, y in enumerate(ys):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"im{i}.npy"),
                                   gd.deconvolve(y, PSF / PSF.sum(), **DEFAULTS), rtol=1e-12, atol=1e-12)


def test_glob_is_one_batch_and_skips_own_outputs(tmp_path, psf_npy):
    for i in range(3):
        np.save(tmp_path / f"a{i}.npy", blurred(seed=i))
    np.save(tmp_path / "a0_deconv.npy", np.zeros((3, 3)))  # an earlier output: skipped by the glob
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a9.png")
    p = cli("deconvolve", str(tmp_path / "a*.npy"), "--psf", psf_npy, "-o", tmp_path / "out", "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""
    assert sorted(os.listdir(tmp_path / "out")) == ["a0.npy", "a1.npy", "a2.npy"]


def test_no_overwrite_without_force(tmp_path, psf_npy):
    src = tmp_path / "y.npy"
    np.save(src, blurred())
    out = tmp_path / "r.tif"
    assert cli("deconvolve", src, "--psf", psf_npy, "-o", out).returncode == 0
    before = snapshot(out)
    p = cli("deconvolve", src, "--psf", psf_npy, "-o", out, "--lam", "0.1")
    assert p.returncode == 1
    one_error_line(p, str(out), "exists", "--force")
    assert snapshot(out) == before
    p = cli("deconvolve", src, "--psf", psf_npy, "-o", out, "--lam", "0.1", "--force")
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() != before[0]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporary left behind
    p = cli("deconvolve", src, "--psf", psf_npy, "-o", src, "--force")
    assert p.returncode == 1
    one_error_line(p, "would overwrite the input")


def test_unreadable_inputs_give_one_line(tmp_path, psf_npy):
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "nan.npy", np.full((20, 20), np.nan))
    cases = [("missing.npy", "no such file"), ("garbage.npy", "cannot read as NPY"),
             ("objects.npy", "allow_pickle"), ("nan.npy", "NaN"), ("data.bmp", "unsupported file type")]
    for name, needle in cases:
        if name == "data.bmp":
            (tmp_path / name).write_bytes(b"BM")
        p = cli("deconvolve", tmp_path / name, "--psf", psf_npy, "--quiet")
        assert p.returncode == 1, (name, p.stderr)
        one_error_line(p, name, needle)


def test_bad_arguments_exit_2_with_one_line(tmp_path, psf_npy):
    src = tmp_path / "y.npy"
    np.save(src, blurred())
    cases = [(["--lam", "-1"], "--lam"), (["--lam", "auto"], "'gcv' or 'discrepancy'"),
             (["--noise-sigma", "0.01"], "--noise-sigma is used only with --lam discrepancy"),
             (["--lam", "discrepancy", "--noise-sigma", "0"], "--noise-sigma"),
             (["--method", "fft_approx"], "--lam gcv needs an exact model"),
             (["--mode", "wrap"], "--mode"), (["--rtol", "0"], "--rtol"),
             (["--batch-size", "x"], "--batch-size"), (["-o", tmp_path / "x.bmp"], "unsupported file type")]
    for extra, needle in cases:
        p = cli("deconvolve", src, "--psf", psf_npy, *extra)
        assert p.returncode == 2, (extra, p.stderr)
        one_error_line(p, needle)
    p = cli("deconvolve", src, "--psf", tmp_path / "nope.npy")
    assert p.returncode == 2
    one_error_line(p, "--psf", "nope.npy", "no such file")
    p = cli("deconvolve", src)
    assert p.returncode == 2
    one_error_line(p, "--psf")
    p = cli()
    assert p.returncode == 2
    one_error_line(p, "COMMAND")


def test_device_gpu_without_gpu_is_one_line(tmp_path, psf_npy):
    from gpu_deconv.cli import cupy_status

    if cupy_status()[0] is not None:
        pytest.skip("a GPU is usable here")
    np.save(tmp_path / "y.npy", blurred())
    p = cli("deconvolve", tmp_path / "y.npy", "--psf", psf_npy, "--device", "gpu")
    assert p.returncode == 2
    one_error_line(p, "--device gpu", "no usable GPU")
    p = cli("deconvolve", tmp_path / "y.npy", "--psf", psf_npy, "--device", "auto")
    assert p.returncode == 0 and "on CPU" in p.stdout


def test_not_converged_is_reported_and_still_written(tmp_path, psf_npy):
    src = tmp_path / "y.npy"
    np.save(src, blurred())
    p = cli("deconvolve", src, "--psf", psf_npy, "--mode", "valid", "--boundary", "zero",
            "--maxiter", "2")
    assert p.returncode == 1
    one_error_line(p, "warning", "y.npy", "did not converge", "after 2 iterations")
    assert "1 file NOT converged" in p.stdout
    assert np.load(tmp_path / "y_deconv.npy").shape == (46, 50)


def test_progress_bar_on_a_terminal_and_quiet(tmp_path, psf_npy):
    pty = pytest.importorskip("pty")
    pytest.importorskip("tqdm")
    import fcntl
    import struct
    import termios

    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        np.save(d / f"im{i}.npy", blurred((24, 24), seed=i))

    def run_on_tty(*extra):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = subprocess.Popen([sys.executable, "-m", "gpu_deconv", "deconvolve", d, "--psf", psf_npy,
                                 "-o", tmp_path / "out", "--force", "--batch-size", "1", *extra],
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out = proc.communicate(timeout=120)[0]
        os.close(master)
        return proc.returncode, out.decode(), seen.decode(errors="replace")

    rc, out, tty = run_on_tty()
    assert rc == 0
    assert "0/4" in tty and "%|" in tty  # tqdm drew the bar on the terminal
    assert "4 of 4 files written" in out
    rc, out, tty = run_on_tty("--quiet")
    assert rc == 0 and tty == "" and out == ""


def test_missing_library_names_the_extra(tmp_path, psf_npy):
    tifffile.imwrite(tmp_path / "y.tif", blurred().astype(np.float32))
    # The real CLI in a Python where tifffile cannot be imported (a None entry in sys.modules).
    code = ("import sys; sys.modules['tifffile'] = None; from gpu_deconv.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "deconvolve", str(tmp_path / "y.tif"), "--psf",
                        str(psf_npy)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    one_error_line(p, "TIFF needs tifffile", "pip install 'gpu_deconv[tiff]'")
    assert not (tmp_path / "y_deconv.tif").exists()


# ----------------------------------------------- convolve, estimate-kernel
def test_convolve_then_estimate_kernel_recovers_it(tmp_path):
    rng = np.random.default_rng(3)
    h = rng.random((5, 4))
    x = scene((48, 52))
    np.save(tmp_path / "sharp.npy", x)
    np.save(tmp_path / "h.npy", h)
    p = cli("convolve", tmp_path / "sharp.npy", "--psf", tmp_path / "h.npy", "--no-normalize-psf",
            "-o", tmp_path / "blurred.npy")
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(np.load(tmp_path / "blurred.npy"),
                               gd.convolve(x, h, "same", boundary="symmetric"), rtol=1e-12)
    p = cli("estimate-kernel", tmp_path / "sharp.npy", tmp_path / "blurred.npy", "--size", 5, 4)
    assert p.returncode == 0, p.stderr
    assert "5x4 kernel" in p.stdout
    np.testing.assert_allclose(np.load(tmp_path / "blurred_kernel.npy"), h, rtol=1e-8, atol=1e-10)
    # The same pair as TIFF, in 'valid' mode, to a float32 TIFF kernel.
    yv = gd.convolve(x, h, "valid")
    tifffile.imwrite(tmp_path / "s.tif", x.astype(np.float32))
    tifffile.imwrite(tmp_path / "b.tif", yv.astype(np.float32))
    p = cli("estimate-kernel", tmp_path / "s.tif", tmp_path / "b.tif", "--size", 5, 4, "--mode", "valid",
            "--boundary", "zero")
    assert p.returncode == 0, p.stderr
    k = tifffile.imread(tmp_path / "b_kernel.tif")
    assert k.dtype == np.float32
    np.testing.assert_allclose(k, h, rtol=1e-3, atol=1e-3)
    p = cli("estimate-kernel", tmp_path / "s.tif", tmp_path / "b.tif", "--size", 5, 4)
    assert p.returncode == 1
    one_error_line(p, "b_kernel.tif", "exists")


# ------------------------------------------------------- info, bench, demo
def test_info():
    p = cli("info")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"gpu_deconv {gd.__version__}")
    for key in ("numpy ", "scipy ", "tifffile:", "cupy:", "GPU", "CUDA kernel sources:"):
        assert key in p.stdout, key


def test_bench_small():
    p = cli("bench", "--size", 32, "--batch", 2, "--repeat", 1)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("operation"))
    assert "CPU ms" in lines[header] and "GPU ms" in lines[header]
    rows = lines[header + 1:header + 6]
    assert [r.split()[0] for r in rows] == ["convolve"] * 2 + ["deconvolve"] * 3
    for r in rows:
        name, cpu_ms, gpu_ms, ratio = re.split(r"\s{2,}", r.strip())
        assert float(cpu_ms) > 0
        assert gpu_ms.startswith("n/a: ") or float(gpu_ms) > 0


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    p = cli("demo", "--size", 64, "-o", out)
    assert p.returncode == 0, p.stderr
    assert "exact solution" in p.stdout and "Fourier division" in p.stdout
    assert f"to {out}" in p.stdout
    for f in ("sharp.png", "blurred.png", "fourier_division.png", "exact.png", "x_exact.npy"):
        assert (out / f).exists(), f
    assert (out / "demo.png").exists() == (pytest.importorskip("matplotlib") is not None)


# ------------------------------------------------------------- choosing lam
def test_default_lam_is_chosen_and_reported(tmp_path, psf_npy):
    rng = np.random.default_rng(0)
    ys = [blurred(seed=s) + sig * rng.standard_normal((40, 44)) for s, sig in ((0, 0.003), (1, 0.05))]
    for i, y in enumerate(ys):
        np.save(tmp_path / f"y{i}.npy", y)
    p = cli("deconvolve", tmp_path / "y0.npy", tmp_path / "y1.npy", "--psf", psf_npy, "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    lams = [float(gd.choose_lam(y, PSF / PSF.sum(), mode="same", boundary="symmetric", reg="laplacian"))
            for y in ys]
    assert lams[1] > lams[0]
    assert f"lam {min(lams):.3g} to {max(lams):.3g} (gcv)" in p.stdout, p.stdout
    for i, y in enumerate(ys):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"y{i}.npy"),
                                   gd.deconvolve(y, PSF / PSF.sum(), **DEFAULTS), rtol=1e-12, atol=1e-12)
    p = cli("deconvolve", tmp_path / "y1.npy", "--psf", psf_npy, "-o", tmp_path / "d.npy", "--lam",
            "discrepancy", "--noise-sigma", "0.05")
    assert p.returncode == 0, p.stderr
    ref = gd.deconvolve(ys[1], PSF / PSF.sum(), mode="same", boundary="symmetric", reg="laplacian",
                        lam="discrepancy", noise_sigma=0.05)
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), ref, rtol=1e-12, atol=1e-12)
    assert "(discrepancy)" in p.stdout


def test_lam_zero_with_vanishing_psf_says_how_to_fix_it_in_cli_terms(tmp_path):
    np.save(tmp_path / "box.npy", np.ones((4, 4)))  # its DFT vanishes on a 16-point grid
    np.save(tmp_path / "y.npy", np.random.default_rng(1).random((16, 16)))
    p = cli("deconvolve", tmp_path / "y.npy", "--psf", tmp_path / "box.npy", "--mode", "same",
            "--boundary", "periodic", "--lam", "0", "--quiet")
    assert p.returncode == 1
    line = one_error_line(p, "y.npy", "--lam 0", "--reg identity", "positive --lam")
    assert "lam > 0" not in line and "reg=None" not in line
