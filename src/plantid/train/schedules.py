"""Learning-rate schedules as torch.optim.lr_scheduler objects, stepped once per optimizer step.

- constant and cosine: an optional linear warm-up (LinearLR, from lr/warmup to lr) followed by
  ConstantLR or CosineAnnealingLR (down to 0 at the last step), joined by SequentialLR;
- onecycle: torch's OneCycleLR (cosine, 30% warm-up from lr/25, down to lr/25/1e4), without its
  momentum cycling;
- cyclic: the seed report's phased cyclical LR (Smith's triangular CLR, as the Keras CyclicLR
  callback the report used): one CyclicLR per phase, each restarting its own triangle, joined by
  SequentialLR. Steps past the last phase keep following the last phase.

Every param group's rates are scaled by its `lr_scale` (layer-wise decay, `plantid.train.optim`).
`lr_curve` replays a schedule on a throwaway parameter, to test it point by point and plot it.
"""

from __future__ import annotations

import warnings
from itertools import accumulate

import torch
from torch.optim.lr_scheduler import (ConstantLR, CosineAnnealingLR, CyclicLR, LinearLR, LRScheduler,
                                      OneCycleLR, SequentialLR)

from plantid.config import OptimConfig


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int,
                    steps_per_epoch: int, total_steps: int | None = None) -> LRScheduler:
    """The configured per-step schedule over `epochs` epochs of `steps_per_epoch` optimizer steps
    (or over `total_steps` steps when given: epochs whose length changed during the run).

    Each param group peaks at optim.lr (cyclic: its phases' rates) times the group's `lr_scale`.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    total = max(1, epochs * steps_per_epoch if total_steps is None else total_steps)
    scales = [float(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr"] = cfg.lr * scale
        group.pop("initial_lr", None)  # schedulers take their base rates from a fresh group["lr"]

    if cfg.schedule == "cyclic":
        if not cfg.phases:
            raise ValueError("optim.schedule=cyclic needs at least one entry in optim.phases")
        cycles = [CyclicLR(optimizer, base_lr=[phase.min_lr * s for s in scales],
                           max_lr=[phase.max_lr * s for s in scales],
                           step_size_up=phase.step_epochs * steps_per_epoch, mode="triangular",
                           cycle_momentum=False)
                  for phase in cfg.phases]
        starts = list(accumulate(phase.epochs * steps_per_epoch for phase in cfg.phases[:-1]))
        return SequentialLR(optimizer, cycles, milestones=starts) if starts else cycles[0]
    if cfg.schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=[cfg.lr * s for s in scales], total_steps=total, pct_start=0.3,
                          anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4, cycle_momentum=False)

    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=0.0)
    else:
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def scheduler_at_step(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int,
                      step: int) -> LRScheduler:
    """A schedule over `total_steps` steps, advanced to `step` (the optimizer's rates set to that
    step's): when a run's remaining epochs change length, the rest of its schedule is this one's."""
    scheduler = build_scheduler(optimizer, cfg, 1, steps_per_epoch, total_steps=max(total_steps, step + 1))
    with warnings.catch_warnings():  # advancing the schedule alone is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            scheduler.step()
    return scheduler


def lr_curve(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate at each of the run's optimizer steps (a group with `lr_scale` 1)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, epochs, steps_per_epoch)
    values = []
    for _ in range(max(1, epochs * max(1, steps_per_epoch))):
        values.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: moves nothing, but keeps torch's step-order check quiet
        scheduler.step()
    return values
