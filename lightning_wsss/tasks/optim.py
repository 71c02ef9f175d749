"""Optimiser and poly learning-rate schedule with a learning-rate multiplier for newly added heads."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Union

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


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: Union[int, Callable[[], int]],
                  power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """lr = base_lr * (1 - step / total_steps) ** power, stepped every optimisation step.

    ``total_steps`` may be a callable, read at the first step after step 0: a task passes the trainer's
    ``estimated_stepping_batches`` that way, so ``configure_optimizers`` does not build (and, with persistent
    workers, start) the training DataLoader before the ``on_fit_start`` hooks ran (BoxSup installs its
    pseudo-mask reader there).
    """
    resolved: Dict[str, int] = {}

    def factor(step: int) -> float:
        if step == 0:
            return 1.0
        if "total" not in resolved:
            resolved["total"] = max(1, int(total_steps() if callable(total_steps) else total_steps))
        return max(0.0, 1.0 - step / resolved["total"]) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure_poly(module, backbone_params, head_params, lr: float, head_lr_mult: float, weight_decay: float,
                   optimizer: str, momentum: float, poly_power: float):
    """The ``configure_optimizers`` return value for a task: optimiser + per-step poly schedule."""
    opt = build_optimizer(param_groups(backbone_params, head_params, lr, head_lr_mult, weight_decay), optimizer, lr, momentum)
    total = (lambda: module.trainer.estimated_stepping_batches) if module._trainer is not None else 1
    return {"optimizer": opt, "lr_scheduler": {"scheduler": poly_schedule(opt, total, poly_power), "interval": "step"}}
