"""The OOD detectors on real tensors, and a tiny trained run that must tell its own photos from
noise, flat colours and shuffled patches of its own photos at the threshold fitted on val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plantid.errors import PlantidError
from plantid.trustfit.fit import choose_threshold
from plantid.trust.ood import KNNDistance, LowRankMahalanobis, Mahalanobis, ProjectedKNN, build_detector, fit_detector

from tests.trust.conftest import generated_ood


def _clusters(n: int = 120, d: int = 16, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g) * 4
    return centres[labels] + torch.randn(n, d, generator=g) * torch.linspace(0.2, 2.0, d), labels


def test_knn_score_is_the_distance_to_the_kth_nearest_normalised_training_feature() -> None:
    train, labels = _clusters()
    query = torch.randn(10, train.shape[1], generator=torch.Generator().manual_seed(3)) * 3
    for k in (1, 5):
        detector = fit_detector("knn", train, labels, k=k)
        got = detector(query, torch.zeros(10, 3))
        distances = torch.cdist(torch.nn.functional.normalize(query.double(), dim=1),
                                torch.nn.functional.normalize(train.double(), dim=1))
        expected = distances.sort(dim=1).values[:, k - 1]
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_mahalanobis_matches_the_textbook_formula_in_float64() -> None:
    train, labels = _clusters()
    query = torch.randn(7, train.shape[1], generator=torch.Generator().manual_seed(4)) * 5
    detector = fit_detector("mahalanobis", train, labels, shrinkage=0.1)
    f = train.double()
    means = torch.stack([f[labels == c].mean(0) for c in range(3)])
    centred = f - means[labels]
    cov = centred.T @ centred / (len(f) - 3)
    cov = 0.9 * cov + 0.1 * torch.trace(cov) / cov.shape[0] * torch.eye(cov.shape[0], dtype=cov.dtype)
    precision = torch.linalg.inv(cov)
    diff = query.double()[:, None, :] - means[None]
    expected = torch.einsum("nkd,de,nke->nk", diff, precision, diff).min(dim=1).values
    torch.testing.assert_close(detector(query, torch.zeros(7, 3)).double(), expected, rtol=1e-4, atol=1e-3)
    # a training photo sits closer to its class than a far-away point
    assert detector(train[:1], torch.zeros(1, 3)) < detector(train[:1] + 50, torch.zeros(1, 3))


def test_the_stage_part_flags_photos_whose_stage_features_alone_are_unlike_training() -> None:
    penultimate, labels = _clusters(n=150, d=12)
    stage, _ = _clusters(n=150, d=6, seed=1)
    train = torch.cat([penultimate, stage], 1)
    val_p, _ = _clusters(n=60, d=12, seed=2)
    val = torch.cat([val_p, _clusters(n=60, d=6, seed=1)[0][:60]], 1)
    # queries that look like training photos in the penultimate columns, not in the stage's
    queries = torch.cat([penultimate[:20], stage[:20] + 40.0], 1)
    logits = torch.zeros(20, 3)
    plain = fit_detector("mahalanobis+knn", train[:, :12], labels, k=5, val=(val[:, :12], torch.zeros(60, 3)))
    staged = fit_detector("mahalanobis+knn+stage", train, labels, k=5, split=12, val=(val, torch.zeros(60, 3)))
    threshold_plain = choose_threshold(plain(val[:, :12], torch.zeros(60, 3)).numpy(), 0.95)
    threshold_staged = choose_threshold(staged(val, torch.zeros(60, 3)).numpy(), 0.95)
    assert (plain(queries[:, :12], logits) <= threshold_plain).all()  # the penultimate layer alone misses them
    assert (staged(queries, logits) > threshold_staged).all()
    # saved and rebuilt from its tensors and settings, it scores the same
    rebuilt = build_detector("mahalanobis+knn+stage", staged.state(), k=5, split=12)
    torch.testing.assert_close(rebuilt(queries, logits), staged(queries, logits))
    # without stage columns it is mahalanobis+knn
    no_stage = fit_detector("mahalanobis+knn+stage", train[:, :12], labels, k=5, split=12, val=(val[:, :12], torch.zeros(60, 3)))
    torch.testing.assert_close(no_stage(queries[:, :12], logits), plain(queries[:, :12], logits))


def _staged() -> tuple[torch.Tensor, ...]:
    """Train features (12 penultimate + 6 stage columns) with labels, val features, queries, and
    no logits for val and the queries."""
    train = torch.cat([_clusters(n=150, d=12)[0], _clusters(n=150, d=6, seed=1)[0]], 1)
    labels = _clusters(n=150, d=12)[1]
    val = torch.cat([_clusters(n=60, d=12, seed=2)[0], _clusters(n=60, d=6, seed=5)[0]], 1)
    queries = torch.randn(25, 18, generator=torch.Generator().manual_seed(6)) * 3
    return train, labels, val, queries, torch.zeros(60, 3), torch.zeros(25, 3)


def test_mean_combine_averages_the_parts_standardised_on_val_and_old_files_load_as_max() -> None:
    train, labels, val, queries, *no_logits = _staged()
    mean = fit_detector("mahalanobis+knn+stage", train, labels, k=5, split=12, val=(val, no_logits[0]), combine="mean")
    largest = fit_detector("mahalanobis+knn+stage", train, labels, k=5, split=12, val=(val, no_logits[0]), combine="max")
    with torch.no_grad():
        raw_val = [part(val, no_logits[0]).double() for part in mean.parts]
        raw = torch.stack([part(queries, no_logits[1]).double() for part in mean.parts], 1)
        median = torch.stack([torch.quantile(v, 0.5) for v in raw_val])
        high = torch.stack([torch.quantile(v, 0.95) for v in raw_val])
        torch.testing.assert_close(mean(queries, no_logits[1]).double(), ((raw - median) / (high - median)).mean(1),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(largest(queries, no_logits[1]).double(), (raw / high).max(1).values,
                                   rtol=1e-4, atol=1e-4)
        # each part is put on the same footing: on val, every standardised part has median 0 and 95th percentile 1
        standardised = (torch.stack(raw_val, 1) - median) / (high - median)
        torch.testing.assert_close(torch.quantile(standardised, 0.95, dim=0), torch.ones(3, dtype=torch.float64))
        # rebuilt from its tensors it scores the same; a file from before `combine` (no centres, no
        # setting) is the max it was fitted as
        rebuilt = build_detector("mahalanobis+knn+stage", mean.state(), k=5, split=12, combine="mean")
        torch.testing.assert_close(rebuilt(queries, no_logits[1]), mean(queries, no_logits[1]))
        old = {k: v for k, v in largest.state().items() if k != "centres"}
        torch.testing.assert_close(build_detector("mahalanobis+knn+stage", old, k=5, split=12)(queries, no_logits[1]),
                                   largest(queries, no_logits[1]))
    with pytest.raises(PlantidError, match="combine detector parts 'median'"):
        fit_detector("mahalanobis+knn", train, labels, k=5, val=(val, no_logits[0]), combine="median")


def test_low_rank_parts_equal_the_full_ones_at_full_rank_and_keep_r_by_d_tensors_below_it() -> None:
    train, labels, val, queries, *no_logits = _staged()

    def fit(rank):
        return fit_detector("mahalanobis+knn+stage", train, labels, k=5, split=12, val=(val, no_logits[0]),
                            combine="mean", rank=rank)

    full = fit(None)
    with torch.no_grad():
        # at rank = the width nothing is dropped: the low-rank forms give the full parts' scores
        penultimate = train[:, :12]
        torch.testing.assert_close(LowRankMahalanobis.fit(penultimate, labels, rank=12)(queries[:, :12], None),
                                   Mahalanobis.fit(penultimate, labels)(queries[:, :12], None), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ProjectedKNN.fit(penultimate, labels, k=5, rank=12)(queries[:, :12], None),
                                   KNNDistance.fit(penultimate, labels, k=5)(queries[:, :12], None), rtol=1e-4, atol=1e-4)
        # a rank at or above a part's width leaves that part as it was
        same = fit(12)
        assert [type(p.detector).__name__ for p in same.parts] == ["Mahalanobis", "KNNDistance", "Mahalanobis"]
        torch.testing.assert_close(same(queries, no_logits[1]), full(queries, no_logits[1]))
        small = fit(4)
        shapes = {k: tuple(v.shape) for k, v in small.state().items()}
        assert shapes["part0.basis"] == (4, 12) and shapes["part1.bank"] == (150, 4) and shapes["part2.basis"] == (4, 6)
        assert "part0.whiten" not in shapes and sum(v.numel() for v in small.state().values()) < sum(
            v.numel() for v in full.state().values())
        # rebuilt from its tensors (no setting says it is low-rank) it scores the same
        rebuilt = build_detector("mahalanobis+knn+stage", small.state(), k=5, split=12, combine="mean")
        torch.testing.assert_close(rebuilt(queries, no_logits[1]), small(queries, no_logits[1]))
        # a photo that leaves the training photos along a direction the rank dropped still stands out
        _, _, dropped = torch.linalg.svd(train[:, :12] - train[:, :12].mean(0), full_matrices=False)
        away = train[:20].clone()
        away[:, :12] += 6.0 * dropped[-1] * train[:, :12].std(0).max()
        val_scores = small(val, no_logits[0]).numpy()
        assert (small(away, torch.zeros(20, 3)) > choose_threshold(val_scores, 0.95)).float().mean() >= 0.9


def test_logit_detectors_score_flat_logits_as_less_known() -> None:
    confident = torch.tensor([[8.0, 0.0, 0.0]])
    flat = torch.tensor([[0.5, 0.4, 0.3]])
    for name in ("energy", "maxlogit", "msp"):
        detector = fit_detector(name, torch.zeros(3, 2), torch.arange(3))
        assert detector(torch.zeros(1, 2), flat) > detector(torch.zeros(1, 2), confident), name


def test_unknown_detector_name_is_a_one_line_error() -> None:
    with pytest.raises(PlantidError, match="unknown OOD detector 'lof'"):
        fit_detector("lof", torch.zeros(2, 2), torch.zeros(2))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.95, 0.99])
def test_threshold_keeps_at_least_the_target_share(keep: float) -> None:
    scores = np.random.default_rng(0).normal(size=37)
    threshold = choose_threshold(scores, keep)
    kept = np.mean(scores <= threshold)
    assert kept >= keep
    assert kept - 1 / len(scores) < keep  # the smallest such threshold: one photo fewer would miss it


def test_tiny_run_rejects_generated_images_and_keeps_its_own_photos(trust_run: Path) -> None:
    from plantid.data.images import load_image
    from plantid.data.split import read_manifest
    from plantid.infer.predictor import Predictor

    predictor = Predictor.from_run(trust_run)
    assert predictor.note is None and predictor.threshold is not None
    manifest = read_manifest(trust_run / "split.csv")
    for split, least in (("val", 0.95), ("test", 0.8)):  # val: exact by construction; test: 30 photos of sampling
        photos = np.stack([load_image(r.path, 32) for r in manifest.rows_for(split)])
        _, scores = predictor.predict_scored(photos)
        assert np.mean(scores <= predictor.threshold) >= least, split
    for kind, images in generated_ood(trust_run).items():
        probabilities, scores = predictor.predict_scored(images)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert np.mean(scores > predictor.threshold) == 1.0, kind


def test_predictions_carry_unknown_and_score(trust_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from plantid.infer.predictor import Predictor

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(noise)
    own = sorted((trust_run.parent / "photos" / "a").glob("*.jpg"))[0]
    predictor = Predictor.from_run(trust_run)
    got = {Path(p.source).name: p for p in predictor.predict([str(noise), str(own)])}
    assert got["noise.png"].unknown is True and got["noise.png"].ood_score > predictor.threshold
    assert got[own.name].unknown is False and got[own.name].ood_score <= predictor.threshold
    assert got[own.name].top[0][0] == "a"


def test_auroc_counts_ties_half_and_orders_scores() -> None:
    from plantid.evaluate.trust_metrics import ood_auroc

    assert ood_auroc(np.array([0.1, 0.2]), np.array([5e6, 7e6])) == 1.0  # large raw scores, no sigmoid squashing
    assert ood_auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert ood_auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert ood_auroc(np.array([0.0, 2.0]), np.array([1.0, 3.0])) == 0.75  # 3 of 4 pairs ordered
    assert ood_auroc(np.array([]), np.array([1.0])) is None


def test_the_default_detector_reads_no_stage_and_rejects_noise(trust_run_copy: Path) -> None:
    """mahalanobis+knn fits on the penultimate features alone: no taps in its settings, and the
    config's way to combine its parts (mean by default) saved with them."""
    from plantid.config import TrustConfig
    from plantid.infer.predictor import Predictor
    from plantid.trustfit.fit import fit_trust

    trust, _ = fit_trust(trust_run_copy, TrustConfig(detector="mahalanobis+knn", k=5))
    assert trust.settings == {"k": 5, "combine": "mean", "rank": 128} and trust.head().taps == ()
    predictor = Predictor.from_run(trust_run_copy)
    noise = generated_ood(trust_run_copy)["noise"]
    _, scores = predictor.predict_scored(noise)
    assert np.mean(scores > predictor.threshold) == 1.0
