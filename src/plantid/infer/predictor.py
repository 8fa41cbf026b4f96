"""The Predictor: photos in, species probabilities out, with one preprocessing and two backends.

Preprocessing is `plantid.data.images.load_image` (decode, EXIF, RGB, resize) for both
backends; the torch backend runs the run's Classifier, the onnx backend runs the exported
model.onnx with onnxruntime and no PyTorch model code. CLI prediction, evaluation and the web
server all go through this class.
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
from plantid.runtime import keep_freed_memory

if TYPE_CHECKING:  # torch and timm load only for the torch backend: the onnx one starts fast
    from plantid.infer.checkpoint import TrainedModel

BatchFn = Callable[[np.ndarray], np.ndarray]  # uint8 N x S x S x 3 -> float N x K probabilities


@dataclass
class Prediction:
    """The outcome for one input: probabilities, or the reason it could not be read."""

    source: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class TorchBackend:
    """Runs a TrainedModel on the CPU (or a given device), with optional TTA views."""

    def __init__(self, trained: "TrainedModel", views: tuple[str, ...] = (), device: str = "cpu"):
        import torch

        keep_freed_memory()
        self.trained = trained
        self.views = views
        self.device = torch.device(device)
        self.model = trained.model.to(self.device).eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        from plantid.infer.tta import predict_proba
        from plantid.train.augment import to_unit_float

        x = to_unit_float(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        with torch.inference_mode():
            return predict_proba(self.model, x, self.views).cpu().numpy()


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
        from plantid.infer.view_names import parse_tta

        run_dir = Path(run_dir)
        wants_tta = bool(parse_tta(tta))  # a bad view name fails before the checkpoint is read
        if backend == "torch":
            from plantid.infer.checkpoint import load_trained

            trained = load_trained(run_dir)
            views = parse_tta(tta, default=trained.config.eval.tta)
            return cls(trained.classes, trained.image_size, TorchBackend(trained, views, device), trained.model_id,
                       "torch", trained)
        if backend in ("onnx", "onnx-int8"):
            if wants_tta:
                raise PlantidError("TTA runs with the torch backend; drop --tta or use --backend torch")
            from plantid.infer.onnx_backend import OnnxBackend

            onnx = OnnxBackend.from_run(run_dir, quantized=backend == "onnx-int8")
            return cls(onnx.classes, onnx.image_size, onnx, onnx.model_id, backend)
        raise PlantidError(f"unknown backend '{backend}': use torch, onnx or onnx-int8")

    def preprocess(self, source: str | os.PathLike | bytes) -> np.ndarray:
        """The one preprocessing: decode, orient, RGB, resize to the model's input size."""
        return load_image(source, self.image_size)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N x K) for a uint8 N x S x S x 3 batch already at the model's size."""
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 N x {self.image_size} x {self.image_size} x 3, got {images.dtype} {images.shape}")
        return self.batch_fn(images)

    def predict(self, sources: Sequence[str | os.PathLike | bytes], top_k: int = 3, batch_size: int = 64) -> list[Prediction]:
        """Predict every source; unreadable ones come back with `error` set instead of raising."""
        results: list[Prediction] = []
        pending: list[tuple[Prediction, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            probs = self.predict_arrays(np.stack([arr for _, arr in pending]))
            for (pred, _), p in zip(pending, probs):
                pred.probabilities = p
                pred.top = self.top_k(p, top_k)
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
