"""Export a trained run: an ONNX model with the preprocessing inside, or a challenge submission.

`plantid export RUN --format onnx` writes RUN/export/model.onnx and preprocessing.json. The
graph takes what `plantid.data.images.load_image` returns, stacked: uint8 N x S x S x 3 (input
"images", dynamic batch), and returns softmax probabilities N x K ("probabilities"). The
uint8 -> [0, 1] conversion (`to_unit_float`), the mean/std normalization (buffers of the
Classifier) and the softmax all live in the graph, so a consumer only decodes and resizes.

Every export is checked before it is declared done: `onnx.checker`, then onnxruntime against
PyTorch on a random batch and on real photos of the run (max probability difference 1e-4).

`--quantize` adds model.int8.onnx: static QDQ quantization (per-channel 7-bit int8 weights,
uint8 activations) calibrated on photos of the run's train split; see `quantize_onnx` for why
7 bits. Static is the default because dynamic quantization only speeds up MatMul/Gemm; on
convolutions it falls back to ConvInteger, which is slower than fp32 on CPU (see
benchmarks/bench_inference.py).

`--format submission` writes a folder (default RUN/submission) for the course challenge:
model.py with `model(path).predict(X)` that needs only numpy, Pillow and onnxruntime (no
PyTorch, no plantid), model.onnx, preprocessing.json and README.txt. The folder is exercised
in a separate Python process before the export returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from plantid.errors import PlantidError, first_line
from plantid.fileio import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger("plantid")

EXPORT_DIR = "export"
SUBMISSION_DIR = "submission"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PREPROCESSING_FILE = "preprocessing.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
OPSET = 18  # onnxruntime >= 1.14 runs it; the submission may meet an older onnxruntime
RESIZE = "bilinear antialias stretch to square"
TOLERANCE = 1e-4  # max |p_onnx - p_torch| accepted for the fp32 model
FORMATS = ("onnx", "submission")
QUANTIZATIONS = ("static", "dynamic")
# Train photos (spread over the classes) for the activation ranges of static quantization. 64,
# 128, 256 and 512 photos, and Percentile/Entropy instead of MinMax, gave the same accuracy on
# tf_efficientnet_lite0 (within 1-2 test photos of 446); 128 keeps calibration a few seconds.
CALIBRATION_IMAGES = 128
SUBMISSION_SIZE = 96  # the course challenge feeds 96 x 96 x 3 images


_WRAPPER_CLASS: Any = None


def probability_model(classifier: Any) -> Any:
    """Wrap a Classifier: uint8 N x S x S x 3 -> softmax probabilities, the exact training input path.

    (A factory rather than a module-level class so that importing this module, and failing
    early on a bad run folder, does not import PyTorch.)
    """
    global _WRAPPER_CLASS
    if _WRAPPER_CLASS is None:
        import torch
        from torch import nn

        from plantid.train.augment import to_unit_float

        class ProbabilityModel(nn.Module):
            def __init__(self, classifier: nn.Module):
                super().__init__()
                self.classifier = classifier

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.classifier(to_unit_float(images)).float(), dim=1)

        _WRAPPER_CLASS = ProbabilityModel
    return _WRAPPER_CLASS(classifier).eval()


def _make_readable(path: Path) -> Path:
    """atomic_path's temporary files are created 0600; give exported files the usual umask mode."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)
    except OSError:
        pass
    return Path(path)


def check_run_folder(run_dir: Path) -> None:
    """Fail fast (before importing PyTorch) on a missing run folder or one without a checkpoint."""
    if run_dir.is_file() and run_dir.suffix == ".ckpt":
        return
    if not run_dir.is_dir():
        raise PlantidError(f"{run_dir}: no such run folder; train one with `plantid train --data DATA --out {run_dir}`")
    if not any((run_dir / name).is_file() for name in ("best.ckpt", "last.ckpt")):
        if not (run_dir / "config.yaml").is_file():
            raise PlantidError(f"{run_dir}: not a plantid run folder (no config.yaml, no checkpoint); "
                               "pass the --out folder of `plantid train`")
        raise PlantidError(
            f"{run_dir}: no best.ckpt or last.ckpt to export; finish training first "
            f"(`plantid train --resume {run_dir}`)"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_run(run_dir: str | os.PathLike, export_format: str, out: Path | None = None, quantize: bool = False,
               quantization: str = "static", calibration_images: int = CALIBRATION_IMAGES) -> list[Path]:
    """Export a run folder as 'onnx' or 'submission' and return the files/folders written.

    `quantization` ('static' or 'dynamic') picks how model.int8.onnx is made when `quantize`.
    """
    fmt = (export_format or "").strip().lower()
    if fmt not in FORMATS:
        raise PlantidError(f"unknown export format '{export_format}': use onnx or submission")
    if quantization not in QUANTIZATIONS:
        raise PlantidError(f"unknown quantization '{quantization}': use static or dynamic")
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    from plantid.infer.checkpoint import load_trained

    trained = load_trained(run_dir)  # PlantidError (exit 2) for a missing folder or checkpoint
    if trained.checkpoint.is_file() and run_dir.is_file():
        run_dir = trained.checkpoint.parent
    if fmt == "onnx":
        target = Path(out) if out is not None else run_dir / EXPORT_DIR / ONNX_FILE
        if target.suffix.lower() != ".onnx":
            target = target / ONNX_FILE
        return export_onnx(trained, run_dir, target, quantize=quantize, quantization=quantization,
                           calibration_images=calibration_images)
    folder = Path(out) if out is not None else run_dir / SUBMISSION_DIR
    return [export_submission(trained, run_dir, folder, quantize=quantize, quantization=quantization,
                              calibration_images=calibration_images)]


# --------------------------------------------------------------------------------------------- ONNX


def export_onnx(trained: Any, run_dir: Path, target: Path, quantize: bool = False, quantization: str = "static",
                calibration_images: int = CALIBRATION_IMAGES) -> list[Path]:
    """Write target (model.onnx), optionally model.int8.onnx, and preprocessing.json beside it."""
    import onnx

    target = Path(target)
    folder = target.parent
    size = trained.image_size
    wrapper = probability_model(trained.model)
    real = _real_images(run_dir, size, limit=16, split_order=("test", "val", "train"))
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
        max_diff = _compare_with_torch(wrapper, tmp, size, real)
        log.info("exported %s in %.1f s (max |p_onnx - p_torch| = %.2e)", target, time.perf_counter() - t0, max_diff)
        if quantize:
            calib = _real_images(run_dir, size, limit=calibration_images, split_order=("train",))
            if quantization == "static" and len(calib) == 0:
                raise PlantidError(
                    f"{run_dir}: static quantization needs the run's training photos for calibration and none "
                    "could be read (moved?); use quantization='dynamic' or restore the photos listed in split.csv"
                )
            int8_info = quantize_onnx(tmp, int8_path, calib, mode=quantization)
            int8_info["sha256"] = sha256_file(int8_path)
            int8_info["size_bytes"] = int8_path.stat().st_size
        meta = preprocessing_metadata(trained, tmp, exporter, max_diff, int8_info, model_file=target.name)
    written = [_make_readable(target)]
    if quantize:
        written.append(_make_readable(int8_path))
    elif int8_path.exists():
        int8_path.unlink()  # an int8 model of an earlier export would silently disagree with this one

    written.append(_make_readable(write_json_atomic(folder / PREPROCESSING_FILE, meta)))
    return written


def _torch_to_onnx(wrapper: Any, size: int, path: Path) -> str:
    """Export with the torch.export-based exporter; fall back to the TorchScript one if it fails."""
    import warnings

    import torch

    dummy = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                wrapper, (dummy,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                external_data=False, optimize=True, verbose=False,
            )
            program.save(str(path), external_data=False)
            return f"torch.export (torch {torch.__version__})"
        except Exception as exc:  # exporter internals raise many types; the fallback is checked the same way
            log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                        first_line(exc)[:200])
            torch.onnx.export(
                wrapper, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
            return f"torchscript (torch {torch.__version__})"


def _session(path: Path, threads: int | None = None):
    from plantid.infer.onnx_backend import make_session

    return make_session(path, threads=threads)


def _compare_with_torch(wrapper: Any, path: Path, size: int, real: np.ndarray) -> float:
    """Max |p_onnx - p_torch| over a random batch (batch 3, not the export's 2) and real photos."""
    import torch

    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)]
    if len(real):
        batches.append(real)
    session = _session(path)
    worst = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(batch)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if got.shape != expected.shape:
            raise PlantidError(f"exported ONNX model returns shape {got.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if not np.isfinite(worst) or worst > TOLERANCE:
        raise PlantidError(
            f"exported ONNX model disagrees with PyTorch (max probability difference {worst:.2e} > {TOLERANCE:g}); "
            "the model uses an operator the exporter does not reproduce"
        )
    return worst


def _real_images(run_dir: Path, size: int, limit: int, split_order: tuple[str, ...]) -> np.ndarray:
    """Up to `limit` photos of the run (uint8 N x S x S x 3), from its split.csv, preferring `split_order`."""
    from plantid.data.images import BadImageError, load_image
    from plantid.data.split import read_manifest

    manifest_path = run_dir / "split.csv"
    if not manifest_path.is_file() or limit <= 0:
        return np.zeros((0, size, size, 3), np.uint8)
    try:
        manifest = read_manifest(manifest_path)
    except PlantidError:
        return np.zeros((0, size, size, 3), np.uint8)
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
    images = []
    for r in ordered:
        if len(images) >= limit:
            break
        try:
            images.append(load_image(r.path, size))
        except BadImageError:
            continue
    if not images:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(images)


def preprocessing_metadata(trained: Any, model_path: Path, exporter: str, max_diff: float,
                           int8: dict[str, Any] | None, model_file: str | None = None) -> dict[str, Any]:
    """What a consumer needs to feed the model, and where it came from (preprocessing.json)."""
    import onnx
    import torch

    from plantid import __version__ as plantid_version

    mean = getattr(trained.model, "mean", None)
    std = getattr(trained.model, "std", None)
    ckpt = Path(trained.checkpoint)
    opset = next((o.version for o in onnx.load(str(model_path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), OPSET)
    return {
        "format": "plantid-onnx/1",
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


# ------------------------------------------------------------------------------------- quantization


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over a uint8 batch of photos, a few images at a time."""

    def __init__(self, images: np.ndarray, batch: int = 8):
        self.batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {INPUT_NAME: self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray, mode: str = "static") -> dict[str, Any]:
    """Write an int8 model next to the fp32 one and report how it was made and how it agrees.

    static: QDQ, per-channel symmetric int8 weights, uint8 activations calibrated (MinMax) on
    `calibration`; the final Softmax stays in float so probabilities keep their resolution.
    dynamic: int8 weights, activations quantized at run time (MatMul/Gemm/Conv).

    Static weights use 7 bits (reduce_range, [-64, 64]). onnxruntime multiplies uint8 activations
    by int8 weights with VPMADDUBSW on x86 CPUs without AVX512-VNNI/AVX-VNNI (most AVX2 machines),
    which adds pairs of products in a saturating int16: 2 * 255 * 127 overflows. With 8-bit
    weights tf_efficientnet_lite0 lost 3.4 points of top-1 at 128 px and 6.3 at 96 px (87% and
    82% top-1 agreement with fp32); with 7 bits, 2 * 255 * 64 fits and int8 was no worse than
    fp32 on either (93% and 91% agreement, the rest is 8-bit rounding spread over all layers).
    uint8 weights (U8U8) avoid the overflow too but run ~7x slower in onnxruntime's QLinearConv;
    int8 activations (S8S8) are slower on AVX2 and saturate alike.
    (Dynamic mode keeps 8 bits: reduce_range made its ConvInteger model worse, 56% -> 40% top-1.)
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plantid-quant-", dir=int8_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference can fail on exotic graphs: plain optimization then
            log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
            shutil.copyfile(fp32_path, prepared)
        _widen_input_constants(prepared)
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        with atomic_path(int8_path) as tmp:
            try:
                if mode == "static":
                    quantize_static(
                        str(prepared), str(tmp), _CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=softmax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    )
                else:
                    quantize_dynamic(str(prepared), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                     op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=softmax)
                onnx.checker.check_model(str(tmp))
            except Exception as exc:  # onnxruntime.quantization raises assorted types
                raise PlantidError(f"int8 quantization ({mode}) failed: {first_line(exc)[:200]}; export without --quantize") from None
            agreement = _agreement(fp32_path, tmp, calibration)
    info = {
        "file": int8_path.name,
        "mode": mode,
        "format": "QDQ" if mode == "static" else "QOperator (dynamic)",
        "weights": "int8 per-channel, 7-bit range (reduce_range)" if mode == "static" else "int8 per-channel",
        "activations": "uint8 (calibrated MinMax)" if mode == "static" else "uint8 (dynamic)",
        "calibration_images": int(len(calibration)) if mode == "static" else 0,
        "calibration_split": "train",
        "top1_agreement_with_fp32": agreement,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("quantized %s (%s): top-1 agreement with fp32 %s on %d photos", int8_path, mode,
             f"{agreement:.3f}" if agreement is not None else "n/a", len(calibration))
    return info


def _widen_input_constants(path: Path) -> int:
    """Tile the [1, C, 1, 1] constants of the input normalization to [1, C, 1, W] (same values); rewrite `path`.

    For int8 models onnxruntime runs QLinearConv channels-last and moves the graph's NHWC -> NCHW
    Transpose behind (x / 255 - mean) / std, which then broadcasts a 3-value constant along the
    innermost axis, 3 floats per inner loop: ~20% of the int8 model's time at 96 px. Tiled along
    the width the same arithmetic runs in spans of W * C floats. Only elementwise nodes between
    the input and the first Conv are touched. Returns the number of constants tiled.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    width = dims[2].dim_value if len(dims) == 4 else 0  # NHWC input: N x S x S x 3
    if width < 2:
        return 0
    inits = {init.name: init for init in graph.initializer}
    tiled: dict[str, str] = {}
    reached = {graph.input[0].name}  # tensors computed from the photos by the ops below
    for node in graph.node:  # topological order
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            break
        if node.op_type not in ("Transpose", "Cast", "Sub", "Div", "Mul", "Add") or not reached & set(node.input):
            continue
        reached.update(node.output)
        for k, name in enumerate(node.input):
            init = inits.get(name)
            if (init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 4
                    or [init.dims[i] for i in (0, 2, 3)] != [1, 1, 1] or init.dims[1] < 2):
                continue
            if name not in tiled:
                value = np.repeat(numpy_helper.to_array(init), width, axis=3)
                wide = numpy_helper.from_array(np.ascontiguousarray(value), f"{name}_w{width}")
                graph.initializer.append(wide)
                tiled[name] = wide.name
            node.input[k] = tiled[name]
    if tiled:
        used = {name for node in graph.node for name in node.input}
        for name in tiled:
            if name not in used:
                graph.initializer.remove(inits[name])
        onnx.save(model, str(path))
    return len(tiled)


def _agreement(fp32_path: Path, int8_path: Path, images: np.ndarray) -> float | None:
    if not len(images):
        return None
    a = _session(fp32_path).run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    b = _session(int8_path).run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    if not np.isfinite(b).all():
        raise PlantidError(f"{int8_path.name}: the quantized model returns non-finite probabilities")
    return float((a.argmax(1) == b.argmax(1)).mean())


# ---------------------------------------------------------------------------------------- submission


SUBMISSION_MODEL_PY = '''\
"""Plant species classifier exported by plantid (course-challenge interface).

    from model import model
    labels = model("path/to/this/folder").predict(X)

X: a batch of RGB images N x H x W x 3 (numpy array, TensorFlow or PyTorch tensor, or a list of
images), values 0..255 as uint8 or float. Images that are not S x S (S = image_size in
preprocessing.json) are resized with PIL bilinear, exactly as in training. Returns the integer
class indices (the order of "labels" in preprocessing.json): a numpy int64 array, or a
TensorFlow tensor when X is one. Needs numpy, Pillow and onnxruntime only.
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

_CHUNK = 64


def _threads():
    env = os.environ.get("PLANTID_ORT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


class model:
    def __init__(self, path):
        folder = os.path.abspath(path if path else os.path.dirname(__file__))
        if os.path.isfile(folder):
            folder = os.path.dirname(folder)
        with open(os.path.join(folder, "preprocessing.json"), encoding="utf-8") as fh:
            self.preprocessing = json.load(fh)
        self.image_size = int(self.preprocessing["image_size"])
        self.labels = list(self.preprocessing["labels"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, self.preprocessing.get("model_file", "model.onnx")), options,
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name

    def _as_uint8_batch(self, X):
        if hasattr(X, "numpy") and not isinstance(X, np.ndarray):
            X = X.numpy()  # TensorFlow eager tensor or CPU PyTorch tensor
        if isinstance(X, (list, tuple)):
            X = np.stack([np.asarray(x) for x in X])
        X = np.asarray(X)
        if X.ndim == 3:
            X = X[None]
        if X.ndim != 4:
            raise ValueError("expected a batch of images N x H x W x 3, got shape %s" % (X.shape,))
        if X.shape[-1] != 3 and X.shape[1] == 3:
            X = X.transpose(0, 2, 3, 1)  # N x 3 x H x W
        if X.shape[-1] == 1:
            X = np.repeat(X, 3, axis=-1)
        elif X.shape[-1] == 4:
            X = X[..., :3]
        if X.shape[-1] != 3:
            raise ValueError("expected 3 colour channels, got shape %s" % (X.shape,))
        if X.dtype != np.uint8:
            X = np.clip(np.rint(X.astype(np.float64)), 0, 255).astype(np.uint8)
        S = self.image_size
        if X.shape[1:3] != (S, S):
            X = np.stack([
                np.asarray(Image.fromarray(np.ascontiguousarray(x), mode="RGB").resize(
                    (S, S), Image.BILINEAR, reducing_gap=None), dtype=np.uint8)
                for x in X
            ])
        return np.ascontiguousarray(X)

    def predict_proba(self, X):
        batch = self._as_uint8_batch(X)
        out = [self.session.run(None, {self.input_name: batch[i:i + _CHUNK]})[0]
               for i in range(0, len(batch), _CHUNK)]
        if not out:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict(self, X):
        labels = np.argmax(self.predict_proba(X), axis=1).astype(np.int64)
        tf = sys.modules.get("tensorflow")
        if tf is not None and hasattr(tf, "is_tensor") and tf.is_tensor(X):
            return tf.convert_to_tensor(labels)
        return labels
'''

SUBMISSION_README = """\
Plant species classifier exported by plantid {version}

Model:      {model_name} ({model_id})
Classes:    {num_classes} ({labels_preview})
Input size: {size} x {size} px
Weights:    {weights}
Exported:   {created}

Use (needs numpy, Pillow and onnxruntime >= 1.14; no PyTorch, no TensorFlow):

    from model import model
    m = model("{folder_hint}")  # the folder holding model.py, model.onnx, preprocessing.json
    labels = m.predict(X)  # X: N x H x W x 3 images, values 0..255 (uint8 or float)

predict() returns integer class indices; class i is labels[i] in preprocessing.json.
Images of another size than {size} x {size} are resized with PIL bilinear, as in training.
predict_proba(X) returns the N x {num_classes} probabilities.

Files:
  model.py            the challenge interface (class `model`)
  model.onnx          the network with uint8 -> float, normalization and softmax inside
  preprocessing.json  input size, resize rule, labels, provenance (checkpoint sha256)
"""


def export_submission(trained: Any, run_dir: Path, folder: Path, quantize: bool = False, quantization: str = "static",
                      calibration_images: int = CALIBRATION_IMAGES) -> Path:
    """Build the submission folder in a staging folder, test it in a clean process, then swap it in."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PlantidError(f"{folder}: exists and is not a folder; choose another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        if not _reuse_export(trained, run_dir, staging, quantize, quantization):
            export_onnx(trained, run_dir, staging / ONNX_FILE, quantize=quantize, quantization=quantization,
                        calibration_images=calibration_images)
        meta = json.loads((staging / PREPROCESSING_FILE).read_text(encoding="utf-8"))
        if quantize:  # the submission ships one model: the int8 one when asked for
            os.replace(staging / INT8_FILE, staging / ONNX_FILE)
            meta["sha256"] = sha256_file(staging / ONNX_FILE)
            meta["size_bytes"] = (staging / ONNX_FILE).stat().st_size
            meta["int8"] = dict(meta["int8"] or {}, file=ONNX_FILE)
            meta["quantized"] = True
        else:
            meta["quantized"] = False
        meta["model_file"] = ONNX_FILE
        meta["submission"] = {"interface": "model(path).predict(X) -> int64 class indices",
                              "input_size": SUBMISSION_SIZE}
        _make_readable(write_json_atomic(staging / PREPROCESSING_FILE, meta))
        _make_readable(write_text_atomic(staging / "model.py", SUBMISSION_MODEL_PY))
        labels = meta["labels"]
        preview = ", ".join(labels[:6]) + (", ..." if len(labels) > 6 else "")
        _make_readable(staging)
        _make_readable(write_text_atomic(staging / "README.txt", SUBMISSION_README.format(
            version=meta["plantid_version"], model_name=meta["model_name"], model_id=meta["model_id"],
            num_classes=len(labels), labels_preview=preview, size=meta["image_size"],
            weights="int8 (static quantization)" if quantize else "float32", created=meta["created"],
            folder_hint=folder.name,
        )))
        _check_submission(trained, run_dir, staging, quantized=quantize)
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _reuse_export(trained: Any, run_dir: Path, staging: Path, quantize: bool, quantization: str) -> bool:
    """Copy RUN/export into `staging` when it was made from this very checkpoint (and re-check it).

    Saves a second trip through the exporter (seconds to minutes); anything doubtful re-exports.
    """
    source = run_dir / EXPORT_DIR
    try:
        meta = json.loads((source / PREPROCESSING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    int8 = meta.get("int8") or {}
    if not isinstance(meta, dict) or meta.get("source_checkpoint_sha256") != sha256_file(trained.checkpoint) \
            or meta.get("image_size") != trained.image_size or meta.get("labels") != list(trained.classes) \
            or not (source / ONNX_FILE).is_file() or meta.get("sha256") != sha256_file(source / ONNX_FILE):
        return False
    if quantize and not (int8.get("mode") == quantization and (source / INT8_FILE).is_file()
                         and int8.get("sha256") == sha256_file(source / INT8_FILE)):
        return False
    shutil.copyfile(source / ONNX_FILE, staging / ONNX_FILE)
    if quantize:
        shutil.copyfile(source / INT8_FILE, staging / INT8_FILE)
    else:
        meta["int8"] = None
    real = _real_images(run_dir, trained.image_size, limit=16, split_order=("test", "val", "train"))
    meta["max_abs_diff_vs_torch"] = _compare_with_torch(probability_model(trained.model), staging / ONNX_FILE,
                                                        trained.image_size, real)
    write_json_atomic(staging / PREPROCESSING_FILE, meta)
    log.info("reused %s (same checkpoint) for the submission", source / ONNX_FILE)
    return True


def _check_submission(trained: Any, run_dir: Path, folder: Path, quantized: bool) -> None:
    """Run model.py in a fresh interpreter (no PYTHONPATH) and compare with PyTorch."""
    import torch

    from plantid.data.images import resize_pixels

    real = _real_images(run_dir, SUBMISSION_SIZE, limit=8, split_order=("test", "val", "train"))
    rng = np.random.default_rng(2)
    batch = np.concatenate([real, rng.integers(0, 256, size=(2, SUBMISSION_SIZE, SUBMISSION_SIZE, 3), dtype=np.uint8)])
    wrapper = probability_model(trained.model)
    resized = np.stack([resize_pixels(x, trained.image_size) for x in batch])
    with torch.no_grad():
        probs = wrapper(torch.from_numpy(resized)).numpy()
    expected = probs.argmax(1)
    with tempfile.TemporaryDirectory(prefix="plantid-subcheck-") as work:
        np.save(Path(work) / "X.npy", batch.astype(np.float32))  # the challenge passes floats 0..255
        code = textwrap.dedent("""
            import json, sys
            import numpy as np
            from model import model
            X = np.load(sys.argv[1])
            out = model(".").predict(X)
            bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "plantid", "timm", "lightning"))
            print(json.dumps({"labels": np.asarray(out).tolist(), "dtype": str(np.asarray(out).dtype), "imported": bad}))
        """)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        try:
            proc = subprocess.run([sys.executable, "-c", code, str(Path(work) / "X.npy")], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise PlantidError("the submission's model.py did not answer within 5 minutes") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PlantidError(f"the submission's model.py failed in a clean Python process: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["imported"]:
        raise PlantidError(f"the submission's model.py imported {', '.join(result['imported'][:3])}; it must not")
    got = np.asarray(result["labels"])
    if got.shape != expected.shape or not np.issubdtype(got.dtype, np.integer):
        raise PlantidError(f"the submission's model.py returned {got.dtype} {got.shape}, expected integers {expected.shape}")
    agree = float((got == expected).mean())
    if not quantized:
        # near-ties can flip between runtimes only when the top-2 probabilities are within tolerance
        top2 = np.sort(probs, axis=1)[:, -2:]
        must = (top2[:, 1] - top2[:, 0]) > 2 * TOLERANCE
        if not (got[must] == expected[must]).all():
            raise PlantidError("the submission's predictions differ from PyTorch's; the export is not usable")
    elif agree < 0.5:
        log.warning("the int8 submission agrees with PyTorch on only %.0f%% of %d check images", 100 * agree, len(got))


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace `folder` by `staging` (two renames; the old folder is removed afterwards)."""
    backup = None
    if folder.exists():
        backup = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, backup)
    try:
        os.replace(staging, folder)
    except BaseException:
        if backup is not None:
            os.replace(backup, folder)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
