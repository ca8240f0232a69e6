"""Reading and writing image files for the command-line tool: TIFF, PNG/JPEG and ``.npy``.

* TIFF through :mod:`tifffile` (extra ``[tiff]``): multi-page stacks and
  volumes are read as one array (``(pages, rows, cols)``, or the shape the
  file records), float32 and 16-bit data kept.
* PNG and JPEG through Pillow (extra ``[image]``). Pillow rather than imageio:
  imageio reads and writes these formats *through* Pillow anyway, so Pillow
  alone is one dependency instead of two, and it gives direct control of the
  image modes that matter here (16-bit grayscale, palette, alpha) and of a
  lazy header read.
* ``.npy`` through NumPy with ``allow_pickle=False`` (a data file never runs code).

Optional libraries are imported when a file needs them; when one is missing,
:class:`MissingDependencyError` says which extra to install.

Writes are atomic and never clobber by accident: the data go to a temporary
file in the destination's directory, which is then renamed into place
(:func:`os.replace` with ``force=True``; a no-clobber hard link otherwise), so a
crash or a full disk never leaves a half-written output, and an existing file
is replaced only when asked.

Examples
--------
>>> import numpy as np, os, tempfile
>>> from gpu_deconv import io
>>> d = tempfile.mkdtemp()
>>> p = io.write_image(os.path.join(d, "a.npy"), np.eye(3))
>>> io.read_image(p).shape
(3, 3)
>>> io.write_image(p, np.eye(3))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gpu_deconv.io.OutputExistsError: ...a.npy exists (use --force / force=True to overwrite)
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from ._validation import one_line

__all__ = [
    "FORMATS",
    "ImageFile",
    "ImageFileError",
    "MissingDependencyError",
    "OutputExistsError",
    "atomic_write",
    "expand_inputs",
    "format_of",
    "load",
    "read_image",
    "to_dtype",
    "write_image",
]

#: File extension (lower case) -> format name.
FORMATS: dict[str, str] = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg",
                           ".jpeg": "jpeg", ".npy": "npy"}
#: Format name -> the extension written for it.
EXTENSION: dict[str, str] = {"tiff": ".tif", "png": ".png", "jpeg": ".jpg", "npy": ".npy"}

_EXTRA = {"tiff": ("tifffile", "tifffile", "tiff"), "png": ("PIL", "Pillow", "image"),
          "jpeg": ("PIL", "Pillow", "image")}


class ImageFileError(ValueError):
    """A file that cannot be read or written as an image (the message names it)."""


class MissingDependencyError(ImportError):
    """An optional library needed for a format is not installed (the message names the extra)."""


class OutputExistsError(FileExistsError):
    """The output exists and overwriting was not asked for."""


def _require(fmt: str, action: str) -> Any:
    module, dist, extra = _EXTRA[fmt]
    try:
        if module == "PIL":
            from PIL import Image

            return Image
        import tifffile

        return tifffile
    except ImportError:
        raise MissingDependencyError(
            f"{action} {fmt.upper()} needs {dist}: pip install 'gpu_deconv[{extra}]'") from None


def format_of(path: str | os.PathLike[str]) -> str:
    """The format of a path from its extension: ``"tiff"``, ``"png"``, ``"jpeg"`` or ``"npy"``.

    Raises
    ------
    ImageFileError
        For any other extension.

    Examples
    --------
    >>> format_of("stack.TIFF"), format_of("a.jpeg")
    ('tiff', 'jpeg')
    """
    ext = Path(path).suffix.lower()
    try:
        return FORMATS[ext]
    except KeyError:
        raise ImageFileError(f"{os.fspath(path)}: unsupported file type {ext or '(no extension)'!r}; "
                             f"use one of {', '.join(FORMATS)}") from None


@dataclass
class ImageFile:
    """An image file read into memory.

    Attributes
    ----------
    path : Path
        Where it was read from.
    data : ndarray
        The pixels as stored: a colour image keeps its colour axis last.
    format : str
        ``"tiff"``, ``"png"``, ``"jpeg"`` or ``"npy"``.
    colour : bool
        The last axis of `data` holds colour samples (RGB), not pixels.
    """

    path: Path
    data: np.ndarray
    format: str
    colour: bool = False

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_declared_size(path: Path, shape: Sequence[int], dtype: np.dtype, *,
                         stored: int | None = None) -> None:
    """Refuse a file whose header declares more data than it holds, or than memory can take.

    A header is only a claim: a corrupt or hostile file can declare a shape of
    terabytes, and reading it would raise MemoryError (or exhaust the machine)
    instead of naming the file. `stored` is the number of data bytes the file
    holds, for uncompressed formats.
    """
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * np.dtype(dtype).itemsize
    if stored is not None and nbytes > stored:
        raise ImageFileError(f"{path}: the header declares shape {tuple(shape)} {np.dtype(dtype)} "
                             f"({nbytes} bytes) but the file holds {stored} bytes of data "
                             "(truncated or corrupt)")
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ImageFileError(f"{path}: the header declares shape {tuple(shape)} {np.dtype(dtype)} "
                             f"({nbytes / 2**30:.3g} GiB), more than the {avail / 2**30:.3g} GiB of memory "
                             "available: not read")


def _read_npy(path: Path) -> np.ndarray:
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        header = read(fh) if read is not None else None  # other versions: np.load's own checks
        stored = os.fstat(fh.fileno()).st_size - fh.tell()
    if header is not None and not header[2].hasobject:
        _check_declared_size(path, header[0], header[2], stored=stored)
    return np.load(path, allow_pickle=False)


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    tifffile = _require("tiff", "reading")
    with tifffile.TiffFile(path) as tif:
        series = tif.series
        if not series:
            raise ImageFileError(f"{path}: the TIFF holds no image")
        if len(series) > 1:
            shapes = ", ".join(str(tuple(s.shape)) for s in series[:4])
            raise ImageFileError(f"{path}: the TIFF holds {len(series)} image series of different shapes "
                                 f"({shapes}); only single-series files are supported")
        s = series[0]
        _check_declared_size(path, s.shape, s.dtype)
        data = s.asarray()
        colour = s.axes.endswith("S") and data.shape[-1] in (3, 4)
    return data, colour


# Pillow modes -> the mode the pixels are read in. Alpha is dropped: it is
# not an intensity, and deconvolving it makes no sense.
_PIL_CONVERT = {"1": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGB", "RGBA": "RGB", "RGBa": "RGB",
                "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _read_pil(path: Path, fmt: str, gray: bool) -> tuple[np.ndarray, bool]:
    Image = _require(fmt, "reading")
    with Image.open(path) as im:
        im.load()
        if gray and im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            im = im.convert("L")
        elif im.mode in _PIL_CONVERT:
            im = im.convert(_PIL_CONVERT[im.mode])
        data = np.asarray(im)
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    return data, data.ndim == 3


def load(path: str | os.PathLike[str], *, gray: bool = False) -> ImageFile:
    """Read an image file, with what is needed to write a result back in the same format.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff``, ``.png``, ``.jpg``/``.jpeg`` or ``.npy`` file.
    gray : bool, optional
        Convert a PNG/JPEG colour image to luminance (for point-spread functions).

    Returns
    -------
    ImageFile

    Raises
    ------
    ImageFileError
        Unsupported extension, missing, unreadable or corrupt file; the
        message is one line and starts with the path.
    MissingDependencyError
        The format's optional library is not installed.
    """
    p = Path(path)
    fmt = format_of(p)
    if not p.exists():
        raise ImageFileError(f"{p}: no such file")
    if p.is_dir():
        raise ImageFileError(f"{p}: is a directory, not an image file")
    try:
        if fmt == "npy":
            data, colour = _read_npy(p), False
        elif fmt == "tiff":
            data, colour = _read_tiff(p)
        else:
            data, colour = _read_pil(p, fmt, gray)
    except (ImageFileError, MissingDependencyError, MemoryError):
        raise
    except Exception as exc:  # every library has its own error types for a corrupt file
        raise ImageFileError(f"{p}: cannot read as {fmt.upper()} ({one_line(exc)})") from exc
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise ImageFileError(f"{p}: holds {data.dtype} data; images must be real numbers")
    if data.size == 0:
        raise ImageFileError(f"{p}: is empty (shape {data.shape})")
    return ImageFile(p, data, fmt, colour)


def read_image(path: str | os.PathLike[str], *, gray: bool = False) -> np.ndarray:
    """Read an image file into a NumPy array, as stored (colour axis last).

    TIFF stacks and volumes come back whole (``(pages, rows, cols)``); PNG/JPEG
    palette images become RGB and alpha is dropped; ``.npy`` is loaded with
    ``allow_pickle=False``. See :func:`load` for the errors.
    """
    return load(path, gray=gray).data


def to_dtype(data: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Convert a float result for writing: integers are rounded and clipped to the type's range.

    Examples
    --------
    >>> to_dtype(np.array([-3.2, 7.6, 300.0]), "uint8")
    array([  0,   8, 255], dtype=uint8)
    """
    dtype = np.dtype(dtype)
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError("data is a masked array (numpy.ma); pass data.filled(value)")
    data = np.asarray(data)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    return data.astype(dtype, copy=False)


# ------------------------------------------------------------------ writing
def _umask() -> int:
    # mkstemp creates files 0600; a result should get the permissions of any new file.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exists(dst: Path) -> OutputExistsError:
    return OutputExistsError(f"{dst} exists (use --force / force=True to overwrite)")


def _host_tag() -> str:
    import socket

    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"


def _tmp_prefix(name: str, pid: int) -> str:
    """``.NAME.gdtmp-HOST-PID.``: a temporary of ours names the process (and machine) writing it."""
    return f".{name}.gdtmp-{_host_tag()}-{pid}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


def _remove_stale_temporaries(dst: Path, parent: Path) -> None:
    """Delete temporaries of `dst` left by a writer that was killed (SIGKILL, power loss).

    Only files that are provably such leftovers go: named by :func:`_tmp_prefix`
    for `dst` on this machine, owned by this user, a regular file, and whose
    writing process no longer exists. A live writer's temporary, another
    machine's (on a shared file system) or a file of any other name is left alone.
    """
    if os.name != "posix":
        return  # os.kill(pid, 0) probes a process only on POSIX (on Windows it would signal it)
    head = f".{dst.name}.gdtmp-{_host_tag()}-"
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    uid = os.getuid() if hasattr(os, "getuid") else None
    for e in entries:
        name = e.name
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        pid_text = name[len(head):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not e.is_file(follow_symlinks=False) or (uid is not None and st.st_uid != uid):
                continue
            os.unlink(e.path)
        except OSError:
            continue


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *,
                 force: bool = False) -> Path:
    """Write a file atomically: `write` fills a temporary file next to `path`, which is renamed into place.

    Parameters
    ----------
    path : str or path-like
        Destination; its directory must exist.
    write : callable
        ``write(fh)`` writes the content to a binary file handle.
    force : bool, optional
        Replace an existing `path`. Without it an existing file is never
        touched (checked again at the rename, without a race).

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    OutputExistsError
        `path` exists and `force` is False.
    """
    dst = Path(path)
    if not force and dst.exists():
        raise _exists(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    _remove_stale_temporaries(dst, parent)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(dst.name, os.getpid()), suffix=".tmp", dir=parent)
    os.close(fd)  # reopened by name: some writers (tifffile) want a named file handle
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if force:
            os.replace(tmp, dst)
        else:
            try:
                # A hard link fails if dst appeared meanwhile: no clobbering, even in a race.
                os.link(tmp, dst)
            except FileExistsError:
                raise _exists(dst) from None
            except OSError:
                # No hard links on this file system (some network/FAT mounts): best effort.
                if dst.exists():
                    raise _exists(dst) from None
                os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dst


class _ShapeAndDtype(Protocol):
    """What the PNG/JPEG check reads of an array (an ndarray, or the CLI's description of one)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def dtype(self) -> np.dtype: ...


def _check_pil_shape(path: Path, fmt: str, data: _ShapeAndDtype, colour: bool) -> None:
    name = fmt.upper()
    if data.ndim not in (2, 3) or (data.ndim == 3 and not colour):
        raise ImageFileError(f"{path}: {name} holds one 2-D image (gray or RGB); got shape {data.shape}: "
                             "write TIFF or .npy instead (--format tiff)")
    allowed = ("uint8",) if fmt == "jpeg" or data.ndim == 3 else ("uint8", "uint16")
    if data.dtype.name not in allowed:
        what = "colour " if data.ndim == 3 else ""
        raise ImageFileError(f"{path}: {name} stores {what}images as {' or '.join(allowed)}, not "
                             f"{data.dtype}; choose --output-dtype {allowed[0]} or --format tiff")


def write_image(path: str | os.PathLike[str], data: np.ndarray, *, force: bool = False,
                format: str | None = None, colour: bool = False) -> Path:
    """Write an array to an image file atomically, never replacing a file unless `force`.

    Parameters
    ----------
    path : str or path-like
        Destination; the format comes from its extension unless `format` is given.
    data : ndarray
        The pixels. TIFF and ``.npy`` take any real dtype and shape; PNG
        takes one 2-D uint8/uint16 image or an ``(rows, cols, 3)`` uint8 one,
        JPEG uint8 only.
    force : bool, optional
        Replace an existing file.
    format : {"tiff", "png", "jpeg", "npy"}, optional
        Override the extension.
    colour : bool, optional
        The last axis holds RGB samples (TIFF is then written as RGB).

    Returns
    -------
    Path

    Raises
    ------
    OutputExistsError, ImageFileError, MissingDependencyError
    """
    p = Path(path)
    fmt = format or format_of(p)
    if fmt not in EXTENSION:
        raise ImageFileError(f"format must be one of {sorted(EXTENSION)}; got {fmt!r}")
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError("data is a masked array (numpy.ma); an image file has no mask: pass "
                        "data.filled(value) to write it")
    data = np.asarray(data)
    if fmt == "npy":
        def write(fh):
            np.save(fh, data, allow_pickle=False)
    elif fmt == "tiff":
        tifffile = _require("tiff", "writing")
        photometric = "rgb" if colour and data.shape[-1] in (3, 4) else "minisblack"

        def write(fh):
            tifffile.imwrite(fh, data, photometric=photometric)
    else:
        Image = _require(fmt, "writing")
        colour = colour and data.ndim == 3
        _check_pil_shape(p, fmt, data, colour)

        def write(fh):
            im = Image.fromarray(np.ascontiguousarray(data))
            if fmt == "jpeg":
                im.save(fh, format="JPEG", quality=95)
            else:
                im.save(fh, format="PNG")
    return atomic_write(p, write, force=force)


# ------------------------------------------------------------------- inputs
def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def expand_inputs(specs: Iterable[str | os.PathLike[str]], *,
                  skip: Sequence[str] = ()) -> tuple[list[Path], list[str], bool]:
    """Turn command-line inputs (files, directories, globs) into a list of files.

    A directory contributes its files with a supported extension (not
    recursively, hidden files skipped, sorted); a glob contributes its
    matches with a supported extension (sorted); a file is taken as given.

    Parameters
    ----------
    specs : iterable of str or path-like
    skip : sequence of str, optional
        File-name stem endings left out of directories and globs (the
        tool's own outputs, e.g. ``"_deconv"``).

    Returns
    -------
    files : list of Path
        In order, without duplicates.
    problems : list of str
        One line per input that gave nothing (missing file, empty glob ...).
    batch : bool
        More than one file, or any directory or glob: outputs then go to a
        directory.
    """
    files: list[Path] = []
    problems: list[str] = []
    seen: set[str] = set()
    batch = False

    def add(p: Path) -> None:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            files.append(p)

    def wanted(p: Path) -> bool:
        return (p.suffix.lower() in FORMATS and not p.name.startswith(".")
                and not any(p.stem.endswith(s) for s in skip) and p.is_file())

    for spec in specs:
        s = os.fspath(spec)
        p = Path(s)
        if p.is_dir():
            batch = True
            found = sorted(q for q in p.iterdir() if wanted(q))
            if not found:
                problems.append(f"{s}: directory holds no {'/'.join(sorted(set(FORMATS.values())))} files")
            for q in found:
                add(q)
        elif not p.exists() and _is_glob(s):
            batch = True
            found = sorted(Path(q) for q in glob.glob(s) if wanted(Path(q)))
            if not found:
                problems.append(f"{s}: no image files match")
            for q in found:
                add(q)
        else:
            add(p)
    return files, problems, batch or len(files) > 1
