"""Runs side by side (`plantid compare RUN RUN...`): the settings that differ, the results, and
one figure overlaying their training curves from each run's metrics.csv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantid.config import load_run_config
from plantid.errors import PlantidError
from plantid.figures import save_png
from plantid.records import metrics_by_epoch
from plantid.runfolder import RunFolder
from plantid.track.runs_table import (
    RunRow,
    duration,
    flatten,
    is_run_folder,
    pct,
    read_run,
    show_value,
)

# The panels of the overlay figure: (metrics.csv column, title), per epoch.
CURVES = (
    ("val_acc", "validation accuracy"),
    ("train_acc", "training accuracy"),
    ("val_loss", "validation loss"),
    ("train_loss_epoch", "training loss"),
)


@dataclass
class Comparison:
    """What `compare_runs` found: one name and row per run, the differing settings, the curves."""

    names: list[str]
    rows: list[RunRow]
    settings: list[tuple[str, list[str]]]  # (dotted key, each run's value) where they differ
    results: list[tuple[str, list[str]]]  # (label, each run's value)
    curves: list[dict[str, dict[int, float]]]  # per run: metric -> {epoch: value}
    figure: Path | None = None


def short_names(paths: list[Path]) -> list[str]:
    """The fewest trailing path parts that tell the runs apart: seed1/cpu-default, seed2/cpu-default."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same folder twice


def check_runs(runs: list[Path]) -> None:
    """Refuse, in one line, fewer than two runs or a path that is not a run folder."""
    if len(runs) < 2:
        raise PlantidError("compare needs at least two run folders, e.g. plantid compare runs/a runs/b")
    for run in runs:
        if not run.is_dir():
            raise PlantidError(f"{run}: no such run folder; pass folders written by `plantid train --out`")
        if not is_run_folder(run):
            raise PlantidError(f"{run}: not a plantid run folder (no config.yaml with train_summary.json or a "
                               "checkpoint); pass folders written by `plantid train --out`")


def setting_differences(runs: list[Path]) -> list[tuple[str, list[str]]]:
    """Every setting whose value is not the same in all runs, as (dotted key, each run's value)."""
    flat = [flatten(load_run_config(RunFolder(r).config).model_dump(mode="json")) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for key in keys:
        values = [f.get(key, "-") for f in flat]
        if any(v != values[0] for v in values[1:]):
            out.append((key, [show_value(v) for v in values]))
    return out


def result_rows(rows: list[RunRow]) -> list[tuple[str, list[str]]]:
    """The results of each run, one line per measure."""
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    return [
        ("model", [r.model for r in rows]),
        ("best val", [pct(r.best_val) for r in rows]),
        ("test", [pct(r.test) for r in rows]),
        ("test + views", [f"{pct(r.test_views)} ({r.views})" if r.test_views is not None else "-" for r in rows]),
        ("epochs", [str(r.epochs) if r.epochs is not None else "-" for r in rows]),
        ("training time", [duration(r.train_seconds) for r in rows]),
        ("train img/s", [num(r.images_per_s, ".1f") for r in rows]),
    ]


def overlay_figure(names: list[str], curves: list[dict[str, dict[int, float]]]) -> Any:
    """A 2x2 matplotlib figure: each panel one metric of CURVES against the epoch, one line a run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, title) in zip(axes, CURVES):
        drawn = False
        for name, run_curves in zip(names, curves):
            points = sorted(run_curves.get(metric, {}).items())
            if points:
                ax.plot([e + 1 for e, _ in points], [v for _, v in points], marker="o", markersize=3, label=name)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {metric} in metrics.csv", ha="center", va="center", transform=ax.transAxes)
    return fig


def compare_runs(runs: list[str | Path], figure: str | Path | None = None) -> Comparison:
    """Compare run folders: settings that differ, results, and (when `figure` is a path) the PNG of
    their curves overlaid, written atomically. Refuses non-runs in one line before reading anything."""
    paths = [Path(r) for r in runs]
    check_runs(paths)
    names = short_names(paths)
    rows = [read_run(p, n) for p, n in zip(paths, names)]
    curves = [metrics_by_epoch(RunFolder(p).metrics) for p in paths]
    result = Comparison(names, rows, setting_differences(paths), result_rows(rows), curves)
    if figure is not None:
        result.figure = save_png(overlay_figure(names, curves), figure)
    return result


def comparison_tables(result: Comparison) -> list[Any]:
    """Rich tables of a comparison: the results, then the settings that differ."""
    from rich.table import Table
    from rich.text import Text

    tables = []
    for title, lines in (("results", result.results), ("settings that differ", result.settings)):
        table = Table(title=title, title_justify="left")
        table.add_column("")
        for name in result.names:
            table.add_column(Text(name), overflow="fold", justify="right" if title == "results" else "left")
        for label, values in lines:
            table.add_row(Text(label), *(Text(v) for v in values))
        if not lines:
            table.add_row("(none)", *("" for _ in result.names))
        tables.append(table)
    return tables
