"""The class-distribution chart and the error grid are readable: no label drawn over another,
no legend that says nothing. Checked on the drawn figures' text boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from plantid.data.explore import class_distribution_figure
from plantid.evaluate.plots import error_grid_figure

SEEDLINGS = ["Black-grass", "Charlock", "Cleavers", "Common Chickweed", "Fat Hen", "Small-flowered Cranesbill"]


def _drawn(fig):
    """Draw the figure on an Agg canvas (as save_png does) and return its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _overlapping(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def test_long_class_names_do_not_overlap_and_a_plain_chart_has_no_legend():
    for counts in ({None: {c: 60 - 5 * i for i, c in enumerate(SEEDLINGS)}},
                   {"train": dict.fromkeys(SEEDLINGS, 42), "val": dict.fromkeys(SEEDLINGS, 9),
                    "test": dict.fromkeys(SEEDLINGS, 9)}):
        fig = class_distribution_figure(counts, "Photos per class", SEEDLINGS)
        renderer = _drawn(fig)
        ax = fig.axes[0]
        labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        assert len(labels) == len(SEEDLINGS) and not _overlapping(labels)
        assert all(0 <= b.x0 and b.x1 <= fig.bbox.width and b.y0 >= 0 for b in labels)  # nothing cut off
        legend = ax.get_legend()
        if None in counts:
            assert legend is None  # one colour, no rare class: nothing to explain
        else:
            assert [t.get_text().split(" ")[0] for t in legend.get_texts()] == ["train", "val", "test"]


def test_error_grid_captions_stay_clear_of_the_next_row(tmp_path: Path):
    photo = tmp_path / "leaf.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(photo)
    errors = [{"path": str(photo), "true": SEEDLINGS[i % 6], "pred": SEEDLINGS[(i + 1) % 6], "confidence": 0.9}
              for i in range(12)]
    fig = error_grid_figure(errors)
    renderer = _drawn(fig)
    texts = [a.title.get_window_extent(renderer) for a in fig.axes] + \
            [a.xaxis.label.get_window_extent(renderer) for a in fig.axes]
    images = [a.get_window_extent(renderer) for a in fig.axes]
    assert not _overlapping(texts)
    assert not [(t, i) for t in texts for i in images if t.overlaps(i)]
