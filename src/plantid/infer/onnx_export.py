"""Export a trained model to ONNX with the preprocessing inside, checked against PyTorch.

The graph takes what `plantid.data.images.load_image` returns, stacked: uint8 N x S x S x 3
(input "images", dynamic batch), and returns softmax probabilities N x K ("probabilities"). The
uint8 -> [0, 1] conversion (`to_unit_float`), the mean/std normalization (buffers of the
Classifier) and the softmax all live in the graph, so a consumer only decodes and resizes.

When the run has trust files (plantid.trust), the graph also carries them: "probabilities" are
then the temperature-calibrated ones and a second output, "ood_score" (N), is the run's
out-of-distribution score; preprocessing.json's "trust" holds the threshold above which a photo
is unknown, so onnxruntime answers exactly as the PyTorch Predictor does.

Every export is checked before it is declared done: `onnx.checker`, then onnxruntime against
PyTorch on a random batch and on real photos of the run (max probability difference 1e-4).
Optionally an int8 model is written beside it (`plantid.infer.quantize`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from plantid import __version__ as plantid_version
from plantid.data.images import BadImageError, load_image
from plantid.data.split import read_manifest
from plantid.data.tensors import to_unit_float
from plantid.errors import PlantidError, first_line
from plantid.fileio import atomic_path, sha256_file, write_json_atomic
from plantid.infer.onnx_backend import (
    INPUT_NAME,
    INT8_MAX_DROP_POINTS,
    OUTPUT_NAME,
    SCORE_NAME,
    make_session,
)
from plantid.infer.quantize import CALIBRATION_IMAGES, DEFAULT_QUANTIZATION, accuracy_on, quantize_onnx
from plantid.records import EXPORT_FORMAT_PREFIX
from plantid.runfolder import INT8_FILE, PREPROCESSING_FILE, RunFolder
from plantid.trust.store import load_trust

log = logging.getLogger("plantid")

OPSET = 18  # onnxruntime >= 1.14 runs it; the submission may meet an older onnxruntime
RESIZE = "bilinear antialias stretch to square"
TOLERANCE = 1e-4  # max |p_onnx - p_torch| accepted for the fp32 model
# max |s_onnx - s_torch| / max(1, |s_torch|) accepted for the OOD score: float32 cosine similarities
# near 1 make k-NN distances of near-duplicate photos noisy at the 1e-4 level, far below any threshold
SCORE_TOLERANCE = 1e-3
VAL_CHECK_IMAGES = 1000  # val photos on which the int8 model's accuracy is compared with fp32's


_WRAPPER_CLASS: Any = None


def probability_model(classifier: Any, trust_head: Any = None) -> Any:
    """Wrap a Classifier: uint8 N x S x S x 3 -> softmax probabilities, the exact training input path.

    With `trust_head` (plantid.trust.ood.TrustHead) it returns (calibrated probabilities, OOD score).
    (A factory rather than a module-level class so that importing this module, and failing
    early on a bad run folder, does not import PyTorch.)
    """
    global _WRAPPER_CLASS
    if _WRAPPER_CLASS is None:
        import torch
        from torch import nn

        class ProbabilityModel(nn.Module):
            def __init__(self, classifier: nn.Module, trust_head: nn.Module | None = None):
                super().__init__()
                self.classifier = classifier
                self.trust_head = trust_head

            def forward(self, images: torch.Tensor) -> Any:
                x = to_unit_float(images)
                if self.trust_head is None:
                    return torch.softmax(self.classifier(x).float(), dim=1)
                features, logits = self.classifier.features_and_logits(x, self.trust_head.taps)
                return self.trust_head(features, logits)

        _WRAPPER_CLASS = ProbabilityModel
    return _WRAPPER_CLASS(classifier, trust_head).eval()


def export_onnx(trained: Any, run_dir: Path, target: Path, quantize: bool = False, quantization: str = DEFAULT_QUANTIZATION,
                calibration_images: int = CALIBRATION_IMAGES) -> list[Path]:
    """Write target (model.onnx), optionally model.int8.onnx, and preprocessing.json beside it.

    The run's trust files, when it has them, go into the graph (calibrated probabilities and an
    "ood_score" output) and their threshold into preprocessing.json.
    """
    import onnx

    target = Path(target)
    folder = target.parent
    size = trained.image_size
    trust = load_trust(trained.checkpoint.parent, trained.checkpoint, trained.classes)
    if trust is None:
        log.warning("%s has no trust files: the export will not flag photos of other things as unknown "
                    "(run `plantid trust %s` first)", trained.checkpoint.parent, trained.checkpoint.parent)
    wrapper = probability_model(trained.model, trust.head() if trust is not None else None)
    real = run_photos(run_dir, size, limit=16, split_order=("test", "val", "train"))
    t0 = time.perf_counter()
    int8_info: dict[str, Any] | None = None
    int8_path = folder / INT8_FILE
    # Nothing replaces the previous export until the new fp32 model is checked and, when asked
    # for, quantized: a failure at any step leaves the old files as they were.
    with atomic_path(target) as tmp:
        exporter = _torch_to_onnx(wrapper, size, tmp)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:  # onnx raises its own ValidationError types
            raise PlantidError(f"exported ONNX graph is invalid ({first_line(exc)})") from None
        max_diff = compare_with_torch(wrapper, tmp, size, real)
        log.info("exported %s in %.1f s (max |p_onnx - p_torch| = %.2e)", target, time.perf_counter() - t0, max_diff)
        if quantize:
            calib = run_photos(run_dir, size, limit=calibration_images, split_order=("train",))
            if quantization == "static" and len(calib) == 0:
                raise PlantidError(
                    f"{run_dir}: static quantization needs the run's training photos for calibration and none "
                    "could be read (moved?); use quantization='dynamic' or restore the photos listed in split.csv"
                )
            int8_info = quantize_onnx(tmp, int8_path, calib, mode=quantization)
            int8_info["accuracy"] = _int8_accuracy(trained, run_dir, tmp, int8_path, quantization)
            int8_info["sha256"] = sha256_file(int8_path)
            int8_info["size_bytes"] = int8_path.stat().st_size
        meta = preprocessing_metadata(trained, tmp, exporter, max_diff, int8_info, model_file=target.name)
        meta["trust"] = trust.summary() if trust is not None else None
        if trust is not None:
            meta["outputs"] = [OUTPUT_NAME, SCORE_NAME]
            meta["output"]["meaning"] = "softmax(logits / trust.temperature): calibrated probabilities, columns in the order of labels"
            meta["ood_score"] = {"name": SCORE_NAME, "dtype": "float32", "shape": ["batch"],
                                 "meaning": "higher = less like the training photos; unknown when above trust.threshold"}
    written = [target]
    if quantize:
        written.append(int8_path)
    elif int8_path.exists():
        int8_path.unlink()  # an int8 model of an earlier export would silently disagree with this one

    written.append(write_json_atomic(folder / PREPROCESSING_FILE, meta))
    return written


def _torch_to_onnx(wrapper: Any, size: int, path: Path) -> str:
    """Export with the torch.export-based exporter; fall back to the TorchScript one if it fails."""
    import warnings

    import torch

    dummy = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scored = getattr(wrapper, "trust_head", None) is not None
    output_names = [OUTPUT_NAME, SCORE_NAME] if scored else [OUTPUT_NAME]
    dynamic_axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                wrapper, (dummy,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=output_names, dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                external_data=False, optimize=True, verbose=False,
            )
            program.save(str(path), external_data=False)
            return f"torch.export (torch {torch.__version__})"
        except Exception as exc:  # exporter internals raise many types; the fallback is checked the same way
            log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                        first_line(exc)[:200])
            torch.onnx.export(
                wrapper, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=output_names, dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
            return f"torchscript (torch {torch.__version__})"


def compare_with_torch(wrapper: Any, path: Path, size: int, real: np.ndarray) -> float:
    """Max |p_onnx - p_torch| over a random batch (batch 3, not the export's 2) and real photos.

    A wrapper with a trust head also has its OOD scores compared, relative to their size
    (|s_onnx - s_torch| / max(1, |s_torch|) <= SCORE_TOLERANCE).
    """
    import torch

    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)]
    if len(real):
        batches.append(real)
    session = make_session(path)
    worst = 0.0
    names = [o.name for o in session.get_outputs()]
    for batch in batches:
        with torch.no_grad():
            out = wrapper(torch.from_numpy(batch))
        expected, expected_score = (out[0].numpy(), out[1].numpy()) if isinstance(out, tuple) else (out.numpy(), None)
        if (expected_score is not None) != (SCORE_NAME in names):
            raise PlantidError(f"{path}: {'lacks' if expected_score is not None else 'has'} the {SCORE_NAME} output "
                               "the run's trust files call for; export it again")
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if got.shape != expected.shape:
            raise PlantidError(f"exported ONNX model returns shape {got.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
        if expected_score is not None:
            score = session.run([SCORE_NAME], {INPUT_NAME: batch})[0]
            if score.shape != expected_score.shape:
                raise PlantidError(f"exported ONNX model returns scores of shape {score.shape}, PyTorch {expected_score.shape}")
            relative = float((np.abs(score - expected_score) / np.maximum(1.0, np.abs(expected_score))).max())
            if not np.isfinite(relative) or relative > SCORE_TOLERANCE:
                raise PlantidError(
                    f"exported ONNX model's OOD scores disagree with PyTorch (relative difference {relative:.2e} > "
                    f"{SCORE_TOLERANCE:g}); export again, or refit trust with another detector (`plantid trust RUN --detector knn`)"
                )
    if not np.isfinite(worst) or worst > TOLERANCE:
        raise PlantidError(
            f"exported ONNX model disagrees with PyTorch (max probability difference {worst:.2e} > {TOLERANCE:g}); "
            "the model uses an operator the exporter does not reproduce"
        )
    return worst


def run_photos(run_dir: Path, size: int, limit: int, split_order: tuple[str, ...]) -> np.ndarray:
    """Up to `limit` photos of the run (uint8 N x S x S x 3), from its split.csv, preferring `split_order`."""
    return labelled_run_photos(run_dir, size, limit, split_order)[0]


def labelled_run_photos(run_dir: Path, size: int, limit: int,
                        split_order: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """`run_photos` with each photo's class name: spread over the classes, unreadable photos skipped."""
    none = (np.zeros((0, size, size, 3), np.uint8), [])
    manifest_path = RunFolder(run_dir).manifest
    if not manifest_path.is_file() or limit <= 0:
        return none
    try:
        manifest = read_manifest(manifest_path)
    except PlantidError:
        return none
    rows = [r for split in split_order for r in manifest.rows_for(split)]
    # spread over classes: round-robin by label so a short calibration set still sees every class
    by_label: dict[str, list] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    ordered = []
    queues = list(by_label.values())
    while queues and len(ordered) < limit * 2:
        for q in queues:
            if q:
                ordered.append(q.pop(0))
        queues = [q for q in queues if q]
    images, labels = [], []
    for r in ordered:
        if len(images) >= limit:
            break
        try:
            images.append(load_image(r.path, size))
        except BadImageError:
            continue
        labels.append(r.label)
    return (np.stack(images), labels) if images else none


def _int8_accuracy(trained: Any, run_dir: Path, fp32_path: Path, int8_path: Path, mode: str) -> dict[str, Any] | None:
    """Both models' accuracy on the run's val photos; warns when int8 loses more than INT8_MAX_DROP_POINTS.

    Agreement on the calibration photos says little about accuracy: a cpu-default run (lite0,
    192 px) agreed with fp32 on 98% of them and still lost 3.8 points of test accuracy.
    """
    images, names = labelled_run_photos(run_dir, trained.image_size, VAL_CHECK_IMAGES, ("val",))
    index = {c: i for i, c in enumerate(trained.classes)}
    keep = [k for k, name in enumerate(names) if name in index]
    if not keep:
        return None
    check = accuracy_on(fp32_path, int8_path, images[keep], np.array([index[names[k]] for k in keep]), mode)
    check["split"] = "val"
    if check["drop_points"] > INT8_MAX_DROP_POINTS:
        log.warning("the int8 model loses %.1f points of val accuracy (fp32 %.2f%%, int8 %.2f%%, %d photos): "
                    "serve and predict with the fp32 model (--backend onnx) for this run",
                    check["drop_points"], 100 * check["fp32"], 100 * check["int8"], check["images"])
    else:
        log.info("int8 val accuracy %.2f%% (fp32 %.2f%%, %d photos)", 100 * check["int8"], 100 * check["fp32"],
                 check["images"])
    return check


def preprocessing_metadata(trained: Any, model_path: Path, exporter: str, max_diff: float,
                           int8: dict[str, Any] | None, model_file: str | None = None) -> dict[str, Any]:
    """What a consumer needs to feed the model, and where it came from (preprocessing.json)."""
    import onnx
    import torch

    mean = getattr(trained.model, "mean", None)
    std = getattr(trained.model, "std", None)
    ckpt = Path(trained.checkpoint)
    opset = next((o.version for o in onnx.load(str(model_path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), OPSET)
    return {
        "format": f"{EXPORT_FORMAT_PREFIX}/1",
        "model_file": model_file or model_path.name,
        "image_size": trained.image_size,
        "resize": RESIZE,
        "resize_detail": "PIL Image.resize((S, S), Image.BILINEAR, reducing_gap=None) of the RGB photo "
                         "after EXIF orientation; alpha composited on white; aspect ratio not kept",
        "input": {"name": INPUT_NAME, "layout": "NHWC", "dtype": "uint8", "range": [0, 255],
                  "shape": ["batch", trained.image_size, trained.image_size, 3], "channels": "RGB"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(trained.classes)],
                   "meaning": "softmax probabilities, columns in the order of labels"},
        "normalization": {
            "in_graph": True,
            "note": "x = images / 255 (NCHW), then (x - mean) / std inside the model; for information only",
            "mean": [float(v) for v in mean.flatten()] if isinstance(mean, torch.Tensor) else None,
            "std": [float(v) for v in std.flatten()] if isinstance(std, torch.Tensor) else None,
        },
        "labels": list(trained.classes),
        "num_classes": len(trained.classes),
        "model_id": trained.model_id,
        "model_name": trained.config.model.name,
        "opset": opset,
        "exporter": exporter,
        "max_abs_diff_vs_torch": max_diff,
        "sha256": sha256_file(model_path),
        "size_bytes": model_path.stat().st_size,
        "int8": int8,
        "source_checkpoint": str(ckpt.resolve()),
        "source_checkpoint_sha256": sha256_file(ckpt),
        "source_checkpoint_size": ckpt.stat().st_size,
        "plantid_version": plantid_version,
        "onnxruntime_min_version": "1.14",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

