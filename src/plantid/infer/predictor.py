"""The Predictor: photos in, species probabilities out, with one preprocessing and two backends.

Preprocessing is `plantid.data.images.load_image` (decode, EXIF, RGB, resize) for both
backends; the torch backend runs the run's Classifier, the onnx backend runs the exported
model.onnx with onnxruntime and no PyTorch model code. CLI prediction, evaluation and the web
server all go through this class.

When the run has trust files (plantid.trust, fitted by `plantid train` or `plantid trust RUN`)
both backends return temperature-calibrated probabilities and an out-of-distribution score per
photo, and a Prediction says `unknown` when the score is above the run's threshold: the photo
does not look like any species the model knows. Each Prediction carries one of three answers
(plantid.infer.answers): a species, unsure between two, or not one of the species. Older runs
predict as before, with a note.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plantid.data.images import BadImageError, load_image
from plantid.errors import PlantidError
from plantid.infer.answers import Answer, answer_for
from plantid.infer.view_names import parse_tta
from plantid.runtime import keep_freed_memory

if TYPE_CHECKING:  # torch and timm load only for the torch backend: the onnx one starts fast
    from plantid.infer.checkpoint import TrainedModel
    from plantid.trust.store import FittedTrust

BatchFn = Callable[[np.ndarray], np.ndarray]  # uint8 N x S x S x 3 -> float N x K probabilities
NO_TRUST_NOTE = ("{run}: no trust files, so photos of other things are not flagged unknown and probabilities are "
                 "not calibrated; fit them with `plantid trust {run}`")


@dataclass
class Prediction:
    """The outcome for one input: probabilities, or the reason it could not be read."""

    source: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    ood_score: float | None = None  # higher = less like the training photos; None without trust files
    unknown: bool | None = None  # score above the run's threshold; None without trust files
    answer: Answer | None = None  # species, unsure between two, or not one of the species (plantid.infer.answers)

    @property
    def ok(self) -> bool:
        return self.error is None


class TorchBackend:
    """Runs a TrainedModel on the CPU (or a given device), with optional TTA views.

    With `trust` (a plantid.trust.store.FittedTrust) the probabilities are calibrated and
    `scored` also returns each photo's OOD score, computed on the photo itself (not the views).
    """

    def __init__(self, trained: "TrainedModel", views: tuple[str, ...] = (), device: str = "cpu",
                 trust: "FittedTrust | None" = None):
        import torch

        keep_freed_memory()
        self.trained = trained
        self.views = views
        self.device = torch.device(device)
        self.model = trained.model.to(self.device).eval()
        self.trust = trust
        self.head = trust.head().to(self.device) if trust is not None else None

    def _input(self, images: np.ndarray):
        import torch

        from plantid.data.tensors import to_unit_float  # lazy: torch, only for the torch backend

        return to_unit_float(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))

    def features_and_logits(self, images: np.ndarray, taps: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Features (N x D: penultimate, then the `taps` modules' pooled outputs) and logits (N x K)
        of a uint8 batch, float32, one pass."""
        import torch

        with torch.inference_mode():
            features, logits = self.model.features_and_logits(self._input(images), taps)
        return features.float().cpu().numpy(), logits.float().cpu().numpy()

    def scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities N x K, OOD scores N or None without trust) of a uint8 batch."""
        import torch

        from plantid.infer.tta import predict_proba  # lazy: torch, only for the torch backend

        x = self._input(images)
        with torch.inference_mode():
            if self.head is None:
                return predict_proba(self.model, x, self.views).cpu().numpy(), None
            features, logits = self.model.features_and_logits(x, self.head.taps)
            probabilities, scores = self.head(features, logits)
            if self.views:
                probabilities = predict_proba(_Tempered(self.model, self.head.temperature), x, self.views)
            return probabilities.cpu().numpy(), scores.float().cpu().numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.scored(images)[0]

    def trust_summary(self) -> dict | None:
        """Detector, temperature, threshold and keep of the run's trust files, or None."""
        return self.trust.summary() if self.trust is not None else None


def _Tempered(model, temperature):
    """The model with its logits divided by the temperature (TTA then averages calibrated views)."""
    from torch import nn

    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x).float() / temperature

    return Tempered().eval()


class Predictor:
    """Species probabilities for files, bytes or decoded arrays, through one backend."""

    def __init__(self, classes: Sequence[str], image_size: int, batch_fn: BatchFn, model_id: str, backend: str,
                 trained: "TrainedModel | None" = None):
        self.classes = list(classes)
        self.image_size = image_size
        self.batch_fn = batch_fn
        self.model_id = model_id
        self.backend = backend
        self.trained = trained  # the torch model, when backend == "torch" (used by Grad-CAM)
        self.note: str | None = None  # set by from_run for a run without trust files

    @property
    def trust(self) -> dict | None:
        """The backend's trust summary (detector, temperature, threshold, keep), or None without trust files."""
        info = getattr(self.batch_fn, "trust_summary", None)
        return info() if callable(info) else None

    @property
    def threshold(self) -> float | None:
        """OOD scores above this mean "unknown"; None when the run has no trust files."""
        info = self.trust
        return None if info is None else float(info["threshold"])

    @property
    def answer_level(self) -> float | None:
        """Calibrated top probability below which a photo is answered "unsure"; None without one."""
        level = (self.trust or {}).get("answer_level")
        return None if level is None else float(level)

    @property
    def views(self) -> tuple[str, ...]:
        """The TTA views each photo's probabilities average over; empty means the photo alone."""
        return self.batch_fn.views if isinstance(self.batch_fn, TorchBackend) else ()

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, backend: str = "torch", tta: str | None = None,
                 device: str = "cpu") -> "Predictor":
        """Load a run folder for prediction: backend 'torch' (checkpoint), 'onnx' or 'onnx-int8' (exported).

        `tta` is the `--tta` text (plantid.infer.view_names.parse_tta; 'default' is the run's `eval.tta`).
        """
        run_dir = Path(run_dir)
        wants_tta = bool(parse_tta(tta))  # a bad view name fails before the checkpoint is read
        if backend == "torch":
            # lazy: torch loads only for the torch backend, so ONNX predictions start fast
            from plantid.infer.checkpoint import load_trained
            from plantid.trust.store import load_trust

            trained = load_trained(run_dir)
            views = parse_tta(tta, default=trained.config.eval.tta)
            folder = trained.checkpoint.parent
            trust = load_trust(folder, trained.checkpoint, trained.classes)
            predictor = cls(trained.classes, trained.image_size, TorchBackend(trained, views, device, trust=trust),
                            trained.model_id, "torch", trained)
            if trust is None:
                predictor.note = NO_TRUST_NOTE.format(run=folder)
            return predictor
        if backend in ("onnx", "onnx-int8"):
            if wants_tta:
                raise PlantidError("TTA runs with the torch backend; drop --tta or use --backend torch")
            from plantid.infer.onnx_backend import OnnxBackend  # lazy: onnxruntime, only for this backend

            onnx = OnnxBackend.from_run(run_dir, quantized=backend == "onnx-int8")
            predictor = cls(onnx.classes, onnx.image_size, onnx, onnx.model_id, backend)
            if onnx.trust_summary() is None:
                predictor.note = (f"{onnx.model_path}: exported with no trust files, so photos of other things are "
                                  f"not flagged unknown; run `plantid trust RUN`, then export again")
            return predictor
        raise PlantidError(f"unknown backend '{backend}': use torch, onnx or onnx-int8")

    def preprocess(self, source: str | os.PathLike | bytes) -> np.ndarray:
        """The one preprocessing: decode, orient, RGB, resize to the model's input size."""
        return load_image(source, self.image_size)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N x K) for a uint8 N x S x S x 3 batch already at the model's size."""
        self._check(images)
        return self.batch_fn(images)

    def _check(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 N x {self.image_size} x {self.image_size} x 3, got {images.dtype} {images.shape}")

    def predict_scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities N x K, OOD scores N or None without trust) for a uint8 batch at the model's size."""
        self._check(images)
        scored = getattr(self.batch_fn, "scored", None)
        if callable(scored):
            probabilities, scores = scored(images)
            return np.asarray(probabilities), None if scores is None else np.asarray(scores)
        return self.batch_fn(images), None

    def predict(self, sources: Sequence[str | os.PathLike | bytes], top_k: int = 3, batch_size: int = 64) -> list[Prediction]:
        """Predict every source; unreadable ones come back with `error` set instead of raising."""
        results: list[Prediction] = []
        pending: list[tuple[Prediction, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            probs, scores = self.predict_scored(np.stack([arr for _, arr in pending]))
            threshold = self.threshold if scores is not None else None
            level = self.answer_level
            for i, ((pred, _), p) in enumerate(zip(pending, probs)):
                pred.probabilities = p
                pred.top = self.top_k(p, top_k)
                if scores is not None and threshold is not None:
                    pred.ood_score = float(scores[i])
                    pred.unknown = bool(scores[i] > threshold)
                pred.answer = answer_for(self.top_k(p, 2), pred.unknown, level, len(self.classes))
            pending.clear()

        for source in sources:
            name = "<upload>" if isinstance(source, (bytes, bytearray)) else str(source)
            pred = Prediction(source=name)
            results.append(pred)
            try:
                pending.append((pred, self.preprocess(source)))
            except BadImageError as exc:
                pred.error = exc.reason
            if len(pending) >= batch_size:
                flush()
        flush()
        return results

    def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most likely classes with their probabilities, most likely first."""
        order = np.argsort(-probabilities, kind="stable")[: max(1, min(k, len(self.classes)))]
        return [(self.classes[i], float(probabilities[i])) for i in order]
