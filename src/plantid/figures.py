"""What every place that draws shares: the house style, PNG rendering and atomic saving.

Below `data`, `evaluate` and `track`, so each of them draws without importing another: explore,
evaluate, the report and compare all render through here. Figures are built without
pyplot, so nothing touches the global backend or pyplot's figure registry (safe in servers and
notebooks). Class names are drawn literally: mathtext is off, so ``$`` or ``_`` show as they are.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from PIL import Image

from plantid.fileio import write_bytes_atomic

SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}
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


def figure_style():
    """The house style (fonts, no mathtext, white background) as a matplotlib rc context."""
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
    with figure_style():
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    if not palette:
        return buf.getvalue()
    buf.seek(0)
    with Image.open(buf) as img:
        quantized = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    out = io.BytesIO()
    quantized.save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Save a figure as PNG atomically (never a half-written file)."""
    return write_bytes_atomic(path, png_bytes(fig, dpi))
