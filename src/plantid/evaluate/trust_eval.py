"""The trust part of `plantid evaluate`: calibration before and after the run's temperature, and
(with `--ood DIR ...`) how well the run's out-of-distribution score tells its own photos from
photos of other things, at the run's threshold.

Results go into eval.json under "trust":

    {"detector", "threshold", "temperature", "keep",
     "kept": share of the evaluated photos answered known (score <= threshold),
     "answers": {"photos", "answered", "coverage", "answered_accuracy", "unsure", "unknown"}: the three
                answers (plantid.infer.answers) on the evaluated photos, with "answer_level" beside "threshold",
     "calibration": {"ece_before", "ece_after", "nll_before", "nll_after", "bins_before", "bins_after",
                     "val_ece_crossfit", "ece_if_calibrated": [mean, 5th, 95th percentile]},
     "ood": [{"folder", "n_images", "skipped", "rejected", "auroc"}, ...]}

and two figures (plantid.evaluate.plots): a reliability diagram and the score histograms.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plantid.errors import PlantidError
from plantid.evaluate.trust_metrics import calibration, ood_auroc, share_above
from plantid.infer.cli_predict import expand_inputs
from plantid.infer.predictor import TorchBackend
from plantid.trust.calibration import ece_if_calibrated, nll
from plantid.trust.selective import selective_summary
from plantid.trustfit.features import features_and_logits, folder_pixels

log = logging.getLogger("plantid")


def ood_photos(folder: Path) -> list[str]:
    """Every photo under a folder of foreign photos, any layout (recursive, hidden files skipped)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PlantidError(f"--ood {folder}: not a folder; pass a folder of photos that are none of the run's species")
    return [str(p) for p in expand_inputs([str(folder)])]


def evaluate_trust(trained, trust, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                   ood_folders: list[Path], device: str = "cpu", batch_size: int = 128) -> tuple[dict[str, Any], dict]:
    """The "trust" entry of eval.json and the raw scores for the figures ({"split": .., folder: ..})."""
    backend = TorchBackend(trained, (), device)
    head = trust.head()

    def scores_of(pixels: np.ndarray, picked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = features_and_logits(backend, pixels, picked, batch_size, head.taps)
        with torch.no_grad():
            _, score = head(torch.from_numpy(feats), torch.from_numpy(logits))
        return score.double().numpy(), logits

    split_scores, logits = scores_of(images, rows)
    z, y = torch.from_numpy(logits).double(), torch.from_numpy(np.asarray(labels, np.int64))
    before = calibration(torch.softmax(z, 1).numpy(), labels)
    calibrated = torch.softmax(z / trust.temperature, 1)
    after = calibration(calibrated.numpy(), labels)
    section: dict[str, Any] = {
        **trust.summary(),
        "kept": share_above(-split_scores, -trust.threshold),  # score <= threshold
        # the three answers on these photos: coverage (named a species) and the accuracy of those named
        "answers": selective_summary(calibrated.numpy(), labels, split_scores > trust.threshold, trust.answer_level),
        "keep_promised": trust.measured.get("keep_promised"),
        "val_photos": trust.measured.get("val_photos"),
        "keep_confidence": trust.measured.get("keep_confidence"),
        "answer_level_rule": trust.measured.get("answer_level_rule"),  # how val chose the level
        "calibration": {"ece_before": before["ece"], "ece_after": after["ece"],
                        "nll_before": round(nll(z, y), 6), "nll_after": round(nll(z, y, trust.temperature), 6),
                        "bins_before": before["bins"], "bins_after": after["bins"],
                        # val photos each scaled by a temperature fitted without them (train time)
                        "val_ece_crossfit": trust.measured.get("val_ece_crossfit"),
                        # what a perfectly calibrated model would measure on these photos: the noise floor
                        "ece_if_calibrated": [round(v, 6) for v in ece_if_calibrated(calibrated)]},
        "ood": [],
    }
    raw = {"split": split_scores}
    for folder in ood_folders:
        paths = ood_photos(folder)
        pixels, used, skipped = folder_pixels(paths, trained.image_size)
        for path, reason in skipped:
            log.warning("skipping %s: %s", path, reason)
        scores = scores_of(pixels, None)[0] if len(used) else np.zeros(0)
        name = Path(folder).name or str(folder)
        raw[name] = scores
        section["ood"].append({"folder": str(folder), "n_images": len(used), "skipped": len(skipped),
                               "rejected": share_above(scores, trust.threshold),
                               "auroc": ood_auroc(split_scores, scores)})
    return section, raw
