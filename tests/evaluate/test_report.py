"""build_report on a tiny real run (self-contained, escaped, uses eval.json) and the plots behind it."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import time
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
from PIL import Image
from rich.console import Console

from plantid.data.split import read_manifest, write_manifest
from plantid.evaluate.evaluation import evaluate_run
from plantid.data.explore import class_distribution_figure
from plantid.evaluate.plots import (
    error_grid_figure,
    training_curves_figure,
)
from plantid.figures import save_png
from plantid.evaluate.report import _duration, build_report, weak_classes
from plantid.html_pages import render_page
from plantid.trustfit.audit import AuditRow, audit_csv

ODD = '<b>x&y "q"'  # a class name that must be escaped in HTML


@pytest.fixture
def report_run(copy_run: Path, tiny_classes: list[str]) -> Path:
    """A private copy of the session's tiny run, whose labels include `ODD`, never evaluated."""
    assert ODD in tiny_classes
    (copy_run / "eval.json").unlink(missing_ok=True)
    return copy_run


class PageParser(HTMLParser):
    """Collects tags with attributes and the page's text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def assert_self_contained(page: str) -> PageParser:
    parsed = parse(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for tag, attrs in parsed.tags:
        for key in ("src", "href"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http://", "https://", "//")), (tag, key, value)
            if key == "href" and value:
                assert value.startswith("#"), value
    imgs = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert imgs
    for attrs in imgs:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            assert img.format == "PNG"
            img.load()
    assert "url(" not in page and "@import" not in page
    return parsed


def test_report_runs_the_evaluation_when_eval_json_is_missing(report_run: Path):
    assert not (report_run / "eval.json").exists()
    path = build_report(report_run)
    assert path == report_run / "report.html" and path.is_file()
    result = json.loads((report_run / "eval.json").read_text(encoding="utf-8"))
    page = path.read_text(encoding="utf-8")
    parsed = assert_self_contained(page)
    assert len([t for t, _ in parsed.tags if t == "img"]) == 4  # distribution, curves, confusion, errors
    text = "".join(parsed.text)
    acc = result["metrics"]["accuracy"]
    assert f"{100 * acc:.2f}%" in text
    # scored with the run's default views too, as the default recipe's numbers are
    assert result["tta"]["views"] and f"{100 * result['tta']['metrics']['accuracy']:.2f}%" in text
    # the odd class name is escaped in the source and shown literally in the text
    assert ODD in text
    assert "&lt;b&gt;x&amp;y &#34;q&#34;" in page
    assert "<b>x&y" not in page
    for section in ("Data", "Training", "Evaluation", "Confusion matrix", "Per class", "Errors", "Configuration"):
        assert section in text
    assert "simple_cnn" in text


def test_report_shows_the_numbers_of_eval_json(report_run: Path):
    evaluate_run(report_run, "test", console=Console(file=io.StringIO()))
    result = json.loads((report_run / "eval.json").read_text(encoding="utf-8"))
    # A doctored evaluation with distinctive numbers and a TTA section; newer than the checkpoint.
    result["metrics"]["accuracy"] = 0.123456
    result["metrics"]["macro_f1"] = 0.654321
    result["per_class"][0]["f1"] = 0.2
    result["tta"] = {"views": ["identity", "vflip"], "metrics": dict(result["metrics"], accuracy=0.876543),
                     "per_class": result["per_class"], "confusion": result["confusion"]}
    (report_run / "eval.json").write_text(json.dumps(result), encoding="utf-8")
    future = time.time() + 5
    os.utime(report_run / "eval.json", (future, future))
    page = build_report(report_run).read_text(encoding="utf-8")
    text = "".join(assert_self_contained(page).text)
    assert "12.35%" in text and "87.65%" in text and "65.43%" in text
    assert "vflip" in text
    assert 'class="weak"' in page  # F1 0.2 is highlighted
    speed = json.loads((report_run / "train_summary.json").read_text(encoding="utf-8"))["train_images_per_s"]
    assert f"{speed:,.0f} photos/s" in text  # the run's training speed, from train_summary.json
    assert json.loads((report_run / "eval.json").read_text(encoding="utf-8"))["metrics"]["accuracy"] == 0.123456


EVIL = '<script>alert(1)</script> "x"'  # a label no folder can hold ('/'): split.csv and eval.json carry it


def test_a_class_named_like_a_script_is_only_text(report_run: Path):
    """Markup in a class name is escaped in every section that shows it (data, per class, next
    steps, audit): the page holds no script tag at all."""
    evaluate_run(report_run, "test", console=Console(file=io.StringIO()))
    result = json.loads((report_run / "eval.json").read_text(encoding="utf-8"))
    rename = {ODD: EVIL}
    result["classes"] = [rename.get(c, c) for c in result["classes"]]
    for row in result["per_class"]:
        row["class"] = rename.get(row["class"], row["class"])
        row["f1"] = 0.2 if row["class"] == EVIL else row["f1"]  # weak: it gets a "what to do next" block
    for row in result.get("worst") or []:
        row["true"], row["pred"] = rename.get(row["true"], row["true"]), rename.get(row["pred"], row["pred"])
    (report_run / "eval.json").write_text(json.dumps(result), encoding="utf-8")
    future = time.time() + 5
    os.utime(report_run / "eval.json", (future, future))
    manifest = read_manifest(report_run / "split.csv")
    write_manifest([dataclasses.replace(r, label=rename.get(r.label, r.label)) for r in manifest.rows],
                   report_run / "split.csv")
    photo = next(r.path for r in manifest.rows if r.label == ODD)
    (report_run / "audit.csv").write_text(audit_csv([AuditRow(photo, "train", EVIL, "a", 0.1, 0.8, 0.1, True, 0)]),
                                          encoding="utf-8")

    page = build_report(report_run).read_text(encoding="utf-8")
    text = "".join(assert_self_contained(page).text)
    assert "<script" not in page.lower()
    assert "content=\"default-src 'none'; img-src data:;" in page  # and nothing would run or load if it got in
    assert EVIL in text  # shown literally
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;x&#34;"
    assert page.count("alert(1)") == page.count(escaped) >= 5  # data, per class, next steps, audit


def test_a_template_value_left_out_is_an_error():
    """StrictUndefined: a value a page names but is not given stops the render, not a blank."""
    with pytest.raises(jinja2.UndefinedError, match="flagged"):
        render_page("audit.html.j2", title="Label audit")


def test_weak_classes_and_duration():
    result = {"metrics": {"macro_f1": 0.8}, "per_class": [
        {"class": "ok", "f1": 0.85, "support": 3},
        {"class": "low", "f1": 0.65, "support": 3},
        {"class": "bad", "f1": 0.4, "support": 3},
        {"class": "absent", "f1": 0.0, "support": 0},
    ]}
    assert weak_classes(result) == {"low", "bad"}
    assert _duration(42.4) == "42 s"
    assert _duration(192) == "3 min 12 s"
    assert _duration(3725) == "1 h 02 min"
    assert _duration(None) == "n/a"


def test_log_scale_learning_rate_ticks_are_plain_text(tmp_path: Path):
    """Mathtext is off in plantid's style, so tick labels must not be mathtext strings."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,lr-AdamW\n0,1,0.00001\n1,2,0.001\n2,3,0.0001\n", encoding="utf-8")
    fig = training_curves_figure(path)
    fig.canvas.draw()
    lr_axis = fig.axes[2]
    assert lr_axis.get_yscale() == "log"
    labels = [t.get_text() for t in lr_axis.get_yticklabels() + lr_axis.get_yticklabels(minor=True)]
    assert any(labels) and not any("$" in label for label in labels), labels


def test_plots_are_robust_and_save_valid_pngs(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    assert training_curves_figure(path) is None  # no file
    path.write_text("epoch,step,val_acc\n0,3,0.5\n1,7,0.75\n", encoding="utf-8")  # only one column
    save_png(training_curves_figure(path), tmp_path / "curves.png")
    path.write_text("epoch,step\n", encoding="utf-8")
    assert training_curves_figure(path) is None
    save_png(class_distribution_figure({"train": {"a": 5, ODD: 3}, "val": {"a": 1, ODD: 1}, "test": {"a": 0, ODD: 0}}),
             tmp_path / "dist.png")
    errors = [{"path": str(tmp_path / "gone.jpg"), "true": ODD, "pred": "a $x$", "confidence": 0.9}]
    save_png(error_grid_figure(errors), tmp_path / "errors.png")
    save_png(error_grid_figure([]), tmp_path / "none.png")
    sizes = {}
    for name in ("curves", "dist", "errors", "none"):
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.format == "PNG"
            sizes[name] = img.size
    assert sizes["curves"][0] > 800
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_progressive_resizing_phases_are_shaded_and_labelled(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    rows = "".join(f"{e},{e * 4 + 3},{1.5 - e / 10},{0.5 + e / 20}\n" for e in range(7))
    path.write_text("epoch,step,val_loss,val_acc\n" + rows, encoding="utf-8")

    def labels(fig):
        return [[t.get_text() for t in ax.texts] for ax in fig.axes[:2]]

    plain = training_curves_figure(path)
    assert all("128 px" not in texts for texts in labels(plain))
    fig = training_curves_figure(path, size_phases=[(5, 128)], final_size=192)
    for ax, texts in zip(fig.axes[:2], labels(fig)):
        assert "128 px" in texts and "192 px" in texts
        spans = [p for p in ax.patches if p.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
        assert len(spans) == 1
        box = spans[0].get_bbox()  # x in epochs (data), y across the axis
        assert (box.x0, box.x1) == (0.5, 5.5)  # epochs 1-5, shown 1-based
    save_png(fig, tmp_path / "curves.png")


def test_per_group_learning_rates_plot_as_one_curve(tmp_path: Path):
    """With layer decay, LearningRateMonitor logs one column per param group: draw the fastest."""
    path = tmp_path / "metrics.csv"
    header = "epoch,step,lr-AdamW/pg1,lr-AdamW/pg2,lr-AdamW/pg3,val_acc\n"
    rows = "".join(f"{e},{e * 4 + 3},{0.25 * (3 - e) * 1e-3},{(3 - e) * 1e-3},{0.5 * (3 - e) * 1e-3},0.5\n" for e in range(3))
    path.write_text(header + rows, encoding="utf-8")
    lr_axis = training_curves_figure(path).axes[2]
    assert len(lr_axis.lines) == 1
    assert list(lr_axis.lines[0].get_ydata()) == pytest.approx([3e-3, 2e-3, 1e-3])
    assert "fastest" in lr_axis.get_title()
