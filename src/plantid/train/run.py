"""Run assembly: a run folder, the Lightning Trainer and its callbacks, fit, resume and test.

A run folder holds everything needed to understand and reuse a run:
config.yaml, split.csv, labels.json, best.ckpt, last.ckpt, metrics.csv, tb/ (TensorBoard),
train_summary.json, and mlflow.json naming the MLflow run it also logs to (plantid.track).
`train_run` creates it; `train_run(..., resume=True)` continues it.
"""

from __future__ import annotations

import glob
import json
import logging
import pickle
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from plantid.config import RunConfig, dump_config, load_run_config
from plantid.data.datamodule import PlantDataModule
from plantid.data.scan import scan_folder, write_scan_json
from plantid.data.split import describe_growth, read_manifest, split_or_grow, write_manifest
from plantid.errors import PlantidError, first_line
from plantid.fileio import atomic_path, write_json_atomic, write_text_atomic
from plantid.models import members_of
from plantid.records import TrainSummary, read_or_warn, read_summary
from plantid.runfolder import RunFolder
from plantid.runlock import started_for_another_device
from plantid.runtime import keep_freed_memory, peak_resident_mb
from plantid.track.mlflow_logger import mlflow_logger
from plantid.track.mlflow_store import log_run_files, tracking_uri
from plantid.train.augment import train_image_size
from plantid.train.budget_guard import BudgetGuard
from plantid.train.divergence import DivergenceGuard
from plantid.train.head_init import ProbeHeadInit
from plantid.train.metrics_log import RunCSVLogger
from plantid.train.module import PlantClassifierModule
from plantid.train.plan import plan_run, planned_from_budget
from plantid.train.progress_line import ProgressLine, epoch_sizes
from plantid.train.throughput import EpochThroughput
from plantid.train.warm_start import load_parent_weights, parent_manifest

log = logging.getLogger("plantid")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O (loading unchanged) with the two things its save lacks.

    - The temporary file lies beside the checkpoint and is renamed onto it (`fileio.atomic_path`),
      an atomic rename wherever the run folder is. Lightning's `_atomic_save` writes its temporary
      in the system temp folder and `shutil.move`s it: when that folder is on another filesystem
      (a tmpfs /tmp) the move copies into best.ckpt in place, so a run killed mid-copy leaves a
      truncated checkpoint; it also holds the whole checkpoint once more in memory first.
    - A write that fails (full disk, permissions) is a one-line PlantidError saying how to go on.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        # The temporary file of a save killed mid-way (SIGKILL, power loss) is never read, but can be
        # as large as the checkpoint: remove it. Saves run one at a time (one writer thread, rank 0).
        for stale in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except (OSError, RuntimeError) as err:
            # torch reports a full disk as a RuntimeError from its zip writer; either way the
            # previous checkpoint is intact, so the run can go on from it.
            run_dir = Path(path).parent
            then = (f"continue with: plantid train --resume {run_dir}" if RunFolder(run_dir).last_checkpoint.exists()
                    else "run the same command again")
            raise PlantidError(f"{path}: could not write the checkpoint ({first_line(err)}); free disk space "
                               f"(or check the folder's permissions), then {then}") from err


@dataclass
class RunResult:
    """What a finished training run reports."""

    run_dir: Path
    best_val_acc: float | None
    test_acc: float | None
    epochs_run: int
    train_seconds: float
    best_checkpoint: Path
    peak_memory_mb: float | None = None  # the process's peak resident memory so far (planning, training, test)


def prepare_manifest(cfg: RunConfig, run_dir: Path) -> Path:
    """Put the split manifest the run trains on into the run folder and return its path.

    Uses `data.manifest` when given; otherwise scans `data.root` and splits it
    deterministically with `data.split_seed`, growing (never reshuffling) a split.csv already in
    the run folder, or else the split of the run it starts from (`train.init_from`).
    """
    target = RunFolder(run_dir).manifest
    if cfg.data.manifest is not None:
        source = Path(cfg.data.manifest)
        if not source.is_file():
            raise PlantidError(f"{source}: manifest not found; create one with `plantid split DATA --out DIR`")
        read_manifest(source)  # validate before copying
        if source.resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return target
    if cfg.data.root is None:
        raise PlantidError("no data: pass --data PATH (an image folder with one subfolder per class)")
    report = scan_folder(Path(cfg.data.root))
    write_scan_json(report, RunFolder(run_dir).scan)
    for bad in report.bad:
        log.warning("skipping %s: %s", bad.path, bad.reason)
    previous = target if target.is_file() else parent_manifest(cfg)
    rows, growth = split_or_grow(report, previous, val=cfg.data.val, test=cfg.data.test, seed=cfg.data.split_seed)
    if growth is not None:
        log.info("%s (from %s)", describe_growth(growth), previous)
    write_manifest(rows, target)
    return target


def _check_labels(run_dir: Path, classes: list[str]) -> None:
    labels_path = RunFolder(run_dir).labels
    if labels_path.exists():
        saved = json.loads(labels_path.read_text(encoding="utf-8"))
        if saved != classes:
            raise PlantidError(
                f"{run_dir}: the run was trained on classes {saved} but the data has {classes}; "
                "use a new --out folder for a data set with other classes"
            )


# Lightning chatter that says nothing actionable about a plantid run.
_QUIET_WARNINGS = (
    r".*exists and is not empty.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*is smaller than the logging interval.*",
    r".*overridden `on_after_batch_transfer`.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*was configured so 100% of the batches.*",
    r".*module\(s\) in eval mode at the start of training.*",  # frozen norm layers, on purpose
    r".*add the following callbacks: \['BudgetGuard'\].*",  # a resumed run keeps its batches, not its budget
)


def quiet_lightning() -> None:
    """Silence Lightning's tips and warnings that do not apply to plantid runs."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_precision(precision: str, accelerator: str) -> str:
    """Turn precision 'auto' into what is fastest here: bf16-mixed on a bf16-capable GPU, else 32-true.

    On CPUs without native bf16 (most laptops; AVX2-only servers) bf16 autocast is emulated and
    many times slower than float32, so 'auto' never picks it there.
    """
    if precision != "auto":
        return precision
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks: list[Any] | None = None,
                  resume_step: int | None = None, epoch_seconds: float | None = None) -> L.Trainer:
    """The Lightning Trainer for a run: checkpoints, early stopping, loggers, progress, devices.

    `callbacks` adds the caller's own Lightning callbacks to plantid's; `resume_step` (the global
    step of the checkpoint a resumed run starts from) keeps metrics.csv's rows logged before it;
    `epoch_seconds` (the budget less the plan's probe) is how long the epochs may take: BudgetGuard
    re-plans the remaining epochs' batches to it at each epoch's end, or stops the run there.
    """
    t = cfg.train
    phases = t.resize_phases if isinstance(t.resize_phases, list) else []
    final = cfg.data.image_size if isinstance(cfg.data.image_size, int) else 0
    sizes = epoch_sizes(int(t.epochs), phases, final)
    callbacks = list(callbacks or []) + [
        # best.ckpt is for inference and testing (resuming uses last.ckpt): without the optimizer's
        # state it is a third of the size for Adam (ConvNeXt-Large: 0.8 instead of 2.2 GB).
        ModelCheckpoint(dirpath=run_dir, filename="best", monitor="val_acc", mode="max", save_weights_only=True,
                        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
        # last.ckpt after every epoch. Lightning 2.6's save_last=True only refreshes it when the
        # monitored metric improves, which left resume starting from a stale epoch.
        ModelCheckpoint(dirpath=run_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
        LearningRateMonitor(logging_interval="epoch"),
        EpochThroughput(),
        DivergenceGuard(),  # before the checkpoints' turn at each validation
    ]
    if cfg.model.head_init == "probe":
        callbacks.append(ProbeHeadInit(cfg.loss.label_smoothing))
    if t.ema_decay > 0:
        # An exponential moving average of the weights: smoother than the last step's weights,
        # and what validation, best.ckpt and every later use of the run see.
        callbacks.append(EMAWeightAveraging(decay=t.ema_decay))
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=t.patience))
    if t.progress:  # one line for the whole run instead of Lightning's bar (plantid.train.progress_line)
        callbacks.append(ProgressLine(sizes))
    guarded = epoch_seconds is not None and bool(final)
    if guarded:
        callbacks.append(BudgetGuard(epoch_seconds, sizes, t.budget_minutes))
    loggers = [
        RunCSVLogger(run_dir, resume_step=resume_step),
        TensorBoardLogger(save_dir=run_dir, name="tb", version="", default_hp_metric=False),
    ]
    # MLflow too, unless track.mlflow=false: opened here, before the training clock starts (a new
    # store takes seconds to create); a store that fails is a warning and the run goes on.
    tracker = mlflow_logger(cfg, run_dir)
    if tracker is not None:
        loggers.append(tracker)
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.epochs,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        # "warn": torch.use_deterministic_algorithms(True, warn_only=True), so an operation with no
        # deterministic kernel (some CUDA backward passes) warns instead of stopping the run;
        # Lightning's True would raise mid-training on a GPU.
        deterministic="warn" if t.deterministic else False,
        limit_train_batches=t.limit_train_batches,
        accumulate_grad_batches=cfg.data.accumulate_batches,
        # the guard's re-plan changes the batches per epoch, which Lightning reads when it loads the data
        reload_dataloaders_every_n_epochs=1 if guarded else 0,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        # Checkpoints are written by a background thread from a copy taken at save time: a
        # ConvNeXt-Large last.ckpt (2.2 GB with Adam's state) otherwise stalled the GPU ~3.5 s an
        # epoch, 40% of the seed recipe's time (docs/benchmarks.md, "GPU").
        plugins=[AsyncCheckpointIO(AtomicCheckpointIO())],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def train_run(cfg: RunConfig | None, run_dir: Path, *, resume: bool = False,
              callbacks: list[Any] | None = None) -> RunResult:
    """Train (or resume) the run in `run_dir`, then test its best checkpoint.

    A fresh run refuses a folder that already holds a checkpoint (pass resume=True to continue
    it). A resumed run uses the folder's own config.yaml and split.csv (`cfg` is ignored); one that
    stopped before its first last.ckpt starts again from them, as its first command would.
    `callbacks` are extra Lightning callbacks (e.g. for custom logging).
    """
    quiet_lightning()
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    last = run.last_checkpoint
    planning = None  # seconds the plan took, when this call planned the epochs from train.budget_minutes
    if resume:
        replanned = None
        if last.exists():
            resume_step, replanned = _check_resumable(last)
        elif run.config.is_file() and run.manifest.is_file():
            # Killed before its first last.ckpt (config.yaml is written after split.csv, both whole):
            # train from the start with the saved settings and split, as the first command would have.
            log.info("%s has no last.ckpt yet: starting it again from its config.yaml and split.csv", run_dir)
            resume, resume_step = False, None
        else:
            raise PlantidError(f"{run_dir}: nothing to resume (no last.ckpt, no config.yaml); start it with "
                               f"`plantid train --data DATA --out {run_dir}`")
        cfg = load_run_config(run.config)
        if replanned is not None:  # the epochs left keep the batches the budget gave them (plantid.train.budget_guard)
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"limit_train_batches": int(replanned)})})
        manifest = run.manifest
    elif started_for_another_device() and run.config.is_file() and run.manifest.is_file():
        # the first process of this multi-device run split and planned it: the same settings and split, no new probe
        resume_step = None
        cfg = load_run_config(run.config)
        manifest = run.manifest
        if planned_from_budget(cfg):
            planning = 0.0  # a budget guard too: it follows the first process's decisions (plantid.train.budget_guard)
    else:
        resume_step = None
        if cfg is None:
            raise PlantidError("no config given: pass a recipe, or resume=True to continue a run")
        if run.has_checkpoint():
            raise PlantidError(f"{run_dir} already holds a trained run: pass --resume to continue it, or choose another --out")
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            manifest = prepare_manifest(cfg, run_dir)
        except PlantidError:
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()  # a failed start leaves no empty run folder behind
            raise
        # 'auto' sizes and epochs become numbers here, so config.yaml says what the run trained with
        budgeted, planning_started = cfg.train.epochs == "auto", time.perf_counter()
        cfg = plan_run(cfg, read_manifest(manifest))
        planning = time.perf_counter() - planning_started if budgeted else None
        write_text_atomic(run.config, dump_config(cfg))

    keep_freed_memory()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for any float32 matmul left outside autocast

    data = PlantDataModule(
        manifest_path=manifest,
        image_size=cfg.data.image_size,
        batch_size=cfg.data.loader_batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.data.cache_dir,
        seed=cfg.train.seed,
        members=cfg.model.members,
    )
    data.setup("fit")
    _check_labels(run_dir, data.classes)
    write_json_atomic(run.labels, data.classes)

    module = PlantClassifierModule(cfg.model_dump(mode="json"), data.classes, data.class_counts)
    if cfg.train.init_from is not None and not resume:
        carried = load_parent_weights(module.model, cfg, data.classes)
        log.info("starting from the weights of %s: %d class(es) kept, %d new, %d dropped", cfg.train.init_from,
                 carried["kept"], carried["new"], carried["dropped"])
    counts = module.model.parameter_counts()  # the model line (plantid.models.factory) logged them already
    if cfg.train.compile:
        # In place (nn.Module.compile): parameter names, and so checkpoints and load_trained, stay
        # as without it. Per member, since an ensemble's training step calls each member itself.
        for member in members_of(module.model):
            member.compile()

    # epochs planned from a budget keep it (probe and epochs, as the plan counts) on a machine slower than planned
    epoch_seconds = 60 * cfg.train.budget_minutes - planning if planning is not None else None
    trainer = build_trainer(cfg, run_dir, callbacks, resume_step=resume_step, epoch_seconds=epoch_seconds)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl+C into a silent exit(1); say what happened
            raise KeyboardInterrupt from None
        raise
    train_seconds = time.perf_counter() - started

    checkpoint = run.checkpoint() or last
    test_acc = None
    if cfg.train.score_test and data.split_size("test"):
        results = trainer.test(module, datamodule=data, ckpt_path=str(checkpoint), verbose=False)
        test_acc = float(results[0]["test_acc"]) if results else None
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    result = RunResult(
        run_dir=run_dir,
        best_val_acc=float(best_score) if best_score is not None else None,
        test_acc=test_acc,
        epochs_run=trainer.current_epoch,
        train_seconds=train_seconds,
        best_checkpoint=checkpoint,
        peak_memory_mb=peak_resident_mb(),
    )
    if trainer.is_global_zero:
        previous = read_or_warn(read_summary, run_dir) if resume else None
        TrainSummary(
            recipe=cfg.recipe,
            model=cfg.model.label,
            members=cfg.model.members,
            image_size=cfg.data.image_size,
            train_image_sizes=[train_image_size(cfg.train.resize_phases, cfg.data.image_size, e)
                               for e in range(trainer.current_epoch)],
            classes=data.classes,
            best_val_acc=result.best_val_acc,
            test_acc=result.test_acc,
            epochs_run=result.epochs_run,
            train_seconds=round(train_seconds + (previous.train_seconds if previous else 0.0), 2),
            train_images_per_s=_images_per_second(trainer),
            world_size=trainer.world_size,
            best_checkpoint=checkpoint.name,
            parameters=counts,
            peak_memory_mb=result.peak_memory_mb,
        ).write(run.summary)
        # config, summary, labels, metrics.csv to the run's MLflow run, if tracked
        log_run_files(run_dir, store=None if resume else tracking_uri(cfg.track, run_dir))
    return result


def _check_resumable(last: Path) -> tuple[int, int | None]:
    """Refuse, before anything in the run folder is touched, a last.ckpt that cannot be resumed:
    truncated, corrupt, pickling Python objects (read with weights_only=True only), or not a
    Lightning training checkpoint. Lightning would otherwise fail half-way, after its loggers
    had already rewritten metrics.csv. Returns the checkpoint's global step and the training
    batches per epoch its budget re-planned (None when it kept the plan's)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error says it all
            try:
                ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                ckpt = torch.load(last, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as exc:  # noqa: BLE001 - every reason is answered the same way
        unsafe = isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower()
        why = "it holds pickled Python objects, not only tensors" if unsafe else "it is truncated or corrupt"
        raise PlantidError(
            f"{last}: cannot resume: {why}; nothing was changed. Train again into a new folder "
            f"(`plantid train --data DATA --out NEW_RUN`); best.ckpt, if present, still serves evaluate and predict"
        ) from None
    missing = [k for k in ("state_dict", "epoch", "optimizer_states", "hyper_parameters") if k not in ckpt]
    if missing:
        raise PlantidError(f"{last}: cannot resume: not a plantid training checkpoint (no {missing[0]}); nothing "
                           "was changed. Train again into a new folder (`plantid train --data DATA --out NEW_RUN`)")
    replanned = (ckpt.get("callbacks") or {}).get(BudgetGuard.__qualname__, {}).get("batches")
    return int(ckpt.get("global_step", 0)), replanned


def _images_per_second(trainer: L.Trainer) -> float | None:
    speed = next((c for c in trainer.callbacks if isinstance(c, EpochThroughput)), None)
    return speed.images_per_second if speed is not None else None

