"""Figures of an evaluation and of the report: confusion matrix, error grid, training curves,
reliability diagram and unknown-photo scores (matplotlib, rendered with Agg, no display needed).

Each ``*_figure`` function returns a matplotlib Figure in the house style; `plantid.figures`
saves one atomically (`save_png`) or renders it in memory for the HTML report (`png_bytes`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from plantid.data.images import BadImageError, load_image
from plantid.figures import DPI, SPLIT_COLOURS, figure_style, short_label
from plantid.records import metrics_by_epoch

# ---- confusion matrix ----------------------------------------------------------------------------


def row_normalize(confusion: Any) -> np.ndarray:
    """Each row divided by its sum (recall on the diagonal); all-zero rows stay zero."""
    cm = np.asarray(confusion, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def _draw_matrix(ax, values: np.ndarray, labels: list[str], fmt: Callable[[float], str], title: str,
                 vmax: float, annotate: bool, cmap: str) -> Any:
    k = len(labels)
    im = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-9), interpolation="nearest")
    ax.set_title(title, pad=10)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center", rotation_mode="anchor")
    ax.set_yticklabels(labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    if annotate:
        size = 10 if k <= 6 else 9 if k <= 10 else 7 if k <= 20 else 5.5
        threshold = 0.55 * vmax
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=size,
                        color="white" if v > threshold else "#222222")
    return im


def confusion_figure(confusion: Any, classes: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Counts and row-normalized confusion matrices side by side (rows: true, columns: predicted)."""
    cm = np.asarray(confusion, dtype=np.int64)
    norm = row_normalize(cm)
    k = len(classes)
    labels = [short_label(c) for c in classes]
    annotate = k <= 30
    cell = 0.45 if k <= 10 else 0.36 if k <= 30 else 0.18
    side = max(3.6, cell * k + 1.6)
    label_room = 0.075 * max(len(x) for x in labels)  # inches taken by the longest tick label
    with figure_style():
        fig = Figure(figsize=(2 * (side + label_room) + 1.8, side + label_room * 0.7 + 0.9), dpi=DPI,
                     layout="constrained")
        axes = fig.subplots(1, 2)
        im0 = _draw_matrix(axes[0], cm, labels, lambda v: f"{int(v)}", "Counts", float(cm.max(initial=0)), annotate, "Blues")
        im1 = _draw_matrix(axes[1], norm, labels, lambda v: f"{v:.2f}" if v else "0", "Row-normalized (recall on the diagonal)",
                           1.0, annotate, "Blues")
        bar = fig.colorbar(im0, ax=axes[0], fraction=0.046, pad=0.03, shrink=0.85)
        bar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        fig.colorbar(im1, ax=axes[1], fraction=0.046, pad=0.03, shrink=0.85)
        fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


# ---- error grid ------------------------------------------------------------------------------------


def _load_thumbnail(path: str, size: int) -> np.ndarray | None:
    try:
        return load_image(path, size)
    except (BadImageError, OSError):
        return None


def error_grid_figure(errors: Sequence[Mapping[str, Any]], title: str = "Most confident mistakes",
                      limit: int = 24, columns: int = 6, thumb: int = 160,
                      loader: Callable[[str, int], np.ndarray | None] | None = None) -> Figure:
    """A grid of misclassified photos (up to `limit`), each titled with true, predicted and confidence.

    `errors` are dicts with path, true, pred and confidence (as in eval.json "worst"). Photos that
    can no longer be read are drawn as a grey tile. With no errors, a clean "no errors" figure.
    """
    errors = list(errors)[:limit]
    loader = loader or _load_thumbnail
    with figure_style():
        if not errors:
            fig = Figure(figsize=(6.4, 2.2), dpi=DPI)
            fig.text(0.5, 0.62, "No misclassified images", ha="center", va="center", fontsize=16,
                     fontweight="bold", color="#2E7D32")
            fig.text(0.5, 0.34, "every evaluated photo was predicted correctly", ha="center", va="center",
                     fontsize=10, color="#555555")
            return fig
        cols = min(columns, len(errors))
        rows = math.ceil(len(errors) / cols)
        # constrained layout keeps each photo's file name clear of the next row's captions
        fig = Figure(figsize=(2.25 * cols, 2.75 * rows + 0.5), dpi=DPI, layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(errors):]:
            ax.axis("off")
        for ax, err in zip(axes.flat, errors):
            img = loader(str(err.get("path", "")), thumb)
            if img is None:
                ax.imshow(np.full((thumb, thumb, 3), 220, dtype=np.uint8))
                ax.text(thumb / 2, thumb / 2, "unreadable", ha="center", va="center", color="#666666", fontsize=9)
            else:
                ax.imshow(img)
            ax.set_title(
                f"true: {short_label(err.get('true', '?'), 18)}\npred: {short_label(err.get('pred', '?'), 18)}"
                f" ({float(err.get('confidence', 0.0)):.0%})",
                fontsize=8.5, fontweight="normal", loc="center", color="#222222",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_xlabel(short_label(Path(str(err.get("path", ""))).name, 26), fontsize=7, color="#777777", labelpad=2)
        fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


# ---- training curves ------------------------------------------------------------------------------


def _plot_series(ax, series: Mapping[int, float], label: str, colour: str, marker: str = "o") -> bool:
    if not series:
        return False
    epochs = sorted(series)
    x = [e + 1 for e in epochs]  # epochs shown 1-based
    ax.plot(x, [series[e] for e in epochs], label=label, color=colour, marker=marker if len(x) <= 40 else None,
            markersize=4, linewidth=1.8)
    return True


def _top_lr_columns(series: Mapping[str, Mapping[int, float]]) -> list[str]:
    """The ``lr-*`` columns to plot: one per optimizer.

    With per-block rates (``optim.layer_decay``) LearningRateMonitor logs one ``lr-Opt/pgN`` column
    per param group; only the fastest group (the classifier's rate) is drawn, the others are that
    curve scaled down.
    """
    fastest: dict[str, str] = {}
    for col in sorted(k for k in series if k.startswith("lr-")):
        optimizer = col.split("/pg")[0]
        best = fastest.get(optimizer)
        if best is None or max(series[col].values(), default=0.0) > max(series[best].values(), default=0.0):
            fastest[optimizer] = col
    return sorted(fastest.values())


def _mark_size_phases(ax, size_phases: Sequence[tuple[int, int]], final_size: int | None) -> None:
    """Shade the progressive-resizing epochs, so a val dip there reads as 'trained smaller', not a bug."""
    if not size_phases:
        return
    start = 0
    labels = []  # (first epoch, px) of each phase, the final size included
    for epochs, size in size_phases:
        ax.axvspan(start + 0.5, start + epochs + 0.5, color="#f1ead8", zorder=0, linewidth=0)
        labels.append((start, size))
        start += epochs
    if final_size:
        labels.append((start, final_size))
    for first, size in labels:
        ax.text(first + 0.6, 0.02, f"{size} px", transform=ax.get_xaxis_transform(), fontsize=8, color="#8a7a4f")


def training_curves_figure(metrics_csv: str | os.PathLike, title: str = "Training curves",
                           size_phases: Sequence[tuple[int, int]] = (), final_size: int | None = None) -> Figure | None:
    """Loss (train/val), accuracy (train/val) and learning rate per epoch; None without any data.

    Works with whatever columns are there: ``train_loss_epoch`` (or ``train_loss``), ``val_loss``,
    ``train_acc``, ``val_acc`` and any ``lr-*`` columns from LearningRateMonitor.
    `size_phases` ((epochs, px), ...) are the run's progressive-resizing phases, shaded on the
    loss and accuracy plots; the epochs after them trained at `final_size`.
    """
    s = metrics_by_epoch(metrics_csv)
    train_loss = s.get("train_loss_epoch") or s.get("train_loss") or {}
    lr_cols = _top_lr_columns(s)
    if not (train_loss or s.get("val_loss") or s.get("train_acc") or s.get("val_acc") or lr_cols):
        return None
    with figure_style():
        fig = Figure(figsize=(13.5, 3.8), dpi=DPI)
        axes = fig.subplots(1, 3)
        ax = axes[0]
        drawn = _plot_series(ax, train_loss, "train", SPLIT_COLOURS["train"])
        drawn |= _plot_series(ax, s.get("val_loss", {}), "val", SPLIT_COLOURS["val"], "s")
        _finish_axis(ax, "Loss", "loss", drawn)
        ax = axes[1]
        drawn = _plot_series(ax, s.get("train_acc", {}), "train", SPLIT_COLOURS["train"])
        drawn |= _plot_series(ax, s.get("val_acc", {}), "val", SPLIT_COLOURS["val"], "s")
        val_acc = s.get("val_acc", {})
        if val_acc:
            best = max(sorted(val_acc), key=lambda ep: val_acc[ep])  # first epoch with the best value
            ax.axvline(best + 1, color="#999999", linestyle=":", linewidth=1.2)
            right = best > (min(val_acc) + max(val_acc)) / 2
            ax.annotate(f"best val {val_acc[best]:.1%}", (best + 1, val_acc[best]), xytext=(-5 if right else 5, -14),
                        textcoords="offset points", fontsize=8, color="#555555", ha="right" if right else "left")
        if drawn:
            ax.set_ylim(max(0.0, ax.get_ylim()[0]), min(1.02, max(ax.get_ylim()[1], 0.05)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        _finish_axis(ax, "Accuracy", "accuracy", drawn)
        for ax in axes[:2]:
            _mark_size_phases(ax, size_phases, final_size)
        ax = axes[2]
        palette = ["#6F4E7C", "#B279A2", "#9D755D", "#E45756"]
        drawn = False
        for i, col in enumerate(lr_cols):
            drawn |= _plot_series(ax, s[col], col[3:] if len(lr_cols) > 1 else "learning rate", palette[i % len(palette)])
        if drawn:
            values = [v for col in lr_cols for v in s[col].values()]
            if min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
                # the default log labels are mathtext ("$\\mathdefault{10^{-3}}$"), which STYLE turns off
                ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter())
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            else:
                ax.set_ylim(0, max(values) * 1.15 or 1.0)
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=False)
        per_group = any("/pg" in col for col in lr_cols)
        _finish_axis(ax, "Learning rate (fastest group)" if per_group else "Learning rate", "learning rate", drawn,
                     legend=len(lr_cols) > 1)
        fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


def _finish_axis(ax, title: str, ylabel: str, drawn: bool, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if not drawn:
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="#888888")
        ax.set_xticks([])
        ax.set_yticks([])
    elif legend:
        ax.legend(frameon=False)


# ---- calibration and unknown photos --------------------------------------------------------------


def reliability_figure(section: dict[str, Any], title: str = "Reliability") -> Figure:
    """Accuracy against confidence per bin, before and after the temperature, with the diagonal."""
    cal = section["calibration"]
    with figure_style():
        fig = Figure(figsize=(5.6, 4.4))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="perfect calibration")
        for key, colour, label in (("bins_before", "#E45756", f"softmax (ECE {100 * cal['ece_before']:.1f}%)"),
                                   ("bins_after", "#4C78A8", f"T = {section['temperature']:.2f} (ECE {100 * cal['ece_after']:.1f}%)")):
            bins = [b for b in cal[key] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(loc="upper left", frameon=False)
    return fig


def ood_scores_figure(raw: dict[str, np.ndarray], threshold: float, split_name: str,
                      title: str = "Not one of the species: OOD scores") -> Figure:
    """Histograms of the score for the evaluated photos and each foreign folder, with the threshold."""
    colours = ["#54A24B", "#E45756", "#F58518", "#B279A2", "#72B7B2", "#9D755D"]
    finite = np.concatenate([v[np.isfinite(v)] for v in raw.values() if len(v)] + [np.array([threshold])])
    low, high = float(finite.min()), float(finite.max())
    log_x = low > 0 and high / max(low, 1e-12) > 100
    edges = np.geomspace(low, high, 40) if log_x else np.linspace(low, high, 40)
    with figure_style():
        fig = Figure(figsize=(6.4, 3.8))
        ax = fig.add_subplot()
        for i, (name, scores) in enumerate(raw.items()):
            label = f"{split_name} photos" if name == "split" else name
            if len(scores):
                ax.hist(scores, bins=edges, alpha=0.55, color=colours[i % len(colours)], label=f"{label} ({len(scores)})",
                        density=True)
        ax.axvline(threshold, color="#333333", lw=1.5, ls="--", label="threshold (above: unknown)")
        if log_x:
            ax.set_xscale("log")  # mathtext is off in plots' style: plain tick labels
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("OOD score (higher = less like the training photos)")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(frameon=False, fontsize=8)
    return fig
