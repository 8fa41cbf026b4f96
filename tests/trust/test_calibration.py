"""Temperature scaling on real tensors: it recovers a known temperature and lowers the NLL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from plantid.trust.calibration import crossfit_probabilities, expected_calibration_error, fit_temperature, nll


def _calibrated_sample(n: int = 4000, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn FROM softmax(logits): calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2.0
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).squeeze(1)
    return logits, labels


def test_recovers_the_temperature_of_overconfident_logits() -> None:
    logits, labels = _calibrated_sample()
    overconfident = logits * 3.0  # a network three times too sure of itself
    t = fit_temperature(overconfident, labels)
    assert abs(t - 3.0) < 0.25
    assert nll(overconfident, labels, t) < nll(overconfident, labels) - 0.1
    before = expected_calibration_error(torch.softmax(overconfident, 1), labels)
    after = expected_calibration_error(torch.softmax(overconfident / t, 1), labels)
    assert after < before / 3


def test_underconfident_logits_get_a_temperature_below_one() -> None:
    logits, labels = _calibrated_sample(seed=1)
    t = fit_temperature(logits / 2.0, labels)
    assert 0.4 < t < 0.6
    assert nll(logits / 2.0, labels, t) < nll(logits / 2.0, labels)


def test_a_val_split_without_errors_gets_the_rule_of_successions_confidence_not_certainty() -> None:
    """54 val photos all right by a margin: the plain NLL falls without end as T shrinks (the fit
    would stop at the clamp, every answer "certain"); the smoothed fit leaves the mean top
    probability near 55/56, and a photo the model gets wrong is not given probability ~0."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(54) % 6
    logits = torch.randn(54, 6, generator=g)
    logits[torch.arange(54), labels] += 3.0  # every photo right, with a margin
    t = fit_temperature(logits, labels)
    top = torch.softmax(logits / t, 1).max(1).values.mean()
    assert t > 0.05 and 0.95 < top < 1.0 - 0.5 / 56
    wrong = torch.tensor([[3.0, 0, 0, 0, 0, 0]])
    assert nll(wrong, torch.tensor([1]), t) < 10.0
    assert nll(wrong, torch.tensor([1]), 0.05) > 50.0


def test_crossfit_scores_each_photo_with_a_temperature_fitted_without_it() -> None:
    """Over-confident logits come out calibrated, each half scaled by the other half's temperature."""
    logits, labels = _calibrated_sample(n=3000, seed=2)
    overconfident = logits * 2.5
    p = crossfit_probabilities(overconfident, labels, folds=2)
    assert p.shape == overconfident.shape
    assert torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype))
    assert torch.equal(p.argmax(1), overconfident.argmax(1))  # a temperature never changes a prediction
    before = expected_calibration_error(torch.softmax(overconfident, 1), labels)
    assert expected_calibration_error(p, labels) < before / 3
    # fold membership matters: each half is scaled by the other half's temperature, not its own
    t_all = fit_temperature(overconfident, labels)
    assert not torch.allclose(p, torch.softmax(overconfident.double() / t_all, 1))


def test_crossfit_refuses_too_few_photos() -> None:
    import pytest

    from plantid.errors import PlantidError

    with pytest.raises(PlantidError, match="too few"):
        crossfit_probabilities(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))


def test_lowers_the_nll_of_a_trained_runs_val_logits(trust_run: Path) -> None:
    """The tiny run's own val logits, made over-confident, are brought back by the fitted temperature."""
    from plantid.infer.checkpoint import load_trained
    from plantid.infer.predictor import TorchBackend
    from plantid.trustfit.features import features_and_logits, manifest_pixels

    trained = load_trained(trust_run)
    pixels, rows, labels = manifest_pixels(trust_run, trained)
    _, logits = features_and_logits(TorchBackend(trained), pixels, rows["test"])
    z = torch.from_numpy(logits) * 0.2  # an under-confident copy, so the fitted T must be below one
    y = torch.from_numpy(labels["test"])
    t = fit_temperature(z, y)
    assert t < 1.0
    assert nll(z, y, t) < nll(z, y)
    assert np.isfinite(t)


def test_the_ece_of_a_perfectly_calibrated_model_shrinks_with_more_photos_and_vanishes_when_certain() -> None:
    from plantid.trust.calibration import ece_if_calibrated

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 8, generator=g) * 3
    small = ece_if_calibrated(torch.softmax(logits[:400], 1))
    large = ece_if_calibrated(torch.softmax(logits, 1))
    assert small[1] <= small[0] <= small[2] and large[1] <= large[0] <= large[2]
    assert 0.015 < small[0] and large[0] < 0.01 and large[0] < small[0] / 3  # noise ~ 1 / sqrt(n)
    # labels drawn from the probabilities: their measured ECE lies in the predicted range most of the time
    probabilities = torch.softmax(logits[:400], 1)
    measured = [expected_calibration_error(probabilities, torch.multinomial(probabilities, 1, generator=g).squeeze(1))
                for _ in range(40)]
    inside = np.mean([small[1] <= m <= small[2] for m in measured])
    assert inside >= 0.75
    assert ece_if_calibrated(torch.eye(8)[:5].double()) == (0.0, 0.0, 0.0)
