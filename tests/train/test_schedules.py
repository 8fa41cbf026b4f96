"""The LR curves, checked point by point against their definitions."""

import math

import pytest
import torch

from plantid.config import LRPhase, OptimConfig, load_config
from plantid.train.schedules import build_scheduler, lr_curve, triangular_lr


def test_seed_phases_point_by_point():
    cfg = load_config("seed-convnext-large").optim
    steps = 10  # steps per epoch
    curve = lr_curve(cfg, epochs=56, steps_per_epoch=steps)
    half = 2 * steps  # step_epochs = 2
    # Phase 1 (epochs 0-14): starts at min, peaks at max after one half-cycle, back at min after two.
    assert curve(0) == pytest.approx(1e-6)
    assert curve(half // 2) == pytest.approx(1e-6 + (1e-5 - 1e-6) * 0.5)
    assert curve(half) == pytest.approx(1e-5)
    assert curve(2 * half) == pytest.approx(1e-6)
    assert curve(3 * half) == pytest.approx(1e-5)
    # Phase 2 starts at epoch 15 and restarts its own triangle between 1e-5 and 1e-4.
    p2 = 15 * steps
    assert curve(p2) == pytest.approx(1e-5)
    assert curve(p2 + half) == pytest.approx(1e-4)
    assert curve(p2 + 2 * half) == pytest.approx(1e-5)
    # Phase 3 starts at epoch 47 and goes back to 1e-6..1e-5.
    p3 = 47 * steps
    assert curve(p3) == pytest.approx(1e-6)
    assert curve(p3 + half) == pytest.approx(1e-5)
    values = [curve(s) for s in range(56 * steps)]
    assert min(values[:p2]) >= 1e-6 - 1e-12 and max(values[:p2]) <= 1e-5 + 1e-12
    assert max(values[p2:p3]) == pytest.approx(1e-4) and min(values[p2:p3]) >= 1e-5 - 1e-12
    assert max(values[p3:]) <= 1e-5 + 1e-12


def test_triangular_matches_smith_formula():
    for step in range(0, 50):
        cycle = math.floor(1 + step / 16)
        x = abs(step / 8 - 2 * cycle + 1)
        assert triangular_lr(step, 0.1, 0.5, 8) == pytest.approx(0.1 + 0.4 * max(0, 1 - x))


def test_cosine_with_warmup_and_scheduler_applies_the_curve():
    cfg = OptimConfig(lr=0.01, schedule="cosine", warmup_epochs=1)
    curve = lr_curve(cfg, epochs=5, steps_per_epoch=4)
    assert curve(0) == pytest.approx(0.01 / 4)
    assert curve(3) == pytest.approx(0.01)
    assert curve(4) == pytest.approx(0.01)
    assert curve(19) < curve(10) < curve(5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=123.0)
    sched = build_scheduler(opt, curve)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([curve(s) for s in range(20)])


def test_onecycle_peaks_at_lr():
    cfg = OptimConfig(lr=0.1, schedule="onecycle")
    curve = lr_curve(cfg, epochs=10, steps_per_epoch=10)
    values = [curve(s) for s in range(100)]
    assert max(values) == pytest.approx(0.1)
    assert values[0] == pytest.approx(0.1 / 25)
    assert values[-1] < 1e-3


def test_cyclic_needs_phases():
    with pytest.raises(ValueError):
        lr_curve(OptimConfig(schedule="cyclic", phases=[]), 1, 1)(0)
    assert lr_curve(OptimConfig(schedule="cyclic", phases=[LRPhase(epochs=1, min_lr=1e-3, max_lr=1e-2)]), 1, 1)(0) == pytest.approx(1e-3)
