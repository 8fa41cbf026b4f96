"""Figures for evaluation and reports (matplotlib, rendered with Agg, no display needed).

Each ``*_figure`` function returns a matplotlib Figure; `save_png` writes one atomically and
`png_bytes` renders one in memory (for the HTML report). Figures are created without pyplot,
so nothing here touches the global backend or pyplot's figure registry (safe in servers and
notebooks). Class names are drawn literally: mathtext is off, so ``$`` or ``_`` show as they are.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from plantid.data.explore import SPLIT_COLOURS
from plantid.fileio import write_bytes_atomic

DPI = 110
STYLE = {
    "text.parse_math": False,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


def _style():
    return matplotlib.rc_context(STYLE)


def short_label(name: str, width: int = 22) -> str:
    """A class name cut to `width` characters (with an ellipsis) so axes stay readable."""
    name = str(name).replace("\n", " ")
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def png_bytes(fig: Figure, dpi: int = DPI, max_width: int | None = None, palette: bool = False) -> bytes:
    """Render a figure to PNG bytes.

    ``max_width`` lowers the resolution so the image is at most about that many pixels wide (the
    HTML report's column is ~1000 px); ``palette`` stores it as an optimized 256-colour PNG, which
    makes grids of photos several times smaller at a barely visible cost.
    """
    if max_width:
        dpi = max(40, min(dpi, int(max_width / max(fig.get_figwidth(), 1e-3))))
    buf = io.BytesIO()
    with _style():
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    if not palette:
        return buf.getvalue()
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as img:
        quantized = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    out = io.BytesIO()
    quantized.save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Save a figure as PNG atomically (never a half-written file)."""
    return write_bytes_atomic(path, png_bytes(fig, dpi))


# ---- confusion matrix ----------------------------------------------------------------------------


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
    from plantid.evaluate.metrics import row_normalize

    cm = np.asarray(confusion, dtype=np.int64)
    norm = row_normalize(cm)
    k = len(classes)
    labels = [short_label(c) for c in classes]
    annotate = k <= 30
    cell = 0.45 if k <= 10 else 0.36 if k <= 30 else 0.18
    side = max(3.6, cell * k + 1.6)
    label_room = 0.075 * max(len(x) for x in labels)  # inches taken by the longest tick label
    with _style():
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
    from plantid.data.images import BadImageError, load_image

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
    with _style():
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


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_metrics_csv(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """Per-epoch series from a Lightning CSVLogger metrics.csv: {column: {epoch: value}}.

    Rows are sparse (each logs only some columns); for each column the last non-empty value of an
    epoch wins. Rows without an epoch (LearningRateMonitor logs only the step) are given the first
    epoch whose logged steps reach theirs. A missing or unreadable file gives {}.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    last_step: dict[int, float] = {}  # epoch -> largest step logged with it
    for row in rows:
        epoch, step = _float(row.get("epoch")), _float(row.get("step"))
        if epoch is not None and step is not None:
            last_step[int(epoch)] = max(step, last_step.get(int(epoch), step))
    ordered = sorted(last_step.items())

    def epoch_of(row: Mapping[str, Any]) -> int | None:
        epoch = _float(row.get("epoch"))
        if epoch is not None:
            return int(epoch)
        step = _float(row.get("step"))
        if step is None:
            return None
        for e, s in ordered:
            if s >= step:
                return e
        return ordered[-1][0] + 1 if ordered else 0

    series: dict[str, dict[int, float]] = {}
    for row in rows:
        epoch = epoch_of(row)
        if epoch is None:
            continue
        for key, raw in row.items():
            if key in (None, "epoch", "step"):
                continue
            v = _float(raw)
            if v is not None:
                series.setdefault(key, {})[epoch] = v
    return series


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
    s = read_metrics_csv(metrics_csv)
    train_loss = s.get("train_loss_epoch") or s.get("train_loss") or {}
    lr_cols = _top_lr_columns(s)
    if not (train_loss or s.get("val_loss") or s.get("train_acc") or s.get("val_acc") or lr_cols):
        return None
    with _style():
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
