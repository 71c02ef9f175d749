"""Atomic artifact writers and validated readers for images and label maps.

Every artifact the suite writes goes through :func:`atomic_write`: data are written to a temporary file in
the destination folder and renamed over the target, so an interrupted run never leaves a half-written file
and a reader never sees one. Readers raise :class:`~lightning_wsss.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, PathLike
from .palette import voc_palette


def with_path(exc: OSError, path: PathLike) -> OSError:
    """``exc`` itself when it names a file, else the same error (errno, cause) naming ``path``: a full disk
    reports ``ENOSPC`` from ``write`` without saying which file was being written."""
    if exc.filename is not None or exc.errno is None:
        return exc
    named = OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))  # the errno's subclass
    named.__cause__ = exc
    return named


def current_umask() -> int:
    """The process's umask (from ``/proc/self/status`` where available, which leaves it untouched)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and rename it over ``path`` when the block succeeds.

    The file gets the permissions a plain ``open`` would give it (``0o666`` less the umask; ``mkstemp`` alone
    makes it ``0o600``, unreadable to colleagues on a shared file system).

    Yields:
        a file object opened with ``mode``. If the block raises, the temporary file is removed and ``path``
        is left as it was; an ``OSError`` (a full disk, a folder without write permission) names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise with_path(exc, path)
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise with_path(exc, path)
        raise


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Remove the temporary files :func:`atomic_write` leaves under ``folder`` when its process is killed between
    writing and renaming (``.<name>.<random>.tmp``). Only safe while no process writes there.

    Returns:
        the paths removed.
    """
    removed = [path for path in Path(folder).rglob(".*.tmp") if path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if absent) for the block, waiting until it is free.

    POSIX ``flock``: released when the block ends or the process dies; threads and processes that open the file
    themselves exclude each other. Elsewhere (no ``fcntl``) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as exc:
        raise with_path(exc, path)
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def copy_file_atomic(source: PathLike, target: PathLike) -> None:
    """Copy ``source`` to ``target`` atomically (``target`` is the old file or the whole copy, never part of it)."""
    import shutil

    with atomic_write(target, "wb") as handle, open(source, "rb") as src:
        shutil.copyfileobj(src, handle)


def write_json_atomic(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Serialise ``obj`` as JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode())


def write_label_png(path: PathLike, label: np.ndarray, palette: Optional[np.ndarray] = None) -> None:
    """Write an integer label map [H, W] (values 0..254 classes, 255 ignore) as a palette PNG, atomically.

    The palette defaults to the PASCAL VOC palette, so the file opens in any viewer with VOC colours and reads
    back as the same indices.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D [H, W], got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette((voc_palette() if palette is None else palette).astype(np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def write_npz_atomic(path: PathLike, **arrays: np.ndarray) -> None:
    """Save several named arrays as an uncompressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


_UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                 (b"\xfe\xff", "UTF-16"))


def read_text_file(path: PathLike, what: str = "text file") -> str:
    """The content of a UTF-8 text file (split lists, class names, id lists, configs, JSON), a leading byte-order
    mark dropped (editors on Windows write one).

    Raises:
        DataError: the file is missing or unreadable, or not UTF-8 (UTF-16, Latin-1...): the message names the
            file, says what it is, and where the first offending byte is.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(path, f"{what} is missing") from exc
    except OSError as exc:
        raise DataError(path, f"cannot read {what} ({exc.strerror or exc})") from exc
    for bom, encoding in _UNICODE_BOMS:
        if data.startswith(bom):
            raise DataError(path, f"{what} is {encoding} text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(path, f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}, e.g. Latin-1); "
                              "save it as UTF-8") from exc
    if "\x00" in text:
        raise DataError(path, f"{what} holds NUL characters (UTF-16 text without a byte-order mark?); save it as UTF-8")
    return text


def read_image(path: PathLike) -> np.ndarray:
    """Read an RGB image.

    Returns:
        uint8 array [H, W, 3].

    Raises:
        DataError: the file is missing, unreadable, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(path, f"unreadable or truncated image ({exc})") from exc


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a label map stored as a palette ('P') or single-channel ('L') PNG.

    Returns:
        uint8 array [H, W] of class indices (255 = ignore). Palette PNGs are read as their indices, not colours.

    Raises:
        DataError: the file is missing, unreadable, not a PNG, or an RGB image (colour-coded masks are not label
            maps).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mask file is missing")
    try:
        with Image.open(path) as img:
            img.load()
            if img.format != "PNG":  # a JPEG renamed .png: lossy compression has changed the class ids
                raise DataError(path, f"label map must be a PNG file, but this is a {img.format or 'non-PNG'} image "
                                      "(lossy formats change class ids; save masks as PNG)")
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DataError(path, f"mask must be a palette or single-channel PNG of class indices, got mode {img.mode!r}")
            arr = np.array(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(path, f"unreadable or truncated mask ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(path, f"mask must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise DataError(path, f"mask values {arr.min()}..{arr.max()} do not fit 0..255")
        arr = arr.astype(np.uint8)
    return arr


__all__ = [
    "atomic_write",
    "remove_stale_temporaries",
    "current_umask",
    "file_lock",
    "with_path",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_label_png",
    "write_npz_atomic",
    "read_image",
    "read_text_file",
    "read_label_png",
]
