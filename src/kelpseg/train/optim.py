"""Optimizers and learning-rate schedulers from the config (``train.optimizer`` / ``scheduler``).

Schedulers and the unit they step in:

=============  =====================================================================  ========
name           schedule                                                               interval
=============  =====================================================================  ========
``constant``   ``lr`` throughout                                                      step
``onecycle``   ``lr / div_factor`` -> ``lr`` (``pct_start``) -> ``lr / div / final``  step
``cosine``     cosine from ``lr`` to ``min_lr`` over all steps                        step
``step``       ``lr * gamma`` every ``step_epochs`` epochs                            epoch
``plateau``    ``lr * plateau_factor`` after ``plateau_patience`` epochs w/o gain     epoch
=============  =====================================================================  ========
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from kelpseg.config import TrainConfig

MONITOR = "val/dice"


def build_optimizer(params: Iterable[nn.Parameter], t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (with ``momentum``) at ``lr`` and ``weight_decay``."""
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, t: TrainConfig, total_steps: int) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` dict for the configured schedule.

    Args:
        opt: The optimizer.
        t: The training config.
        total_steps: Optimizer steps of the whole run (step-wise schedules span them).
    """
    total_steps = max(int(total_steps), 1)
    sched: Any
    interval = "step"
    if t.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=t.lr,
            total_steps=total_steps,
            pct_start=t.pct_start,
            div_factor=t.div_factor,
            final_div_factor=t.final_div_factor,
        )
    elif t.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=t.min_lr)
    elif t.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_epochs, gamma=t.gamma)
        interval = "epoch"
    elif t.scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=t.plateau_factor, patience=t.plateau_patience
        )
        interval = "epoch"
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    out = {"scheduler": sched, "interval": interval, "frequency": 1}
    if t.scheduler == "plateau":
        out["monitor"] = MONITOR
    return out
