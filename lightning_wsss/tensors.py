"""Small tensor operations shared by the tasks, the CAM toolkit and the refiners."""

from __future__ import annotations

from torch import Tensor


def channel_argmax(scores: Tensor, dim: int = 1) -> Tensor:
    """The index of the largest value along ``dim`` (the first one where several are equal, NaN counted as the
    largest): ``scores.argmax(dim)`` to the bit, read from ``scores.max(dim)``.

    Why not ``argmax``: on the CPU, torch's ``argmax`` over a dimension that is not the last one (the class channel
    of ``[B, C, H, W]`` maps) runs several times slower than ``max`` over the same dimension (about 6x for
    ``[16, 7, 128, 128]`` on one thread, ``python benchmarks/cpu_overheads.py``), and every validation batch, CAM
    label map and walk ends in one.

    Args:
        scores: a tensor of any shape.
        dim: the dimension reduced.

    Returns:
        long tensor of ``scores``' shape without ``dim``.
    """
    return scores.max(dim=dim).indices
