"""The table of a folder of runs (`plantid runs DIR`): what each run was and how well it did.

A run is any folder under DIR holding config.yaml plus train_summary.json or a checkpoint.
Each row reads only small files: config.yaml (the recipe and what differs from it),
train_summary.json (best val accuracy, test accuracy, epochs, seconds) and eval.json (test
accuracy without and with test-time views, from `plantid evaluate --tta`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantid.config import RunConfig, load_config, load_run_config
from plantid.errors import PlantidError
from plantid.records import read_evaluation, read_or_warn, read_summary
from plantid.runfolder import (
    CONFIG_FILE,
    EXPORT_DIR,
    MLFLOW_DIR,
    SUBMISSION_DIR,
    RunFolder,
)

log = logging.getLogger("plantid")

# Settings that say where things are or how output looks, not what was trained: never "overrides".
NOT_OVERRIDES = ("data.root", "data.manifest", "data.cache_dir", "train.progress", "train.planned", "track.")
SKIPPED_DIRS = {MLFLOW_DIR, EXPORT_DIR, SUBMISSION_DIR, "tb"}


@dataclass
class RunRow:
    """One run folder, summarised."""

    path: Path
    name: str  # the folder, relative to the folder that was scanned
    recipe: str
    recipe_found: bool  # False: a recipe file no longer at hand; overrides are against plantid's defaults
    overrides: list[str] = field(default_factory=list)  # 'key=value' where the run differs from its recipe
    dataset: str = ""
    model: str = ""
    image_size: int | str | None = None
    classes: int | None = None
    epochs: int | None = None
    best_val: float | None = None
    test: float | None = None
    test_views: float | None = None  # test accuracy with test-time views (eval.json's "tta")
    views: int | None = None
    train_seconds: float | None = None
    images_per_s: float | None = None
    finished: bool = False  # train_summary.json written
    mtime: float = 0.0


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {'train': {'epochs': 3}} -> {'train.epochs': 3} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def show_value(value: Any) -> str:
    """A setting's value as an override would spell it (JSON for lists and mappings)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return "null" if value is None else str(value)


def _planned(key: str, recipe_value: Any, planned_note: str | None) -> bool:
    """True for a value `plantid.train.plan` chose because the recipe left it to the plan ('auto')."""
    if not planned_note:
        return False
    if recipe_value == "auto":
        return True
    # plan_run trains each epoch on a share of the photos when even 3 epochs do not fit the budget
    return key == "train.limit_train_batches" and recipe_value == 1.0 and "of the photos each" in planned_note


def recipe_differences(cfg: RunConfig) -> tuple[list[str], bool]:
    """The run's settings that differ from its recipe as 'key=value' strings, and whether the
    recipe was found (when not, e.g. a custom YAML file elsewhere, the run is compared with plantid's
    defaults). Paths, display settings and values the run planned itself are left out."""
    try:
        recipe = load_config(cfg.recipe)
        found = True
    except PlantidError:
        recipe, found = RunConfig(), False
    ours, theirs = flatten(cfg.model_dump(mode="json")), flatten(recipe.model_dump(mode="json"))
    note = cfg.train.planned
    out = []
    for key, value in ours.items():
        if key == "recipe" or key.startswith(NOT_OVERRIDES):
            continue
        if value != theirs.get(key) and not _planned(key, theirs.get(key), note):
            out.append(f"{key}={show_value(value)}")
    return out, found


def _dataset(cfg: RunConfig) -> str:
    if cfg.data.root is not None:
        return Path(cfg.data.root).name
    if cfg.data.manifest is not None:
        manifest = Path(cfg.data.manifest)
        return f"{manifest.parent.name}/{manifest.name}" if manifest.parent.name else manifest.name
    return ""


def read_run(run_dir: Path, name: str | None = None) -> RunRow:
    """Summarise one run folder (config.yaml must be there; the other files are optional)."""
    run = RunFolder(run_dir)
    cfg = load_run_config(run.config)
    overrides, found = recipe_differences(cfg)
    summary = read_or_warn(read_summary, run_dir)
    evaluation = read_or_warn(read_evaluation, run_dir)
    tta = evaluation.tta if evaluation else None
    test = evaluation.metrics.accuracy if evaluation else summary.test_acc if summary else None
    return RunRow(
        path=run_dir,
        name=name or run_dir.name,
        recipe=cfg.recipe,
        recipe_found=found,
        overrides=overrides,
        dataset=_dataset(cfg),
        model=(summary.model if summary else None) or cfg.model.label,
        image_size=cfg.data.image_size,
        classes=len(summary.classes) if summary and summary.classes is not None else None,
        epochs=summary.epochs_run if summary else None,
        best_val=summary.best_val_acc if summary else None,
        test=test,
        test_views=tta.metrics.accuracy if tta else None,
        views=len(tta.views) if tta else None,
        train_seconds=summary.train_seconds if summary else None,
        images_per_s=summary.train_images_per_s if summary else None,
        finished=run.summary.is_file(),
        mtime=(run.summary if run.summary.is_file() else run.config).stat().st_mtime,
    )


def is_run_folder(path: Path) -> bool:
    """A folder with config.yaml and something training wrote: train_summary.json or a checkpoint."""
    run = RunFolder(path)
    return run.config.is_file() and (run.summary.is_file() or run.has_checkpoint())


def find_runs(folder: str | Path) -> list[RunRow]:
    """Every run folder under `folder` (the folder itself, if it is one), newest first.

    Looks through subfolders at any depth, except MLflow stores, TensorBoard logs and exports.
    A missing folder is a one-line PlantidError; a folder without runs gives an empty list.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PlantidError(f"{folder}: no such folder; pass the folder your runs are in "
                           "(the parent of `plantid train --out` folders, e.g. runs/)")
    rows = []
    for config in sorted(folder.rglob(CONFIG_FILE)):
        run_dir = config.parent
        if SKIPPED_DIRS & set(run_dir.relative_to(folder).parts) or not is_run_folder(run_dir):
            continue
        name = run_dir.relative_to(folder).as_posix() if run_dir != folder else run_dir.name
        try:
            rows.append(read_run(run_dir, name))
        except PlantidError as err:  # e.g. a config.yaml with a setting this version no longer has
            log.warning("not listed: %s", err)
    return sorted(rows, key=lambda r: r.mtime, reverse=True)


def pct(x: float | None) -> str:
    """An accuracy as a percentage with two decimals, or '-'."""
    return "-" if x is None else f"{100 * x:.2f}%"


def duration(seconds: float | None) -> str:
    """Seconds as '42 s', '7.5 min' or '2.3 h'."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def runs_table(rows: list[RunRow], title: str = "") -> Any:
    """A rich Table of the rows, in their order (newest first from `find_runs`): numbers never
    wrap; the overrides, one a line, take the width that is left."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("run", overflow="fold")
    table.add_column("recipe", overflow="fold")
    table.add_column("overrides", overflow="fold", ratio=1, min_width=12)
    table.add_column("data", overflow="fold")
    for column in ("px", "epochs", "best val", "test", "+ views", "time"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        views = f"{pct(r.test_views)} ({r.views})" if r.test_views is not None else "-"
        recipe = r.recipe if r.recipe_found else f"{r.recipe}*"
        data = f"{r.dataset} ({r.classes})" if r.classes else r.dataset
        table.add_row(*(Text(str(v)) for v in (
            r.name, recipe, "\n".join(r.overrides) or "-", data or "-", r.image_size or "-",
            r.epochs if r.epochs is not None else ("-" if r.finished else "unfinished"),
            pct(r.best_val), pct(r.test), views, duration(r.train_seconds))))
    notes = ["+ views: test accuracy with test-time views (how many), from `plantid evaluate --tta`"]
    if any(not r.recipe_found for r in rows):
        notes.append("* recipe not found here: overrides are against plantid's defaults")
    table.caption = Text("\n".join(notes))
    table.caption_justify = "left"
    return table
