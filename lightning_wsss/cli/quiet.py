"""Quieter Lightning output for the suite's commands."""

from __future__ import annotations

import logging


def quiet_lightning() -> None:
    """Hide Lightning's start-up tips and device banners (progress bars and warnings stay)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
