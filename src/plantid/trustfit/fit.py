"""Fit a run's trust after training, on its TRAIN and VAL photos only (the test split stays unseen):

1. penultimate features and logits of the train and val photos (one pass each, no TTA), and for
   a detector that reads it the pooled output of the backbone's last stage in the same pass;
2. the OOD detector on the training features (`trust.detector`, plantid.trust.ood);
3. the temperature on the validation logits (plantid.trust.calibration);
4. the threshold: a finite-sample bound on the val scores that keeps `trust.keep` (default 95%) of
   new photos with probability `trust.keep_confidence`, and the answer level below which a photo is
   "unsure" (plantid.trust.selective);
5. RUN/trust.json + RUN/trust.safetensors, written atomically (plantid.trust.store).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plantid.config import TrustConfig, load_run_config
from plantid.errors import PlantidError
from plantid.infer.checkpoint import load_trained
from plantid.infer.predictor import TorchBackend
from plantid.runfolder import RunFolder
from plantid.trust.calibration import crossfit_probabilities, expected_calibration_error, fit_temperature, nll
from plantid.trust.ood import fit_detector
from plantid.trust.selective import choose_answer_level, conformal_threshold, promise_note, selective_summary
from plantid.trust.store import FittedTrust, save_trust
from plantid.trustfit.features import features_and_logits, manifest_pixels

log = logging.getLogger("plantid")


STAGE_DETECTORS = ("mahalanobis+knn+stage",)


def detector_settings(cfg: TrustConfig) -> dict[str, Any]:
    """The settings a detector is built with (saved beside its tensors)."""
    if cfg.detector.startswith("mahalanobis+knn"):
        return {"k": cfg.k, "combine": cfg.combine, **({"rank": cfg.rank} if cfg.rank is not None else {})}
    return {"k": cfg.k} if "knn" in cfg.detector else {}


def feature_layout(cfg: TrustConfig, model, backend, probe: np.ndarray) -> dict[str, Any]:
    """{"taps": backbone modules whose pooled outputs follow the penultimate features, "split": the
    penultimate width} for a detector that reads the last stage, else {} (penultimate features only).

    `probe` is one photo (uint8 1 x S x S x 3): the penultimate width is read off a forward pass,
    whatever the head.
    """
    taps = model.last_stage() if cfg.detector in STAGE_DETECTORS else ()
    if not taps:
        return {}
    return {"taps": list(taps), "split": int(backend.features_and_logits(probe)[0].shape[1])}


def choose_threshold(scores: np.ndarray, keep: float) -> float:
    """The smallest score t with at least `keep` of `scores` at or below it (those photos are kept)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise PlantidError("no validation photos to choose the unknown-photo threshold on; split with val > 0")
    return float(s[min(len(s) - 1, max(0, math.ceil(keep * len(s)) - 1))])


def fit_from_features(cfg: TrustConfig, classes: list[str], train_features: np.ndarray, train_labels: np.ndarray,
                      val_features: np.ndarray, val_logits: np.ndarray, val_labels: np.ndarray,
                      layout: dict[str, Any] | None = None) -> FittedTrust:
    """Detector on train features, temperature and threshold on val: a FittedTrust (nothing written).

    `layout` ({"taps", "split"}, see `feature_layout`) says which columns past the penultimate
    ones the features carry; it is saved with the detector's settings.
    """
    if len(train_features) == 0:
        raise PlantidError("the run has no training photos to fit the OOD detector on")
    settings = {**detector_settings(cfg), **(layout or {})}
    vf, vz, vy = torch.from_numpy(val_features), torch.from_numpy(val_logits), torch.from_numpy(val_labels)
    detector = fit_detector(cfg.detector, torch.from_numpy(train_features), torch.from_numpy(train_labels),
                            val=(vf, vz), **settings)
    temperature = fit_temperature(vz, vy)
    with torch.no_grad():
        scores = detector(vf, vz).double().numpy()
    threshold, promised = conformal_threshold(scores, cfg.keep, cfg.keep_confidence)
    if not promised:
        log.warning("trust: %s", promise_note(len(scores), cfg.keep, cfg.keep_confidence))
    try:  # each val photo calibrated by a temperature fitted without it, so the level is not flattered
        val_probabilities = crossfit_probabilities(vz, vy).numpy()
    except PlantidError:
        val_probabilities = torch.softmax(vz.double() / temperature, 1).numpy()
    level, level_rule = choose_answer_level(val_probabilities, val_labels, scores <= threshold, cfg.answered_accuracy)
    measured = {
        "train_photos": int(len(train_features)),
        "val_photos": int(len(val_features)),
        "val_kept": round(float(np.mean(scores <= threshold)), 6),
        "keep_promised": promised,
        "keep_confidence": cfg.keep_confidence,
        "val_answers": selective_summary(val_probabilities, val_labels, scores > threshold, level),
        "answer_level_rule": level_rule,
        "val_nll": [round(nll(vz, vy), 6), round(nll(vz, vy, temperature), 6)],
        "val_ece": [round(expected_calibration_error(torch.softmax(vz, 1), vy), 6),
                    round(expected_calibration_error(torch.softmax(vz / temperature, 1), vy), 6)],
    }
    try:  # the honest estimate: each val photo calibrated by a temperature fitted without it
        measured["val_ece_crossfit"] = round(expected_calibration_error(crossfit_probabilities(vz, vy), vy), 6)
    except PlantidError:  # too few val photos to split; the in-sample numbers above still stand
        pass
    return FittedTrust(detector=cfg.detector, settings=settings, tensors=detector.state(), temperature=temperature,
                       threshold=threshold, keep=cfg.keep, classes=list(classes), measured=measured,
                       answer_level=level, answered_accuracy=cfg.answered_accuracy)


def fit_trust(run_dir: str | Path, cfg: TrustConfig | None = None, device: str = "cpu") -> tuple[FittedTrust, list[Path]]:
    """Fit and write a run's trust files (RUN/trust.json, RUN/trust.safetensors); return them and their paths.

    `cfg` defaults to the run's own `trust` settings (config.yaml).
    """
    trained = load_trained(Path(run_dir))
    folder = trained.checkpoint.parent
    cfg = cfg or trained.config.trust
    pixels, rows, labels = manifest_pixels(folder, trained)
    if len(rows["val"]) == 0:
        raise PlantidError(f"{folder}: the val split is empty; trust is fitted on validation photos (split with val > 0)")
    backend = TorchBackend(trained, (), device)
    batch = trained.config.data.eval_batch_size
    layout = feature_layout(cfg, trained.model, backend, pixels[rows["val"][:1]])
    taps = tuple(layout.get("taps", ()))
    train_f, _ = features_and_logits(backend, pixels, rows["train"], batch, taps)
    val_f, val_z = features_and_logits(backend, pixels, rows["val"], batch, taps)
    trust = fit_from_features(cfg, trained.classes, train_f, labels["train"], val_f, val_z, labels["val"], layout)
    written = save_trust(folder, trust, trained.checkpoint)
    m = trust.measured
    log.info("trust: %s detector, threshold %.4g keeps %.1f%% of %d val photos; temperature %.3f "
             "(val ECE %.2f%% -> %.2f%%, %.2f%% cross-fitted)", trust.detector, trust.threshold, 100 * m["val_kept"],
             m["val_photos"], trust.temperature, 100 * m["val_ece"][0], 100 * m["val_ece"][1],
             100 * m.get("val_ece_crossfit", float("nan")))
    answers = m["val_answers"]
    log.info("trust: below %.0f%% the answer is \"unsure between A and B\" (%s); on val %.0f%% of photos named a "
             "species, %s right", 100 * trust.answer_level, m["answer_level_rule"], 100 * answers["coverage"],
             "none" if answers["answered_accuracy"] is None else f"{100 * answers['answered_accuracy']:.1f}%")
    return trust, written


def fit_after_training(run_dir: str | Path, device: str = "cpu") -> FittedTrust | None:
    """`plantid train`'s last step: fit the run's trust unless its config says `trust.enabled: false`.

    A failure here (say, an empty val split) is logged as one line and leaves the trained run usable.
    """
    config_path = RunFolder(run_dir).config
    if config_path.is_file() and not load_run_config(config_path).trust.enabled:
        return None
    try:
        return fit_trust(run_dir, device=device)[0]
    except PlantidError as exc:
        log.warning("trust not fitted: %s (the run predicts without the unknown check; fix and run "
                    "`plantid trust %s`)", exc, run_dir)
        return None
