"""`plantid tune`: an Optuna search over a recipe's settings, selected on validation accuracy only.

One study per tune folder (`plantid.tune.folder`), stored in SQLite so that the same command run
again continues it: finished trials are kept, and a trial cut short by a kill (left RUNNING in
the database) or by Ctrl+C is marked failed and queued again with its parameters, continuing its
own run folder from its last.ckpt. `--trials N` is the number of finished (complete or pruned)
trials the study should end with, counting those of earlier invocations.

Each trial is a real `train_run` on a fixed split whose test photos were removed: the search
never sees them. A TPE sampler proposes the parameters; a median pruner, fed each epoch's val
accuracy (`PruneOnValAcc`), stops trials that fall behind. The best trial is written as a recipe
(`best.yaml`) and the search drawn (`history.png`, `importances.png`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from plantid.config import RunConfig, dump_config, load_config
from plantid.data.split import read_manifest, write_manifest
from plantid.errors import PlantidError
from plantid.fileio import write_text_atomic
from plantid.runfolder import RunFolder
from plantid.train.run import prepare_manifest, train_run
from plantid.tune.folder import STUDY_NAME, TuneFolder
from plantid.tune.plots import save_study_plots
from plantid.tune.pruning import PruneOnValAcc
from plantid.tune.search_space import (
    apply_params,
    check_space,
    load_space,
    suggest,
    without_fixed,
)

log = logging.getLogger("plantid")

# The pruner waits for 2 finished trials and never judges the first epoch, which trains at the
# small size of progressive resizing (and from a fresh head) in most recipes.
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_EPOCHS = 1
MAX_RETRIES = 2  # a trial killed this many times is left failed (it may be what kills the machine)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneResult:
    """What a `plantid tune` invocation leaves: the study's counts, its best trial and files."""

    folder: TuneFolder
    ran: int  # trials started by this invocation
    complete: int
    pruned: int
    failed: int
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    recipe: Path | None = None
    plots: list[Path] = field(default_factory=list)
    skipped_plots: list[str] = field(default_factory=list)  # why a figure was not drawn


@contextlib.contextmanager
def hold_lock(folder: TuneFolder) -> Iterator[None]:
    """One `plantid tune` per folder at a time. The kernel drops the lock when its holder dies,
    so a trial still RUNNING in the study once the lock is ours belongs to a dead process."""
    folder.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PlantidError(f"{folder.root}: another `plantid tune` is working in this folder; wait for it "
                               "or choose another --out") from None
        yield
    finally:
        os.close(fd)


def _startup_trials(trials: int) -> int:
    """TPE's random start: Optuna's 10, but at most half of a small study (at least 2)."""
    return max(2, min(10, trials // 2))


def open_study(folder: TuneFolder, seed: int = 0, trials: int = 20) -> optuna.Study:
    """Create or load the folder's study: TPE (seeded) + median pruner, maximizing val accuracy.

    The sampler's seed is `seed` plus the number of trials already stored, so a resumed search
    draws new parameters instead of replaying the first invocation's random start.
    """
    folder.root.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(folder.storage_url)
    try:
        existing = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
    except KeyError:
        existing = 0
    sampler = optuna.samplers.TPESampler(seed=seed + existing, n_startup_trials=_startup_trials(trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)
    return optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials a dead process left RUNNING as failed, and queue every interrupted trial
    (killed, or stopped by Ctrl+C: failed without an error of its own) again with its parameters,
    intermediate values and run folder (Optuna's RetryHeartbeatStaleTrialCallback). Call it while
    holding the folder's lock. Returns the numbers of the trials queued again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)
    queued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs and trial.number not in retried:
            before = len(study.get_trials(deepcopy=False))
            retry(study, trial)
            if len(study.get_trials(deepcopy=False)) > before:
                queued.append(trial.number)
    return queued


def _identity(recipe: str, overrides: list[str], space: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": recipe, "overrides": list(overrides),
            "space": {k: distribution_to_json(d) for k, d in space.items()}}


def check_same_search(study: optuna.Study, identity: dict[str, Any], folder: TuneFolder) -> None:
    """Record what the study searches on its first invocation; refuse a later one that differs."""
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", identity)
        return
    if stored != identity:
        what = next(k for k in ("recipe", "overrides", "space") if stored.get(k) != identity[k])
        raise PlantidError(f"{folder.root} holds a study with another {what} ({stored.get(what)!r}); run it again "
                           "with the same --recipe, --space and settings, or choose another --out")


def trial_manifest(cfg: RunConfig, folder: TuneFolder) -> Path:
    """The split every trial uses, made once: the data's split.csv less its test photos."""
    if folder.trials_manifest.is_file():
        return folder.trials_manifest
    full = RunFolder(folder.root).manifest
    if not full.is_file():
        prepare_manifest(cfg, folder.root)
    rows = read_manifest(full).rows
    if not any(r.split == "val" for r in rows):
        raise PlantidError(f"{full}: the split has no val photos, and trials are selected on val accuracy; "
                           "set data.val above 0 (e.g. data.val=0.15)")
    write_manifest([r for r in rows if r.split != "test"], folder.trials_manifest)
    return folder.trials_manifest


def trial_budget(cfg: RunConfig, budget_minutes: float | None, trials: int) -> dict[str, Any]:
    """Settings that keep each trial within its share of the study's budget (none without one)."""
    if budget_minutes is None:
        return {}
    share = budget_minutes / trials
    settings: dict[str, Any] = {"train.max_minutes": min(share, cfg.train.max_minutes or share)}
    if cfg.train.epochs == "auto":
        settings["train.budget_minutes"] = share
    return settings


def _objective(base: RunConfig, space: dict[str, Any], folder: TuneFolder, manifest: Path,
               budget: dict[str, Any]):
    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        run_dir = Path(trial.user_attrs.get("run_dir") or folder.trial_dir(trial.number).absolute())
        trial.set_user_attr("run_dir", str(run_dir))
        callbacks = [PruneOnValAcc(trial)]
        try:
            if RunFolder(run_dir).last_checkpoint.is_file():
                log.info("trial %d continues %s", trial.number, run_dir)
                result = train_run(None, run_dir, resume=True, callbacks=callbacks)
            else:
                cfg = apply_params(base, {**params, "data.manifest": str(manifest), **budget},
                                   source=f"trial {trial.number}")
                result = train_run(cfg, run_dir, callbacks=callbacks)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # an error of the trial's own (Ctrl+C and kills are not): never retried
            trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        if result.best_val_acc is None:
            raise PlantidError(f"{run_dir}: the trial has no val accuracy to select on")
        trial.set_user_attr("epochs", result.epochs_run)
        trial.set_user_attr("train_seconds", round(result.train_seconds, 1))
        return result.best_val_acc

    return objective


def write_best_recipe(base: RunConfig, study: optuna.Study, folder: TuneFolder, command: str) -> Path:
    """The best trial as a recipe: the tuned recipe and settings with its parameters applied.

    A trial's share of the budget is not carried over; `plantid train --recipe OUT/best.yaml`
    trains with the recipe's own budget (or epochs) on the same data and split seed.
    """
    best = study.best_trial
    cfg = apply_params(base, best.params, source=f"best trial {best.number}")
    cfg = cfg.model_copy(update={"recipe": f"{base.recipe}-tuned"})
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    header = (f"# Written by `{command}`: trial {best.number} of {folder.study_db}, the best by val accuracy\n"
              f"# ({best.value:.4f}; test photos were never used). Tuned: {params}.\n"
              f"# Train it: plantid train --recipe {folder.best_recipe} --out runs/{cfg.recipe}\n")
    return write_text_atomic(folder.best_recipe, header + dump_config(cfg))


def tune(data: Path, recipe: str, trials: int, out: Path, *, overrides: list[str] | None = None,
         space: str = "default", budget_minutes: float | None = None, seed: int = 0,
         command: str = "plantid tune") -> TuneResult:
    """Run (or continue) the search in `out` until it holds `trials` finished trials or the
    budget (this invocation's wall time, in minutes) runs out; write the best recipe and plots."""
    if trials < 1:
        raise PlantidError(f"--trials {trials}: a study needs at least 1 trial (e.g. --trials 20)")
    if budget_minutes is not None and budget_minutes <= 0:
        raise PlantidError(f"--budget-minutes {budget_minutes:g}: give a positive number of minutes")
    data = Path(data).expanduser()
    if not data.exists():
        raise PlantidError(f"{data}: no such folder or file; pass an image folder (one subfolder per species) "
                           "or a split.csv written by `plantid split`")
    user = list(overrides or [])
    data_key = "data.manifest" if data.suffix == ".csv" else "data.root"
    settings = [f"{data_key}={data.resolve()}", *user]
    base = load_config(recipe, settings)
    distributions = without_fixed(load_space(space), user)
    if not distributions:
        raise PlantidError(f"search space {space}: every key is fixed by the command line; nothing to search")
    check_space(distributions, base, source=f"search space {space}")

    folder = TuneFolder(Path(out))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with hold_lock(folder):
        study = open_study(folder, seed=seed, trials=trials)
        check_same_search(study, _identity(recipe, settings, distributions), folder)
        queued = recover_interrupted(study)
        if queued:
            log.info("trials %s were interrupted: queued again", ", ".join(map(str, queued)))
        manifest = trial_manifest(base, folder)
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        remaining = max(0, trials - done)
        objective = _objective(base, distributions, folder, manifest, trial_budget(base, budget_minutes, trials))
        ran: list[int] = []
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=budget_minutes * 60 if budget_minutes else None,
                           gc_after_trial=True, callbacks=[_log_trial, lambda _, trial: ran.append(trial.number)])
        result = _summarize(study, folder, ran=len(ran))
        if result.complete:
            result.recipe = write_best_recipe(base, study, folder, command)
            result.plots, result.skipped_plots = save_study_plots(study, folder)
    return result


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = f"val acc {trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
    log.info("trial %d %s: %s (%s)", trial.number, trial.state.name.lower(), value,
             ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()))


def _summarize(study: optuna.Study, folder: TuneFolder, ran: int) -> TuneResult:
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    result = TuneResult(folder=folder, ran=ran, complete=counts[TrialState.COMPLETE],
                        pruned=counts[TrialState.PRUNED], failed=counts[TrialState.FAIL])
    if result.complete:
        best = study.best_trial
        result.best_number, result.best_value, result.best_params = best.number, best.value, dict(best.params)
    return result
