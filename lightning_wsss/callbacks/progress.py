"""Progress bars on a terminal, one line per epoch elsewhere: the choice, and the callbacks that make it.

``WSSS_PROGRESS`` overrides the detection: ``bar`` keeps the bars (a terminal that ``isatty`` misjudges),
``lines`` prints epoch lines even on a terminal.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from lightning.pytorch.callbacks import Callback

from .epoch_log import EpochLog

PROGRESS_ENV = "WSSS_PROGRESS"


def stdout_is_terminal() -> bool:
    """Whether progress should be drawn as bars: ``WSSS_PROGRESS`` (``bar`` / ``lines``) if set, else whether
    ``sys.stdout`` is a terminal (it is not under SLURM, ``nohup``, CI or ``> file``).

    Raises:
        ValueError: ``WSSS_PROGRESS`` holds anything else.
    """
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in ("bar", "bars"):
        return True
    if mode == "lines":
        return False
    if mode:
        raise ValueError(f"{PROGRESS_ENV} must be 'bar' or 'lines', got {mode!r}")
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def progress_callbacks(is_tty: Optional[bool] = None) -> List[Callback]:
    """The progress callbacks a Trainer gets: none on a terminal (Lightning's bar; keep
    ``enable_progress_bar=True``), :class:`EpochLog` elsewhere (with ``enable_progress_bar=False``).

    Args:
        is_tty: whether stdout is a terminal; ``None`` asks :func:`stdout_is_terminal`.
    """
    tty = stdout_is_terminal() if is_tty is None else is_tty
    return [] if tty else [EpochLog()]
