"""Learning-rate schedules as pure functions of the optimizer step.

`lr_curve` returns lr(step) so the schedule can be tested point by point and plotted; the
LightningModule wraps it in a LambdaLR stepped every batch. The seed's schedule is a list of
triangular cyclical phases (Smith's CLR, as the Keras CyclicLR callback the report used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from plantid.config import LRPhase, OptimConfig

LRCurve = Callable[[int], float]


def triangular_lr(step: int, min_lr: float, max_lr: float, step_size: float) -> float:
    """Triangular cyclical LR: rises min->max over `step_size` steps, falls back, repeats."""
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    return min_lr + (max_lr - min_lr) * max(0.0, 1.0 - x)


def phased_cyclic_curve(phases: Sequence[LRPhase], steps_per_epoch: int) -> LRCurve:
    """The seed's phased cyclical LR: each phase restarts its own triangular cycle.

    Steps past the last phase keep following the last phase.
    """
    if not phases:
        raise ValueError("a cyclic schedule needs at least one phase")
    starts = []
    total = 0
    for phase in phases:
        starts.append(total)
        total += phase.epochs * steps_per_epoch

    def curve(step: int) -> float:
        index = max(i for i, start in enumerate(starts) if step >= start) if step >= 0 else 0
        phase = phases[index]
        return triangular_lr(step - starts[index], phase.min_lr, phase.max_lr, phase.step_epochs * steps_per_epoch)

    return curve


def lr_curve(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> LRCurve:
    """lr(step) for the configured schedule over `epochs` epochs of `steps_per_epoch` steps."""
    steps_per_epoch = max(1, steps_per_epoch)
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    base = cfg.lr

    if cfg.schedule == "cyclic":
        return phased_cyclic_curve(cfg.phases, steps_per_epoch)
    if cfg.schedule == "onecycle":
        # torch.optim.lr_scheduler.OneCycleLR's cosine policy: 30% warm-up from lr/25, then down to lr/1e4.
        peak = max(1, int(0.3 * total))

        def onecycle(step: int) -> float:
            if step < peak:
                t = step / peak
                start = base / 25
                return start + (base - start) * (1 - math.cos(math.pi * t)) / 2
            t = min(1.0, (step - peak) / max(1, total - peak))
            end = base / 25 / 1e4
            return end + (base - end) * (1 + math.cos(math.pi * t)) / 2

        return onecycle

    def warmed(step: int, after: Callable[[int], float]) -> float:
        if step < warmup:
            return base * (step + 1) / warmup
        return after(step - warmup)

    if cfg.schedule == "cosine":
        span = max(1, total - warmup)
        return lambda step: warmed(step, lambda s: base * 0.5 * (1 + math.cos(math.pi * min(1.0, s / span))))
    return lambda step: warmed(step, lambda s: base)


def build_scheduler(optimizer: torch.optim.Optimizer, curve: LRCurve) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR that sets each param group's LR to curve(step) x its `lr_scale` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = float(group.get("lr_scale", 1.0))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=curve)
