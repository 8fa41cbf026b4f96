"""Adaptive defaults: a run's image sizes from its photos, and its epochs from a time budget.

A recipe may leave three settings to the data and the machine (cpu-default does):

* ``data.image_size: auto`` -> the final size from the train photos' own resolution (the median
  short side of a sample of them, read from the file headers): `size_for_photos`;
* ``train.resize_phases: auto`` -> progressive resizing: the first two thirds of the epochs at
  two thirds of the final size (rounded to 32 px), when the final size is at least 160 px;
* ``train.epochs: auto`` with ``train.budget_minutes`` -> as many epochs (up to `max_epochs_for`) as
  a short throughput probe says fit into the budget, counting validation; when even `MIN_EPOCHS`
  do not fit (many photos, a slow machine) each epoch trains on a random share of the photos
  (``train.limit_train_batches``), so the run still ends inside the budget.

`plan_run` resolves every 'auto' into a plain number before the run's config.yaml is written, and
notes how in ``train.planned``, so a run folder records what it trained with and reproduces
without a new probe. A setting given explicitly (``train.epochs=12``, ``data.image_size=160``)
is never changed. Each constant's measurement is in docs/decisions.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image

from plantid.config import ResizePhase, RunConfig
from plantid.data.split import Manifest
from plantid.runtime import machine_cpu_seconds, memory_available_mb, peak_resident_mb, resident_mb
from plantid.train.module import PlantClassifierModule
from plantid.train.optim import build_optimizer

log = logging.getLogger("plantid")

# The final image size by the photos' median short side: (smallest short side, size). 192 px for
# every resolution until a measurement says otherwise (docs/decisions.md, "Image size from the
# photos' resolution").
SIZE_BY_RESOLUTION: tuple[tuple[int, int], ...] = ((0, 192),)
PHASE_SHARE = 2 / 3  # of the epochs (and of the final size) spent in the small first phase
MIN_PHASED_SIZE = 160  # below this final size, no progressive resizing
MAX_EPOCHS = 9  # more did not beat 9 on the leaves (docs/decisions.md, "9 epochs")
# The cap is a number of optimizer steps: smaller sets get more epochs for about the same steps,
# larger ones never fewer than MAX_EPOCHS (docs/decisions.md, "The epoch cap as a number of steps").
MAX_STEPS = 540
MAX_EPOCHS_SMALL_DATA = 3 * MAX_EPOCHS  # however few the photos
MIN_EPOCHS = 3  # fewer passes are taken as shares of the photos per epoch instead
# of the budget the plan fills: the probe skips data loading, augmentation and logging, and the
# guard (plantid.train.budget_guard) stops a run that the machine slows down later
BUDGET_SHARE = 0.9
SAMPLE_PHOTOS = 200  # photos whose headers give the resolution
PROBE_SHARE = 0.05  # of the budget the throughput probe may take (beyond one step per size)
# A training's peak over its probe's (the loaders, validation and the trust fit come after): 1.19
# and 1.13 on 360 photos (docs/benchmarks.md, "Memory"), rounded up.
TRAINING_OVER_PROBE = 1.25


@dataclass
class Speed:
    """Measured training and evaluation speed, photos per second."""

    train: dict[int, float]  # by image size
    evaluate: float  # at the final size
    seconds: float  # how long the probe took
    busy: str | None = None  # how the probe found the cores taken by other programs, or None


def round_size(size: float, step: int = 32) -> int:
    """`size` rounded to a multiple of `step` (never below `step`)."""
    return max(step, int(round(size / step)) * step)


def photo_short_side(paths: list[str], sample: int = SAMPLE_PHOTOS) -> int | None:
    """The median short side, in pixels, of an evenly spaced sample of `paths` (headers only)."""
    if not paths:
        return None
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except OSError:
            continue  # a bad photo is the scan's business; the others still measure
    return sorted(sides)[len(sides) // 2] if sides else None


def size_for_photos(short_side: int | None) -> int:
    """The final image size for photos whose median short side is `short_side` pixels."""
    chosen = SIZE_BY_RESOLUTION[0][1]
    for smallest, size in SIZE_BY_RESOLUTION:
        if short_side is not None and short_side >= smallest:
            chosen = size
    return chosen


def phases_for(epochs: int, final_size: int) -> list[ResizePhase]:
    """Progressive resizing for `epochs` epochs ending at `final_size`: the first two thirds of the
    epochs at two thirds of the size, or none for small sizes and runs under three epochs."""
    small = round_size(final_size * PHASE_SHARE)
    if final_size < MIN_PHASED_SIZE or epochs < 3 or small >= final_size:
        return []
    return [ResizePhase(epochs=max(1, round(epochs * PHASE_SHARE)), image_size=small)]


def epoch_seconds(size: int, n_train: int, n_val: int, speed: Speed, share: float = 1.0) -> float:
    """Estimated seconds of one epoch: training on `share` of the photos at `size`, then validation."""
    return share * n_train / speed.train[size] + n_val / speed.evaluate


def max_epochs_for(n_train: int, batch_size: int) -> int:
    """The most epochs a budget may plan for `n_train` photos: `MAX_STEPS` optimizer steps' worth,
    between `MAX_EPOCHS` and `MAX_EPOCHS_SMALL_DATA`."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(MAX_EPOCHS, min(MAX_EPOCHS_SMALL_DATA, MAX_STEPS // steps_per_epoch))


def plan_epochs(budget_s: float, final_size: int, n_train: int, n_val: int, speed: Speed,
                max_epochs: int = MAX_EPOCHS) -> tuple[int, list[ResizePhase], float]:
    """The most epochs (up to `max_epochs`, see `max_epochs_for`) whose estimated time fits `budget_s`,
    their phases, and the share of the photos each epoch trains on (1.0 unless `MIN_EPOCHS` do not
    fit whole)."""

    def cost(epochs: int, share: float = 1.0) -> float:
        phases = phases_for(epochs, final_size)
        small = sum(p.epochs for p in phases)
        seconds = sum(epoch_seconds(p.image_size, n_train, n_val, speed, share) for p in phases for _ in range(p.epochs))
        return seconds + (epochs - small) * epoch_seconds(final_size, n_train, n_val, speed, share)

    for epochs in range(max_epochs, MIN_EPOCHS - 1, -1):
        if cost(epochs) <= budget_s:
            return epochs, phases_for(epochs, final_size), 1.0
    epochs = min(MIN_EPOCHS, max_epochs)
    validation = epochs * n_val / speed.evaluate
    training = cost(epochs) - validation  # at share 1.0
    share = max(0.01, min(1.0, (budget_s - validation) / training)) if training > 0 else 1.0
    return epochs, phases_for(epochs, final_size), round(share, 4)


def probe_speed(cfg: RunConfig, classes: list[str], counts: list[int], sizes: list[int], steps: int = 3,
                max_seconds: float = 30.0) -> Speed:
    """Photos per second of a few real training steps (forward, backward, optimizer) at each size,
    and of evaluation at the last size, on a throwaway copy of the run's model and device.

    Each measurement stops after `steps` steps or its share of `max_seconds` (at least one step),
    so a slow machine does not spend its budget measuring itself. The rate is that of the median
    step, so one step stalled by another process does not make the machine look slow; on a CPU,
    other programs' use of the cores during the measurements is described in `Speed.busy` (`_busy`)."""
    started = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    probe_cfg = cfg.model_copy(deep=True)
    probe_cfg.train = probe_cfg.train.model_copy(update={"epochs": 1, "resize_phases": []})
    probe_cfg.data = probe_cfg.data.model_copy(update={"image_size": sizes[-1]})
    with _without_model_line():  # the run's own model says it once, when training starts
        module = PlantClassifierModule(probe_cfg.model_dump(mode="json"), classes, counts)
    gpu = cfg.train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    model = module.model.to(device)  # the module is thrown away after the probe
    optimizer = build_optimizer(model, cfg.optim)
    memory = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    batch = cfg.data.loader_batch_size  # the pass training runs, and the memory it takes
    labels = torch.arange(batch, device=device) % len(classes)

    share = max_seconds / (len(set(sizes)) + 1)  # of the time, per measurement

    cpu_used, wall_used, machine_used = 0.0, 0.0, 0.0

    def timed(fn, size: int, n: int) -> float:
        nonlocal cpu_used, wall_used, machine_used
        x = torch.rand(n, 3, size, size, device=device).contiguous(memory_format=memory)
        fn(x[:4])  # warm-up on a few photos: kernel choice, first allocations
        durations: list[float] = []
        t0, c0, m0 = time.perf_counter(), time.process_time(), machine_cpu_seconds()
        while len(durations) < steps and (not durations or time.perf_counter() - t0 < share):
            step_start = time.perf_counter()
            fn(x)
            if gpu:
                torch.cuda.synchronize(device)
            durations.append(time.perf_counter() - step_start)
        cpu_used += time.process_time() - c0
        wall_used += time.perf_counter() - t0
        m1 = machine_cpu_seconds()
        machine_used += (m1 - m0) if m0 is not None and m1 is not None else float("nan")
        return n / statistics.median(durations)

    def train_step(x: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), labels[: len(x)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step(x: torch.Tensor) -> None:
        model(x)

    model.train()
    train = {size: timed(train_step, size, batch) for size in sorted(set(sizes))}
    model.eval()
    evaluate = timed(eval_step, sizes[-1], min(cfg.data.eval_batch_size, 2 * batch))
    busy = None if gpu else _busy(cpu_used, machine_used, max(wall_used, 1e-9), torch.get_num_threads())
    devices = cfg.train.devices if isinstance(cfg.train.devices, int) and cfg.train.devices > 0 else 1
    scale = devices * cfg.train.num_nodes  # DDP: every process trains its own shard at this speed
    return Speed(train={s: r * scale for s, r in train.items()}, evaluate=evaluate * scale,
                 seconds=time.perf_counter() - started, busy=busy)


def _busy(own_cpu: float, machine_cpu: float, wall: float, threads: int) -> str | None:
    """How other programs held the cores during the probe, or None when they left room for its threads.

    `own_cpu` and `machine_cpu` are the CPU seconds this process and the whole machine used in
    `wall` seconds: other programs used (machine - own) / wall cores on average, and the machine
    is busy when they and `threads` together need more than its cores (by half a core). Without
    /proc/stat (`machine_cpu` NaN), the probe's own threads getting under half a core each is the
    sign. Not the load average: it lags a minute, so a run started right after another command
    (a scan, the previous training) read as busy.
    """
    cores = os.cpu_count() or 1
    if math.isfinite(machine_cpu):
        others = max(0.0, (machine_cpu - own_cpu) / wall)
        if others + min(threads, cores) > cores + 0.5:
            return f"other programs used {others:.1f} of its {cores} cores during the probe"
        return None
    share = own_cpu / wall
    if share < 0.5 * min(threads, cores):
        return f"the probe's {threads} threads got {share:.1f} cores"
    return None


def threads_beside_others(cfg: RunConfig) -> int | None:
    """The threads to train on when the probe found the machine busy: half of torch's (at least
    one), so two trainings on the same cores do not take turns spinning their waiting threads
    (docs/decisions.md, "On a busy machine, half the threads"); None when the user fixed
    `train.threads` or there is nothing to halve."""
    current = torch.get_num_threads()
    if cfg.train.threads or current < 2:
        return None
    return current // 2


@contextlib.contextmanager
def _without_model_line():
    """Leave out the model's lines (plantid.models: the model, its weights) while the probe builds its
    throwaway copy."""
    factory = logging.getLogger("plantid")

    def not_the_model_line(record: logging.LogRecord) -> bool:
        return record.module not in ("factory", "backbone")

    factory.addFilter(not_the_model_line)
    try:
        yield
    finally:
        factory.removeFilter(not_the_model_line)


def plan_run(cfg: RunConfig, manifest: Manifest) -> RunConfig:
    """`cfg` with every 'auto' setting resolved for these photos on this machine, the plan logged
    and noted in ``train.planned``; a config without 'auto' comes back unchanged."""
    auto_size = cfg.data.image_size == "auto"
    auto_phases = cfg.train.resize_phases == "auto"
    auto_epochs = cfg.train.epochs == "auto"
    if not (auto_size or auto_phases or auto_epochs):
        return cfg
    notes = []
    train_rows = manifest.rows_for("train")
    final = cfg.data.image_size
    if auto_size:
        side = photo_short_side([r.path for r in train_rows])
        final = size_for_photos(side)
        notes.append(f"image size {final} px for photos of median short side {side} px")
    epochs = cfg.train.epochs
    limit = cfg.train.limit_train_batches
    phases = cfg.train.resize_phases
    planned_minutes = None
    if auto_epochs:
        assert cfg.train.budget_minutes is not None  # the config validates this
        planned_minutes = cfg.train.budget_minutes * cfg.train.plan_share  # the share a warm start plans for
        n_train, n_val = len(train_rows), len(manifest.rows_for("val"))
        sizes = sorted({p.image_size for p in phases_for(MAX_EPOCHS, final)} | {final}) if auto_phases \
            else sorted({min(p.image_size, final) for p in phases} | {final})
        counts = [manifest.class_counts("train")[c] for c in manifest.classes]
        probe_seconds = PROBE_SHARE * cfg.train.budget_minutes * 60
        speed = probe_speed(cfg, manifest.classes, counts, sizes, max_seconds=probe_seconds)
        threads = threads_beside_others(cfg) if speed.busy else None
        if threads is not None:
            first, busy = speed.seconds, speed.busy
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
            speed = probe_speed(cfg, manifest.classes, counts, sizes, max_seconds=probe_seconds)
            speed.seconds += first
            log.warning("the machine is busy (%s): training on %d thread%s so that this run and the others do not "
                        "take turns spinning (set train.threads=N to choose)",
                        busy, threads, "s" if threads != 1 else "")
            notes.append(f"busy machine: {threads} threads")
        elif speed.busy:
            log.warning("the machine is busy (%s): the epochs are planned for it and re-planned after each one; set "
                        "train.epochs=N to fix them instead", speed.busy)
        short = memory_note(peak_resident_mb(), resident_mb(), memory_available_mb(), cfg.data.micro_batch_size)
        if short:
            log.warning("%s", short)
        budget = planned_minutes * 60 * BUDGET_SHARE - speed.seconds
        cap = max(1, math.ceil(max_epochs_for(n_train, cfg.data.batch_size) * cfg.train.plan_share))
        if auto_phases:
            epochs, phases, share = plan_epochs(budget, final, n_train, n_val, speed, max_epochs=cap)
        else:
            epochs, share = _epochs_for_phases(budget, final, phases, n_train, n_val, speed, max_epochs=cap)
        if share < 1.0 and limit == 1.0:
            limit = train_batches_for_share(share, n_train, cfg.data.loader_batch_size)
        rates = ", ".join(f"{speed.train[s]:.1f} at {s} px" for s in sorted(speed.train))
        share_note = f" x {cfg.train.plan_share:g}" if cfg.train.plan_share < 1.0 else ""
        notes.append(f"budget {cfg.train.budget_minutes:g} min{share_note}: probe {speed.seconds:.0f} s measured training "
                     f"{rates} and validation {speed.evaluate:.1f} photos/s; {n_train} train and {n_val} val photos "
                     f"-> {epochs} epochs" + (f" on {share:.0%} of the photos each" if share < 1.0 else ""))
    elif auto_phases:
        phases = phases_for(epochs, final)
    plan = ", ".join(f"{p.epochs} at {p.image_size} px" for p in phases)
    rest = epochs - sum(p.epochs for p in phases)
    plan = f"{plan + ', ' if plan else ''}{rest} at {final} px"
    notes.append(f"plan: {plan}")
    log.info("plan: %s", plan_in_words(epochs, phases, final, speed if auto_epochs else None, n_train if auto_epochs
                                       else 0, n_val if auto_epochs else 0, share if auto_epochs else 1.0,
                                       cap=cap if auto_epochs else None,
                                       budget_minutes=planned_minutes))
    data = cfg.data.model_copy(update={"image_size": final})
    train = cfg.train.model_copy(update={"epochs": epochs, "resize_phases": phases, "limit_train_batches": limit,
                                         "planned": "; ".join(notes)})
    return cfg.model_copy(update={"data": data, "train": train})


def memory_note(probe_peak_mb: float | None, resident_now_mb: float | None, available_mb: float | None,
                micro_batch_size: int | None) -> str | None:
    """What to do when the training, estimated at `TRAINING_OVER_PROBE` x the probe's peak resident
    memory, needs more than this process holds now plus what the system can still give (None when
    it fits or a number is unknown): a machine that swaps trains many times slower, or stops."""
    if probe_peak_mb is None or resident_now_mb is None or available_mb is None:
        return None
    need, have = TRAINING_OVER_PROBE * probe_peak_mb, resident_now_mb + available_mb
    if need <= have:
        return None
    fix = "close other programs"
    if micro_batch_size is None:
        fix = ("set data.micro_batch_size=16 and PLANTID_SYSTEM_MALLOC=1 to train in about a quarter less "
               f"(docs/benchmarks.md, \"Memory\"), or {fix}")
    return f"this training needs about {need / 1024:.1f} GB of memory and {have / 1024:.1f} GB are free: {fix}"


def planned_from_budget(cfg: RunConfig) -> bool:
    """Whether `plan_run` planned this (resolved) config's epochs from its budget: its note in
    ``train.planned`` starts with "budget N min" (`plan_run` writes it)."""
    return re.search(r"(^|; )budget \S+ min", cfg.train.planned or "") is not None


def plan_in_words(epochs: int, phases: list[ResizePhase], final: int, speed: Speed | None = None, n_train: int = 0,
                  n_val: int = 0, share: float = 1.0, cap: int | None = None, budget_minutes: float | None = None) -> str:
    """The plan as a person says it: "9 epochs: 6 at 128 px, then 3 at 192 px; about 7 minutes"
    (the time only when a probe measured the speed; the share when epochs train on part of the photos).
    When the epoch cap `cap`, not the budget, ended the plan well inside `budget_minutes`, it says so:
    a run that stops early is then a choice, not a misjudged machine."""
    steps = [(p.epochs, min(p.image_size, final)) for p in phases] + [(epochs - sum(p.epochs for p in phases), final)]
    steps = [(n, size) for n, size in steps if n > 0]
    text = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if len(steps) > 1:
        text += ": " + ", then ".join(f"{n} at {size} px" for n, size in steps)
    else:
        text += f" at {final} px"
    if share < 1.0:
        text += f", each on {share:.0%} of the training photos"
    if speed is not None and speed.train:
        seconds = sum(n * epoch_seconds(size, n_train, n_val, speed, share) for n, size in steps
                      if size in speed.train)
        text += f"; about {max(1, round(seconds / 60))} minute{'s' if round(seconds / 60) > 1 else ''}"
        if cap is not None and epochs >= cap and budget_minutes and seconds < 0.9 * BUDGET_SHARE * budget_minutes * 60:
            text += (f" of the {budget_minutes:g} given ({cap} epochs is the most plantid trains {n_train} photos for;"
                     " more did not help)")
    return text


def train_batches_for_share(share: float, n_train: int, batch_size: int) -> int:
    """The training batches per epoch (`train.limit_train_batches` as a count, at least one) that
    train on `share` of the photos: Lightning refuses a fraction that rounds to no batch at all,
    which a tight budget on a busy machine plans for (0.01 of 65 batches)."""
    return max(1, round(share * math.ceil(n_train / batch_size)))


def _epochs_for_phases(budget_s: float, final: int, phases: list[ResizePhase], n_train: int, n_val: int,
                       speed: Speed, max_epochs: int = MAX_EPOCHS) -> tuple[int, float]:
    """Epochs that fit the budget when the recipe fixes its phases (the epochs after them run at
    the final size): at least the phases' own epochs plus one, at most `max_epochs`."""
    phased = [(p.epochs, min(p.image_size, final)) for p in phases]
    fixed = sum(e * epoch_seconds(s, n_train, n_val, speed) for e, s in phased)
    first = sum(e for e, _ in phased)
    per_final = epoch_seconds(final, n_train, n_val, speed)
    epochs = first + max(1, math.floor((budget_s - fixed) / per_final)) if budget_s > fixed else first + 1
    epochs = min(epochs, max(max_epochs, first + 1))
    total = fixed + (epochs - first) * per_final
    share = 1.0 if total <= budget_s else max(0.01, round(budget_s / total, 4))
    return epochs, share

