"""Losses: CE and weighted CE are torch's, equal to the hand-written formula they replaced;
class weights follow the counts; focal down-weights easy samples."""

import pytest
import torch
import torch.nn.functional as F

from plantid.config import LossConfig
from plantid.errors import PlantidError
from plantid.train.losses import CrossEntropy, balanced_class_weights, build_loss


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=g) * 3, torch.randint(0, 4, (16,), generator=g)


def _soft(y, seed=0):
    """CutMix/MixUp-like targets: each row mixes its label with another's, lambda drawn per batch."""
    lam = torch.rand((), generator=torch.Generator().manual_seed(seed))
    return lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y.flip(0), 4).float()


def _reference(logits, target, weights=None, gamma=0.0, smoothing=0.0):
    """The formula plantid used before torch's cross_entropy: -sum_k w_k (1-p_k)^g t_k log p_k, mean."""
    k = logits.shape[1]
    if target.dim() == 1:
        target = F.one_hot(target, k).float() * (1 - smoothing) + smoothing / k
    weights = torch.ones(k) if weights is None else weights
    log_p = F.log_softmax(logits, dim=1)
    return (-(target * log_p * weights * (1 - log_p.exp()) ** gamma).sum(1)).mean()


@pytest.mark.parametrize("name", ["ce", "weighted_ce"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True])
def test_ce_and_weighted_ce_equal_the_formula_they_replaced(name, smoothing, soft):
    logits, y = _data(1)
    logits.requires_grad_(True)
    counts = [10, 20, 30, 40]
    target = _soft(y) if soft else y
    weights = balanced_class_weights(counts) if name == "weighted_ce" else None
    loss = build_loss(LossConfig(name=name, label_smoothing=smoothing), counts)(logits, target)
    expected = _reference(logits, target, weights, smoothing=smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_ce_matches_torch_with_and_without_smoothing():
    logits, y = _data()
    assert build_loss(LossConfig(name="ce"), [5, 5, 5, 5])(logits, y) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    smoothed = build_loss(LossConfig(name="ce", label_smoothing=0.1), [1, 1, 1, 1])(logits, y)
    assert smoothed == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.1)), rel=1e-5)


def test_soft_targets_are_not_smoothed_twice():
    # timm's Mixup already smooths the targets it returns; the loss must not smooth them again.
    logits, y = _data(3)
    soft = _soft(y, seed=3)
    loss = build_loss(LossConfig(name="ce", label_smoothing=0.1), [1, 1, 1, 1])(logits, soft)
    assert float(loss) == pytest.approx(float(-(soft * F.log_softmax(logits, 1)).sum(1).mean()), rel=1e-6)


def test_balanced_weights_favour_rare_classes():
    w = balanced_class_weights([186, 532, 515, 511, 531, 222, 537, 508])
    assert w[0] > w[1] and w[5] > w[6]
    counts = torch.tensor([186, 532, 515, 511, 531, 222, 537, 508], dtype=torch.float32)
    assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0)


def test_weighted_ce_scales_each_sample_by_its_class_weight():
    # Keras' class_weight: a plain mean of weighted per-sample losses, not torch's weighted mean.
    logits, y = _data(1)
    counts = [10, 20, 30, 40]
    loss = build_loss(LossConfig(name="weighted_ce"), counts)(logits, y)
    w = balanced_class_weights(counts)
    expected = (F.cross_entropy(logits, y, reduction="none") * w[y]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) != pytest.approx(float(F.cross_entropy(logits, y, weight=w)), rel=1e-3)


def test_focal_loss_formula_and_gamma_zero_is_ce():
    logits, y = _data(2)
    focal = build_loss(LossConfig(name="focal", gamma=2.0), [1, 1, 1, 1])(logits, y)
    p = F.softmax(logits, 1)[torch.arange(16), y]
    expected = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert float(focal) == pytest.approx(float(expected), rel=1e-5)
    assert float(focal) < float(F.cross_entropy(logits, y))
    plain = build_loss(LossConfig(name="focal", gamma=0.0), [1, 1, 1, 1])(logits, y)
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_focal_loss_on_soft_targets_with_alpha_and_smoothing():
    logits, y = _data(4)
    counts = [3, 9, 27, 81]
    cfg = LossConfig(name="focal", gamma=1.5, alpha="balanced", label_smoothing=0.1)
    w = balanced_class_weights(counts)
    soft = _soft(y, seed=4)
    assert float(build_loss(cfg, counts)(logits, soft)) == pytest.approx(float(_reference(logits, soft, w, 1.5)), rel=1e-6)
    assert float(build_loss(cfg, counts)(logits, y)) == pytest.approx(float(_reference(logits, y, w, 1.5, 0.1)), rel=1e-6)


def test_class_weights_are_a_buffer_that_checkpoints_keep():
    # Run checkpoints hold the module's state dict; the buffer name must stay "weights".
    loss = build_loss(LossConfig(name="weighted_ce"), [1, 3])
    assert isinstance(loss, CrossEntropy)
    torch.testing.assert_close(loss.state_dict()["weights"], balanced_class_weights([1, 3]))


def test_alpha_length_must_match_classes():
    with pytest.raises(PlantidError, match="3 values but the data has 4 classes"):
        build_loss(LossConfig(name="focal", alpha=[1.0, 1.0, 1.0]), [1, 1, 1, 1])
