"""The LR schedules (torch schedulers) checked step by step against the closed forms plantid
computed by hand before it used them, and against what a resumed run must see."""

import math

import pytest
import torch

from plantid.config import LRPhase, OptimConfig, load_config
from plantid.train.schedules import build_scheduler, lr_curve


def _warmed(step, base, warmup, after):
    return base * (step + 1) / warmup if step < warmup else after(step - warmup)


def _cosine_reference(base, warmup, total):
    span = max(1, total - warmup)
    return lambda step: _warmed(step, base, warmup, lambda s: base * 0.5 * (1 + math.cos(math.pi * min(1.0, s / span))))


def _triangle(step, lo, hi, half):
    """Smith's triangular cyclical LR (the formula of the Keras CyclicLR callback)."""
    cycle = math.floor(1 + step / (2 * half))
    x = abs(step / half - 2 * cycle + 1)
    return lo + (hi - lo) * max(0.0, 1.0 - x)


def _phased_reference(phases, steps_per_epoch):
    starts = [sum(p.epochs for p in phases[:i]) * steps_per_epoch for i in range(len(phases))]

    def curve(step):
        i = max(j for j, start in enumerate(starts) if step >= start)
        p = phases[i]
        return _triangle(step - starts[i], p.min_lr, p.max_lr, p.step_epochs * steps_per_epoch)
    return curve


@pytest.mark.parametrize("schedule,warmup_epochs,epochs,steps", [
    ("cosine", 0.5, 9, 75),  # cpu-default's shape
    ("cosine", 0.0, 5, 4),
    ("cosine", 1.0, 5, 4),
    ("cosine", 0.25, 3, 4),  # a one-step warm-up
    ("constant", 2.0, 4, 3),
    ("constant", 0.0, 3, 3),
])
def test_warmup_cosine_and_constant_equal_the_closed_form_at_every_step(schedule, warmup_epochs, epochs, steps):
    cfg = OptimConfig(lr=2e-3, schedule=schedule, warmup_epochs=warmup_epochs)
    warmup, total = int(round(warmup_epochs * steps)), epochs * steps
    after = _cosine_reference(cfg.lr, warmup, total) if schedule == "cosine" else (lambda s: _warmed(s, cfg.lr, warmup, lambda _: cfg.lr))
    assert lr_curve(cfg, epochs, steps) == pytest.approx([after(s) for s in range(total)], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("steps_per_epoch", [10, 7])
def test_seed_phases_equal_the_triangular_reference_at_every_step(steps_per_epoch):
    cfg = load_config("seed-convnext-large").optim
    reference = _phased_reference(cfg.phases, steps_per_epoch)
    values = lr_curve(cfg, epochs=56, steps_per_epoch=steps_per_epoch)
    assert values == pytest.approx([reference(s) for s in range(len(values))], rel=1e-12, abs=1e-15)


def test_seed_phases_point_by_point():
    cfg = load_config("seed-convnext-large").optim
    steps = 10  # steps per epoch
    values = lr_curve(cfg, epochs=56, steps_per_epoch=steps)
    half = 2 * steps  # step_epochs = 2
    # Phase 1 (epochs 0-14): starts at min, peaks at max after one half-cycle, back at min after two.
    assert values[0] == pytest.approx(1e-6)
    assert values[half // 2] == pytest.approx(1e-6 + (1e-5 - 1e-6) * 0.5)
    assert values[half] == pytest.approx(1e-5)
    assert values[2 * half] == pytest.approx(1e-6)
    assert values[3 * half] == pytest.approx(1e-5)
    # Phase 2 starts at epoch 15 and restarts its own triangle between 1e-5 and 1e-4.
    p2 = 15 * steps
    assert values[p2] == pytest.approx(1e-5)
    assert values[p2 + half] == pytest.approx(1e-4)
    assert values[p2 + 2 * half] == pytest.approx(1e-5)
    # Phase 3 starts at epoch 47 and goes back to 1e-6..1e-5.
    p3 = 47 * steps
    assert values[p3] == pytest.approx(1e-6)
    assert values[p3 + half] == pytest.approx(1e-5)
    assert max(values[p2:p3]) == pytest.approx(1e-4) and min(values[p2:p3]) >= 1e-5 - 1e-12
    assert max(values[p3:]) <= 1e-5 + 1e-12


def test_onecycle_is_torchs_cosine_one_cycle_without_momentum_cycling():
    cfg = OptimConfig(name="adam", lr=0.1, schedule="onecycle")
    values = lr_curve(cfg, epochs=10, steps_per_epoch=10)
    peak = int(0.3 * 100) - 1  # torch ends the warm-up phase at step pct_start * total - 1
    assert values[0] == pytest.approx(0.1 / 25)
    assert values[peak] == pytest.approx(0.1) and max(values) == pytest.approx(0.1)
    assert all(a < b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a > b for a, b in zip(values[peak:], values[peak + 1:]))
    # Half-way through the warm-up the cosine is half-way between lr/25 and lr.
    half = torch.optim.lr_scheduler.OneCycleLR._annealing_cos(0.1 / 25, 0.1, 0.5)
    assert half == pytest.approx((0.1 / 25 + 0.1) / 2)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    sched = build_scheduler(opt, cfg, 10, 10)
    for _ in range(99):
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # Adam's beta1 is left alone
        opt.step()
        sched.step()
    # The last of the 100 steps trains at lr/25/1e4.
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 25 / 1e4)
    assert values[-1] == pytest.approx(0.1 / 25 / 1e4)


@pytest.mark.parametrize("schedule", ["cosine", "cyclic", "onecycle"])
def test_each_group_follows_the_curve_times_its_scale(schedule):
    phases = [LRPhase(epochs=2, min_lr=1e-4, max_lr=1e-3, step_epochs=1), LRPhase(epochs=2, min_lr=1e-5, max_lr=1e-4)]
    cfg = OptimConfig(lr=1e-3, schedule=schedule, warmup_epochs=1, phases=phases)
    curve = lr_curve(cfg, epochs=4, steps_per_epoch=3)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr_scale": 0.25}, {"params": [params[1]]}], lr=1.0)
    sched = build_scheduler(opt, cfg, 4, 3)
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * curve[step], rel=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(curve[step], rel=1e-12)
        opt.step()
        sched.step()


@pytest.mark.parametrize("schedule", ["cosine", "cyclic", "onecycle"])
def test_a_scheduler_restored_from_its_state_continues_the_same_curve(schedule):
    # Lightning resumes a run by building the scheduler afresh and loading its state_dict.
    phases = [LRPhase(epochs=2, min_lr=1e-4, max_lr=1e-3, step_epochs=1), LRPhase(epochs=3, min_lr=1e-5, max_lr=1e-4)]
    cfg = OptimConfig(lr=1e-3, schedule=schedule, warmup_epochs=1, phases=phases)
    curve = lr_curve(cfg, epochs=5, steps_per_epoch=4)

    def fresh():
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([param], lr=1.0)
        return opt, build_scheduler(opt, cfg, 5, 4)

    opt, sched = fresh()
    for _ in range(9):  # stop inside the second epoch of the second phase / after the warm-up
        opt.step()
        sched.step()
    opt2, sched2 = fresh()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    seen = []
    for _ in range(9, 20):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert seen == pytest.approx(curve[9:20], rel=1e-12)


def test_cyclic_needs_phases():
    with pytest.raises(ValueError, match="optim.phases"):
        lr_curve(OptimConfig(schedule="cyclic", phases=[]), 1, 1)
    assert lr_curve(OptimConfig(schedule="cyclic", phases=[LRPhase(epochs=1, min_lr=1e-3, max_lr=1e-2)]), 1, 1)[0] == pytest.approx(1e-3)
