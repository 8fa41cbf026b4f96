"""The label audit on real tensors, files and a real trained run, with labels flipped on purpose."""

from __future__ import annotations

import base64
import csv
import dataclasses
import re
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from markupsafe import escape
from PIL import Image

from plantid.data.split import read_manifest, write_manifest
from plantid.errors import PlantidError
from plantid.trustfit.audit import (
    AUDIT_CSV,
    AUDIT_HTML,
    CSV_HEADER,
    audit_run,
    feature_pieces,
    out_of_fold_probs,
    pooled_features,
    rank_label_issues,
)
from tests.support.cli import invoke

torch.set_num_threads(1)


def _flip(labels: np.ndarray, which: np.ndarray, num_classes: int) -> np.ndarray:
    """Move each chosen label to the next class."""
    out = labels.copy()
    out[which] = (out[which] + 1) % num_classes
    return out


def test_out_of_fold_ranking_puts_flipped_labels_first() -> None:
    """Separable Gaussian clusters with 5% of the labels flipped: cleanlab's top 2x5% holds them all."""
    rng = np.random.default_rng(0)
    k, per_class, dim = 4, 50, 16
    centres = rng.normal(0, 4.0, size=(k, dim))
    truth = np.repeat(np.arange(k), per_class)
    feats = centres[truth] + rng.normal(0, 1.0, size=(len(truth), dim))
    flipped = rng.choice(len(truth), size=len(truth) // 20, replace=False)
    given = _flip(truth, flipped, k)

    probs, folds = out_of_fold_probs(feats, given, k, folds=5)
    assert folds == 5
    assert probs.shape == (len(truth), k)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    order, flagged, quality = rank_label_issues(given, probs)
    top = set(order[: 2 * len(flipped)].tolist())
    assert set(flipped.tolist()) <= top
    assert flagged[flipped].all()
    # the suggested label of a flipped photo is its true class
    assert (probs[flipped].argmax(axis=1) == truth[flipped]).all()
    # the ranking is by rising label quality, which is the out-of-fold probability of the given label
    np.testing.assert_allclose(quality, probs[np.arange(len(given)), given], atol=1e-9)
    assert np.all(np.diff(quality[order]) >= 0)


def test_out_of_fold_needs_two_photos_per_class() -> None:
    feats = np.random.default_rng(0).normal(size=(7, 3))
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(PlantidError, match="at least 2 photos of each class"):
        out_of_fold_probs(feats, labels, 3)


def test_pooled_features_are_the_backbones_pre_logits() -> None:
    """The hook captures exactly what timm's pooled pre-logits are, for the pretrained Lite0."""
    from plantid.config import ModelConfig
    from plantid.models import build_model

    model = build_model(ModelConfig(name="tf_efficientnet_lite0", weights="auto"), 3, 64).eval()
    images = np.random.default_rng(1).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    feats = pooled_features(model, images, rows=np.array([4, 0, 2]), batch_size=2)
    x = torch.from_numpy(images[[4, 0, 2]]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        bb = model.backbone
        expected = bb.forward_head(bb.forward_features(model.normalize(x)), pre_logits=True)
    assert feats.shape == (3, bb.num_features)
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-4, atol=1e-4)

    # the stage statistics are each stage map's channel means and standard deviations
    pieces = feature_pieces(model, images, rows=np.array([4, 0, 2]), batch_size=2)
    with torch.inference_mode():
        maps = bb.forward_intermediates(model.normalize(x), intermediates_only=True)
    np.testing.assert_allclose(pieces["mean"], torch.cat([m.mean((2, 3)) for m in maps], 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pieces["std"], torch.cat([m.std((2, 3)) for m in maps], 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pieces["head"], feats, rtol=1e-6)


@pytest.fixture
def flipped_run(copy_run: Path) -> tuple[Path, set[str], dict[str, str]]:
    """A copy of the session's tiny run whose split.csv gives one train photo of each class a wrong label."""
    manifest = read_manifest(copy_run / "split.csv")
    classes = manifest.classes
    rows, flipped, truth = [], set(), {}
    for r in manifest.rows:
        truth[r.path] = r.label
        if r.split == "train" and r.label not in {truth[p] for p in flipped}:
            wrong = classes[(classes.index(r.label) + 1) % len(classes)]
            r = dataclasses.replace(r, label=wrong)
            flipped.add(r.path)
        rows.append(r)
    write_manifest(rows, copy_run / "split.csv")
    assert len(flipped) == len(classes)
    return copy_run, flipped, truth


def test_audit_run_finds_flipped_labels_and_writes_csv_and_html(flipped_run) -> None:
    run, flipped, truth = flipped_run
    result = audit_run(run, features="model", folds=5, limit=50)
    audited = read_manifest(run / "split.csv").rows
    n_audited = sum(r.split in ("train", "val") for r in audited)
    assert len(result.rows) == n_audited
    assert result.features == "model"
    top = {r.path for r in result.rows[: 2 * len(flipped)]}
    assert flipped <= top
    for r in result.rows:
        if r.path in flipped:
            assert r.flagged and r.suggested == truth[r.path] and r.given != r.suggested

    with open(run / AUDIT_CSV, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == CSV_HEADER
    assert len(table) == n_audited + 1
    assert [row[1] for row in table[1:]] == [r.path for r in result.rows]
    assert {row[1] for row in table[1 : 1 + len(flipped)]} <= top
    assert [float(row[7]) for row in table[1:]] == sorted(float(row[7]) for row in table[1:])

    page = (run / AUDIT_HTML).read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(result.flagged)
    thumb = Image.open(BytesIO(base64.b64decode(images[0])))
    assert thumb.format == "JPEG" and thumb.size == (32, 32)
    assert "src=\"http" not in page and "src='http" not in page  # self-contained
    assert "content=\"default-src 'none'; img-src data:;" in page  # runs and fetches nothing
    for path in flipped:  # names and labels are HTML-escaped (a class may be called '<b>x&y "q"')
        assert escape(Path(path).name) in page  # as the template layer escapes: a quote is &#34;
    assert "<b>" not in page
    assert not list(run.glob(".audit*.tmp"))


def test_audit_cli_and_bad_input(flipped_run, tmp_path: Path) -> None:
    run, flipped, _ = flipped_run
    res = invoke("audit", str(run), "--features", "model", "--limit", "2")
    assert res.returncode == 0, res.stderr
    assert "flagged" in res.stdout and str(run / AUDIT_HTML) in res.stdout
    page = (run / AUDIT_HTML).read_text(encoding="utf-8")
    assert page.count("<img ") == 2

    with pytest.raises(PlantidError, match="trained from scratch"):
        audit_run(run, features="pretrained")
    with pytest.raises(PlantidError, match="--features"):
        audit_run(run, features="imagenet")
    with pytest.raises(PlantidError, match="--splits"):
        audit_run(run, splits=("training",))
    with pytest.raises(PlantidError, match="no such run folder"):
        audit_run(tmp_path / "missing")


def test_auto_features_are_the_runs_own_even_with_a_pretrained_backbone() -> None:
    """bench_audit found more planted flips with the fine-tuned features on both shared sets."""
    from types import SimpleNamespace

    from torch import nn

    from plantid.config import load_config
    from plantid.trustfit.audit import feature_model, has_pretrained_backbone

    cfg = load_config("cpu-default")
    assert has_pretrained_backbone(cfg)
    trained = SimpleNamespace(config=cfg, model=nn.Linear(2, 2), classes=["a", "b"], image_size=32)
    for source in ("auto", "model"):
        net, name = feature_model(trained, source)
        assert net is trained.model and name == "model"
