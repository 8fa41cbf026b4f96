"""Look at a dataset before training: class balance, sample photos, sizes and colour modes.

`explore` accepts an image folder (scanned with `scan_folder`) or a split.csv manifest and writes

* ``class_distribution.png``: photos per class, count on each bar, rare classes (fewer than half
  the median count) highlighted; stacked train/val/test bars for a manifest;
* ``samples.png``: one row per class (name on the left), ``samples_per_class`` photos each, chosen
  deterministically (evenly spaced over the class's photos sorted by path);
* ``sizes.png``: stored width x height of every photo (marker area grows with the count) and the
  colour modes found;

and prints the per-class table in the terminal. Figures are drawn with matplotlib's Agg canvas
(no pyplot, no global backend change) and written atomically.
"""

from __future__ import annotations

import textwrap

from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from plantid.data.images import BadImageError, load_image
from plantid.data.scan import ScanReport, default_workers, print_scan_table, scan_folder
from plantid.data.split import SPLITS, Manifest, read_manifest
from plantid.errors import PlantidError
from plantid.figures import SPLIT_COLOURS, save_png

RARE_COLOUR = "#c44e52"
NORMAL_COLOUR = "#4c72b0"
THUMB = 96
EXPLORE_DPI = 100


@dataclass
class _Item:
    path: str
    label: str
    split: str | None
    width: int | None = None
    height: int | None = None
    mode: str | None = None


def _items_from_report(report: ScanReport) -> list[_Item]:
    return [_Item(e.path, e.label, e.given_split, e.width, e.height, e.mode) for e in report.entries]


def _header(path: str) -> tuple[int | None, int | None, str | None]:
    try:
        with Image.open(path) as img:
            return img.size[0], img.size[1], img.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, None, None


def _items_from_manifest(manifest: Manifest) -> list[_Item]:
    items = [_Item(r.path, r.label, r.split) for r in manifest.rows]
    with ThreadPoolExecutor(max_workers=min(default_workers(), max(1, len(items)))) as pool:
        for item, (w, h, mode) in zip(items, pool.map(_header, [i.path for i in items])):
            item.width, item.height, item.mode = w, h, mode
    return items


def class_distribution_figure(counts: Mapping[str | None, Mapping[str, int]], title: str = "Photos per class",
                              classes: Sequence[str] | None = None):
    """The class-distribution chart, drawn the same way by `plantid explore` and the run report:
    one bar per class with its count, stacked by split when `counts` is {split: {class: n}}
    ({None: {class: n}} for an unsplit folder), rare classes (under half the median) marked, so
    an imbalance like the leaf set's two small species is seen at a glance."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if classes is None:
        classes = list(dict.fromkeys(c for per in counts.values() for c in per))
    splits = [s for s in SPLITS if s in counts]
    by_split = bool(splits)
    counts_arr = np.array([sum(per.get(c, 0) for per in counts.values()) for c in classes])
    median = float(np.median(counts_arr)) if len(counts_arr) else 0.0
    rare = counts_arr < 0.5 * median
    width = min(max(6.0, 0.6 * len(classes) + 2.0), 40.0)
    fig = Figure(figsize=(width, 4.8), layout="constrained")  # room for turned labels and the outside legend
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(classes))
    handles = []
    if by_split:
        bottom = np.zeros(len(classes))
        for s in splits:
            vals = np.array([counts[s].get(c, 0) for c in classes])
            ax.bar(x, vals, bottom=bottom, color=SPLIT_COLOURS[s], label=s, edgecolor="white", linewidth=0.5)
            bottom += vals
            handles.append(Patch(color=SPLIT_COLOURS[s], label=f"{s} ({int(vals.sum())})"))
        for xi, is_rare in zip(x, rare):
            if is_rare:
                ax.bar(xi, counts_arr[xi], fill=False, edgecolor=RARE_COLOUR, linewidth=2.0, hatch="//")
    else:
        ax.bar(x, counts_arr, color=[RARE_COLOUR if r else NORMAL_COLOUR for r in rare])  # a legend only for rare
    if rare.any():
        handles.append(
            Patch(facecolor="none" if by_split else RARE_COLOUR, edgecolor=RARE_COLOUR, hatch="//" if by_split else None,
                  label=f"rare (< half the median, {median / 2:.0f})")
        )
    top = max(int(counts_arr.max()) if len(counts_arr) else 1, 1)
    for xi, n in zip(x, counts_arr):
        ax.text(xi, n + top * 0.01, str(int(n)), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, top * 1.12)
    ax.set_xticks(x)
    # names wrap to their bar's share of the axis (~0.075 in a character); a word still wider turns them all
    per_bar_chars = 0.8 * width / max(1, len(classes)) / 0.075
    names = [textwrap.fill(str(c), max(6, int(per_bar_chars))) for c in classes]
    turned = max((len(line) for n in names for line in n.splitlines()), default=0) > per_bar_chars
    ax.set_xticklabels(names, rotation=35 if turned else 0, ha="right" if turned else "center",
                       rotation_mode="anchor" if turned else "default", fontsize=9)
    ax.set_xlabel("class")
    ax.set_ylabel("number of photos")
    ax.set_title(title)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def _class_distribution(classes: list[str], items: list[_Item], by_split: bool, title: str, path: Path) -> Path:
    if by_split:
        counts = {s: Counter(i.label for i in items if i.split == s) for s in SPLITS}
    else:
        counts = {None: Counter(i.label for i in items)}
    return save_png(class_distribution_figure(counts, title, classes), path, dpi=EXPLORE_DPI)


def _pick(paths: list[str], k: int) -> list[str]:
    paths = sorted(paths)
    if len(paths) <= k:
        return paths
    idx = np.linspace(0, len(paths) - 1, k).round().astype(int)
    return [paths[i] for i in idx]


def _thumb(path: str) -> np.ndarray | None:
    try:
        return load_image(path, THUMB)
    except BadImageError:
        return None


def _samples(classes: list[str], items: list[_Item], k: int, path: Path) -> Path:
    from matplotlib.figure import Figure

    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for i in items:
        by_class[i.label].append(i.path)
    chosen = {c: _pick(by_class[c], k) for c in classes}
    flat = [p for c in classes for p in chosen[c]]
    with ThreadPoolExecutor(max_workers=min(default_workers(), max(1, len(flat)))) as pool:
        thumbs = dict(zip(flat, pool.map(_thumb, flat)))
    gap = 4
    cell = THUMB + gap
    mosaic = np.full((len(classes) * cell + gap, k * cell + gap, 3), 255, dtype=np.uint8)
    for r, c in enumerate(classes):
        for j, p in enumerate(chosen[c]):
            t = thumbs.get(p)
            if t is not None:
                y, x = gap + r * cell, gap + j * cell
                mosaic[y : y + THUMB, x : x + THUMB] = t
    height_px, width_px = mosaic.shape[:2]
    fig = Figure(figsize=(width_px / 100 + 1.8, height_px / 100 + 0.6))
    ax = fig.add_axes((1.8 / (width_px / 100 + 1.8), 0.0, width_px / (width_px + 180), height_px / (height_px + 60)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([gap + r * cell + THUMB / 2 for r in range(len(classes))])
    ax.set_yticklabels(classes, fontsize=9)
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"Sample photos ({k} per class)")
    return save_png(fig, path, dpi=EXPLORE_DPI)


def _sizes(items: list[_Item], path: Path) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    sized = [(i.width, i.height) for i in items if i.width is not None]
    modes = Counter(i.mode or "unreadable" for i in items)
    fig = Figure(figsize=(10, 4.2))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    counts = Counter(sized)
    if counts:
        ws, hs, ns = zip(*[(w, h, n) for (w, h), n in sorted(counts.items())])
        ns_arr = np.array(ns, dtype=float)
        ax1.scatter(ws, hs, s=20 + 300 * ns_arr / ns_arr.max(), alpha=0.6, color=NORMAL_COLOUR)
        for (w, h), n in counts.most_common(5):
            ax1.annotate(f"{w}x{h}: {n}", (w, h), textcoords="offset points", xytext=(6, 6), fontsize=8)
        lo = min(min(ws), min(hs))
        hi = max(max(ws), max(hs))
        pad = max(8.0, 0.1 * (hi - lo))
        ax1.set_xlim(lo - pad, hi + pad * 3)
        ax1.set_ylim(lo - pad, hi + pad * 3)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("width (pixels)")
    ax1.set_ylabel("height (pixels)")
    ax1.set_title(f"Stored image sizes ({len(sized)} photos, {len(counts)} distinct)")
    names = sorted(modes)
    ax2.bar(range(len(names)), [modes[m] for m in names], color=SPLIT_COLOURS["val"])
    for xi, m in enumerate(names):
        ax2.text(xi, modes[m], str(modes[m]), ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(names)))
    ax2.set_xticklabels(names)
    ax2.set_xlabel("colour mode")
    ax2.set_ylabel("number of photos")
    ax2.set_title("Colour modes (converted to RGB)")
    return save_png(fig, path, dpi=EXPLORE_DPI)


def _print_manifest_table(manifest: Manifest, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Manifest {escape(str(manifest.path))}")
    table.add_column("Class")
    for s in SPLITS:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    per = {s: manifest.class_counts(s) for s in SPLITS}
    for c in manifest.classes:
        vals = [per[s][c] for s in SPLITS]
        table.add_row(escape(c), *map(str, vals), str(sum(vals)))
    table.add_section()
    sizes = manifest.split_sizes()
    table.add_row("[bold]total[/bold]", *(str(sizes[s]) for s in SPLITS), str(len(manifest.rows)))
    console.print(table)


def explore(source: Path, out_dir: Path, console=None, samples_per_class: int = 8) -> dict[str, Path]:
    """Write class_distribution.png, samples.png and sizes.png into `out_dir`; return their paths."""
    from rich.console import Console

    source = Path(source).expanduser()
    out_dir = Path(out_dir).expanduser()
    console = console or Console()
    if samples_per_class < 1:
        raise PlantidError(f"samples_per_class must be at least 1, got {samples_per_class}")
    if source.is_file():
        manifest = read_manifest(source)
        classes = manifest.classes
        items = _items_from_manifest(manifest)
        by_split = True
        title = f"Photos per class and split ({len(items)} in {source.name})"
        _print_manifest_table(manifest, console)
    else:
        report = scan_folder(source, progress=False)
        classes = report.classes
        items = _items_from_report(report)
        by_split = report.presplit
        title = f"Photos per class ({len(items)} in {report.root.name})"
        print_scan_table(report, console)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = {
            "class_distribution": _class_distribution(classes, items, by_split, title, out_dir / "class_distribution.png"),
            "samples": _samples(classes, items, samples_per_class, out_dir / "samples.png"),
            "sizes": _sizes(items, out_dir / "sizes.png"),
        }
    except OSError as exc:
        raise PlantidError(f"{out_dir}: cannot write the figures ({exc.strerror or exc}); choose a writable output folder") from None
    for name, p in outputs.items():
        console.print(f"wrote {name}: {p}")
    return outputs
