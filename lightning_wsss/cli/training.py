"""``wsss fit|validate|test|predict``: the LightningCLI sub-commands (see :mod:`lightning_wsss.cli.lightning`)."""

from __future__ import annotations

from typing import List

from .registry import Runner, command

SUMMARIES = {
    "fit": "train one task from a LightningCLI config (--config FILE; model, data, trainer)",
    "validate": "validation metrics of a checkpoint (--config FILE --ckpt_path CKPT)",
    "test": "test metrics of a checkpoint (--config FILE --ckpt_path CKPT)",
    "predict": "write a task's predictions (CAMs, labels) with a checkpoint (--config FILE --ckpt_path CKPT)",
}


def lightning_runner(subcommand: str) -> Runner:
    """A runner handing ``[subcommand] + argv`` to the suite's LightningCLI."""

    def run(argv: List[str]) -> int:
        from .lightning import run_lightning_cli

        run_lightning_cli([subcommand] + list(argv))
        return 0

    run.__name__ = f"run_{subcommand}"
    return run


for _name, _summary in SUMMARIES.items():
    command(_name, _summary)(lightning_runner(_name))
