"""Losses: CE equals torch's, class weights follow the counts, focal down-weights easy samples."""

import pytest
import torch
import torch.nn.functional as F

from plantid.config import LossConfig
from plantid.errors import PlantidError
from plantid.train.losses import SoftTargetLoss, balanced_class_weights, build_loss


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=g), torch.randint(0, 4, (16,), generator=g)


def test_ce_matches_torch_with_and_without_smoothing():
    logits, y = _data()
    assert build_loss(LossConfig(name="ce"), [5, 5, 5, 5])(logits, y) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    smoothed = build_loss(LossConfig(name="ce", label_smoothing=0.1), [1, 1, 1, 1])(logits, y)
    assert smoothed == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.1)), rel=1e-5)


def test_balanced_weights_favour_rare_classes():
    w = balanced_class_weights([186, 532, 515, 511, 531, 222, 537, 508])
    assert w[0] > w[1] and w[5] > w[6]
    counts = torch.tensor([186, 532, 515, 511, 531, 222, 537, 508], dtype=torch.float32)
    assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0)


def test_weighted_ce_scales_each_sample_by_its_class_weight():
    logits, y = _data(1)
    counts = [10, 20, 30, 40]
    loss = build_loss(LossConfig(name="weighted_ce"), counts)(logits, y)
    w = balanced_class_weights(counts)
    expected = (F.cross_entropy(logits, y, reduction="none") * w[y]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_focal_loss_formula_and_gamma_zero_is_ce():
    logits, y = _data(2)
    focal = build_loss(LossConfig(name="focal", gamma=2.0), [1, 1, 1, 1])(logits, y)
    p = F.softmax(logits, 1)[torch.arange(16), y]
    expected = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert float(focal) == pytest.approx(float(expected), rel=1e-5)
    assert float(focal) < float(F.cross_entropy(logits, y))
    plain = build_loss(LossConfig(name="focal", gamma=0.0), [1, 1, 1, 1])(logits, y)
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_soft_targets_accepted():
    logits, y = _data(3)
    soft = 0.7 * F.one_hot(y, 4).float() + 0.3 * F.one_hot(y.roll(1), 4).float()
    loss = SoftTargetLoss(4)(logits, soft)
    expected = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_alpha_length_must_match_classes():
    with pytest.raises(PlantidError, match="3 values but the data has 4 classes"):
        build_loss(LossConfig(name="focal", alpha=[1.0, 1.0, 1.0]), [1, 1, 1, 1])
