"""Optimiser and poly learning-rate schedule (optionally restarted) with a learning-rate multiplier for newly
added heads."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Union

import torch


def param_groups(backbone: Iterable[torch.nn.Parameter], head: Iterable[torch.nn.Parameter], lr: float,
                 head_lr_mult: float, weight_decay: float) -> List[Dict]:
    """Two parameter groups: the (pretrained) backbone at ``lr`` and the new head at ``lr * head_lr_mult``."""
    return [
        {"params": [p for p in backbone if p.requires_grad], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in head if p.requires_grad], "lr": lr * head_lr_mult, "weight_decay": weight_decay},
    ]


def build_optimizer(groups: List[Dict], name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``sgd`` (momentum, as psa/irn/DeepLab) or ``adamw``."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


StepCount = Union[int, Callable[[], int]]


def poly_factor(power: float, total_steps: StepCount, restart_step: Optional[StepCount] = None,
                restart_mult: float = 1.0) -> Callable[[int], float]:
    """A ``LambdaLR`` factor: ``(1 - step / total_steps) ** power``.

    With ``restart_step`` R, two poly schedules: ``(1 - step / R) ** power`` before R, then a fresh one at
    ``restart_mult`` times the rates, ``restart_mult * (1 - (step - R) / (total_steps - R)) ** power`` (ReCAM
    fine-tunes a trained classifier that way). Callable step counts are read at the first step after step 0, when
    the trainer knows its length (step 0 then counts as before R); the factor is a plain function, so the
    scheduler's state holds no module.
    """
    steps: Dict[str, int] = {}

    def resolve() -> None:
        steps["total"] = max(1, int(total_steps() if callable(total_steps) else total_steps))
        if restart_step is not None:
            steps["restart"] = int(restart_step() if callable(restart_step) else restart_step)

    def factor(step: int) -> float:
        if step == 0:  # every schedule starts at 1, the fine-tuning one at restart_mult
            return restart_mult if restart_step is not None and not callable(restart_step) and restart_step == 0 else 1.0
        if not steps:
            resolve()
        total, restart = steps["total"], steps.get("restart")
        if restart is None:
            return max(0.0, 1.0 - step / total) ** power
        if step < restart:
            return max(0.0, 1.0 - step / restart) ** power
        return restart_mult * max(0.0, 1.0 - (step - restart) / max(1, total - restart)) ** power

    return factor


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: StepCount, power: float = 0.9,
                  restart_step: Optional[StepCount] = None,
                  restart_mult: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """lr = base_lr * (1 - step / total_steps) ** power, stepped every optimisation step (with a restart:
    :func:`poly_factor`).

    ``total_steps`` may be a callable, read at the first step after step 0: a task passes the trainer's
    ``estimated_stepping_batches`` that way, so ``configure_optimizers`` does not build (and, with persistent
    workers, start) the training DataLoader before the ``on_fit_start`` hooks ran (BoxSup installs its
    pseudo-mask reader there).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, poly_factor(power, total_steps, restart_step, restart_mult))


def configure_poly(module, backbone_params, head_params, lr: float, head_lr_mult: float, weight_decay: float,
                   optimizer: str, momentum: float, poly_power: float, restart_step: Optional[StepCount] = None,
                   restart_mult: float = 1.0):
    """The ``configure_optimizers`` return value for a task: optimiser + per-step poly schedule (optionally
    restarted at ``restart_step`` with ``restart_mult``, :func:`poly_factor`)."""
    opt = build_optimizer(param_groups(backbone_params, head_params, lr, head_lr_mult, weight_decay), optimizer, lr, momentum)
    total = (lambda: module.trainer.estimated_stepping_batches) if module._trainer is not None else 1
    schedule = poly_schedule(opt, total, poly_power, restart_step, restart_mult)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
