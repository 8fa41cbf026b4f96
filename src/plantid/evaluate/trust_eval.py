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

and two figures: a reliability diagram and the score histograms (`trust_figure_names`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from plantid.errors import PlantidError

log = logging.getLogger("plantid")


def trust_figure_names(json_name: str) -> dict[str, str]:
    """eval.json -> reliability.png, ood_scores.png; eval_val.json -> reliability_val.png, ..."""
    tag = json_name[len("eval"):-len(".json")]
    return {"reliability": f"reliability{tag}.png", "ood": f"ood_scores{tag}.png"}


def ood_photos(folder: Path) -> list[str]:
    """Every photo under a folder of foreign photos, any layout (recursive, hidden files skipped)."""
    from plantid.infer.cli_predict import expand_inputs

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PlantidError(f"--ood {folder}: not a folder; pass a folder of photos that are none of the run's species")
    return [str(p) for p in expand_inputs([str(folder)])]


def evaluate_trust(trained, trust, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                   ood_folders: list[Path], device: str = "cpu", batch_size: int = 128) -> tuple[dict[str, Any], dict]:
    """The "trust" entry of eval.json and the raw scores for the figures ({"split": .., folder: ..})."""
    from plantid.evaluate.trust_metrics import calibration, ood_auroc, share_above
    from plantid.infer.predictor import TorchBackend
    from plantid.trust.calibration import ece_if_calibrated, nll
    from plantid.trust.selective import selective_summary
    from plantid.trust.features import features_and_logits, folder_pixels

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


def reliability_figure(section: dict[str, Any], title: str = "Reliability") -> Figure:
    """Accuracy against confidence per bin, before and after the temperature, with the diagonal."""
    from plantid.evaluate.plots import _style

    cal = section["calibration"]
    with _style():
        fig = Figure(figsize=(5.6, 4.4))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="perfect calibration")
        for key, colour, label in (("bins_before", "#E45756", f"softmax (ECE {100 * cal['ece_before']:.1f}%)"),
                                   ("bins_after", "#4C78A8", f"T = {section['temperature']:.2f} (ECE {100 * cal['ece_after']:.1f}%)")):
            bins = [b for b in cal[key] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(loc="upper left", frameon=False)
    return fig


def ood_scores_figure(raw: dict[str, np.ndarray], threshold: float, split_name: str,
                      title: str = "Not one of the species: OOD scores") -> Figure:
    """Histograms of the score for the evaluated photos and each foreign folder, with the threshold."""
    from plantid.evaluate.plots import _style

    colours = ["#54A24B", "#E45756", "#F58518", "#B279A2", "#72B7B2", "#9D755D"]
    finite = np.concatenate([v[np.isfinite(v)] for v in raw.values() if len(v)] + [np.array([threshold])])
    low, high = float(finite.min()), float(finite.max())
    log_x = low > 0 and high / max(low, 1e-12) > 100
    edges = np.geomspace(low, high, 40) if log_x else np.linspace(low, high, 40)
    with _style():
        fig = Figure(figsize=(6.4, 3.8))
        ax = fig.add_subplot()
        for i, (name, scores) in enumerate(raw.items()):
            label = f"{split_name} photos" if name == "split" else name
            if len(scores):
                ax.hist(scores, bins=edges, alpha=0.55, color=colours[i % len(colours)], label=f"{label} ({len(scores)})",
                        density=True)
        ax.axvline(threshold, color="#333333", lw=1.5, ls="--", label="threshold (above: unknown)")
        if log_x:
            import matplotlib.ticker

            ax.set_xscale("log")  # mathtext is off in plots' style: plain tick labels
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("OOD score (higher = less like the training photos)")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(frameon=False, fontsize=8)
    return fig
