"""Arrays that pool workers map from one file instead of receiving (and returning) pickled copies.

A process pool sends its arguments and results through pipes, pickled: for the dense CRF that is 2.8 MB per
128 px image with 21 classes (probabilities in, marginals out), a quarter of the CRF's own time on the machine
this suite was built on. :class:`SharedArrays` puts every array of a batch in one memory-mapped file; the parent
fills the inputs, each worker maps the file once and reads and writes its images in place, and only indices
travel through the pipes. The file lives in ``/dev/shm`` when that has room (memory), else in the temporary
folder (the page cache), and is reserved with ``posix_fallocate``, so a full disk is an ``OSError`` and never a
crash on first write. It is deleted when the batch is done.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

Spec = Tuple[Tuple[int, ...], str]
"""An array's shape and numpy dtype string."""

_ALIGN = 64


@dataclass(frozen=True)
class Layout:
    """Where each array lies in the file: picklable, what a worker needs to map the arrays."""

    path: str
    size: int
    entries: Tuple[Tuple[int, Tuple[int, ...], str], ...]  # (byte offset, shape, dtype string)


def plan_layout(path: str, specs: Sequence[Spec]) -> Layout:
    """Byte offsets of ``specs`` packed one after the other, each aligned to 64 bytes."""
    entries, offset = [], 0
    for shape, dtype in specs:
        entries.append((offset, tuple(int(s) for s in shape), str(np.dtype(dtype))))
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return Layout(path, max(offset, _ALIGN), tuple(entries))


def shared_folder(nbytes: int) -> str:
    """``/dev/shm`` when it exists with room for ``nbytes`` and a margin, else the temporary folder."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return tempfile.gettempdir()
    free = stats.f_bavail * stats.f_frsize
    return "/dev/shm" if free > 2 * nbytes + (64 << 20) else tempfile.gettempdir()


class SharedArrays:
    """Arrays of the given shapes and dtypes in one memory-mapped file.

    The parent calls :meth:`create` (which reserves the file), fills :meth:`view`\\ s and hands :attr:`layout` to
    the workers, which call :meth:`attach`; the parent calls :meth:`unlink` when done (also on errors).
    """

    def __init__(self, layout: Layout, buffer: mmap.mmap) -> None:
        self.layout = layout
        self._buffer = buffer

    @classmethod
    def create(cls, specs: Sequence[Spec], folder: Optional[str] = None) -> "SharedArrays":
        """A new file holding ``specs`` (contents undefined until written).

        Raises:
            OSError: the folder has no room for it (ENOSPC) or cannot be written.
        """
        sizes = plan_layout("", specs).size
        fd, path = tempfile.mkstemp(prefix="wsss-arrays-", suffix=".bin", dir=folder or shared_folder(sizes))
        try:
            os.posix_fallocate(fd, 0, sizes)
            buffer = mmap.mmap(fd, sizes)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return cls(plan_layout(path, specs), buffer)

    @classmethod
    def attach(cls, layout: Layout) -> "SharedArrays":
        """Map the arrays a parent created (in a worker)."""
        with open(layout.path, "r+b") as file:
            return cls(layout, mmap.mmap(file.fileno(), layout.size))

    def view(self, index: int) -> np.ndarray:
        """Array ``index``, a view into the file (writes are seen by every process mapping it)."""
        offset, shape, dtype = self.layout.entries[index]
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._buffer, dtype=dtype, count=count, offset=offset).reshape(shape)

    def copies(self, indices: Sequence[int]) -> List[np.ndarray]:
        """Copies of arrays ``indices`` that outlive the file."""
        return [self.view(i).copy() for i in indices]

    def unlink(self) -> None:
        """Delete the file (mappings stay valid until closed; the memory is freed when the last one goes)."""
        try:
            os.unlink(self.layout.path)
        except FileNotFoundError:
            pass
