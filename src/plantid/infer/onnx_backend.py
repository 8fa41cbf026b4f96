"""Prediction with the exported ONNX model and onnxruntime, without the PyTorch model code.

The exported graph (see plantid.infer.onnx_export) takes uint8 N x S x S x 3 photos as returned by
`plantid.data.images.load_image` and returns softmax probabilities, so this backend only has
to hand over the batch. One CPU session: all graph optimizations, intra-op threads = the
physical cores this process may use (PLANTID_ORT_THREADS or `threads=` to change it), and
worker threads that sleep instead of spinning between operators (see `make_session`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from plantid.errors import PlantidError, first_line
from plantid.fileio import sha256_file
from plantid.records import read_export
from plantid.runfolder import EXPORT_DIR, INT8_FILE, ONNX_FILE, PREPROCESSING_FILE

log = logging.getLogger("plantid")

# The exported graph's interface: uint8 photos in, softmax probabilities out (and, for a run with
# trust files, the out-of-distribution score of each photo).
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
SCORE_NAME = "ood_score"
THREADS_ENV = "PLANTID_ORT_THREADS"
# An int8 model scoring more than this many points below fp32 on the run's val photos (measured
# at export, preprocessing.json "int8.accuracy") is flagged at export and whenever it is loaded.
INT8_MAX_DROP_POINTS = 0.5


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for block in text.split("\n\n"):
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()) if k.strip()
            )
            if "processor" in fields and int(fields["processor"]) in allowed:
                cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores) if cores else len(allowed), len(allowed)))


def default_threads() -> int:
    """onnxruntime threads: the environment override when set (checked), else the physical cores."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise PlantidError(f"{THREADS_ENV}={env!r}: must be a positive integer")
        return int(env)
    return physical_cores()


# int8 models whose DequantizeLinear nodes read only stored tensors (`plantid export --quantization
# weights`): with onnxruntime's QDQ handling off, they are folded into float weights at load and run
# at fp32 speed (5.9 against 13.4 ms a photo at 192 px), with the same numbers.
FOLDED_INT8_MODES = ("weights",)


def folds_dequantize(preprocessing: dict[str, Any], model_path: str | os.PathLike) -> bool:
    """Whether `model_path` is an int8 model of a mode whose dequantization is folded at load."""
    int8 = preprocessing.get("int8") if isinstance(preprocessing, dict) else None
    return (Path(model_path).name == INT8_FILE and isinstance(int8, dict)
            and int8.get("mode") in FOLDED_INT8_MODES)


def make_session(model_path: str | os.PathLike, threads: int | None = None, spinning: bool = False,
                 fold_dequantize: bool = False):
    """An onnxruntime CPU InferenceSession with ORT_ENABLE_ALL and `threads` intra-op threads.

    `spinning` (session.intra_op.allow_spinning, on in onnxruntime by default) keeps idle worker
    threads busy-waiting for the next operator. Off by default: on a machine shared with other
    work (training next to serving, a 2-core box) the spinning threads take CPU from the ones
    computing; with two training processes beside it, turning it off took batch 64 at 96 px from
    300 to 446 img/s (int8) and 191 to 255 (fp32), batch 1 from 158 to 308. On an idle machine
    spinning is faster at batch 1 (96 px int8 462 -> 600 img/s) and at 128 px batch 64 (int8
    429 -> 555) but slower for int8 at 96 px batch 64 (870 -> 796); see docs/benchmarks.md.
    `fold_dequantize` turns onnxruntime's QDQ handling off so that constant folding turns int8
    tensors into float weights once (see FOLDED_INT8_MODES); never for static int8 models, whose
    int8 arithmetic needs it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads) if threads else default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if fold_dequantize:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise PlantidError(f"{model_path}: onnxruntime cannot load the model ({first_line(exc)[:300]}); re-export it") from None


class OnnxBackend:
    """uint8 N x S x S x 3 -> float32 N x K probabilities, through onnxruntime."""

    def __init__(self, model_path: str | os.PathLike, preprocessing: dict[str, Any], threads: int | None = None,
                 spinning: bool = False):
        self.model_path = Path(model_path)
        self.preprocessing = preprocessing
        try:
            self.classes: list[str] = [str(c) for c in preprocessing["labels"]]
            self.image_size: int = int(preprocessing["image_size"])
        except (KeyError, TypeError, ValueError):
            raise PlantidError(f"{self.model_path.parent / PREPROCESSING_FILE}: no labels/image_size; re-export the run") from None
        suffix = "onnx-int8" if self.model_path.name == INT8_FILE else "onnx"
        self.model_id: str = f"{preprocessing.get('model_id', self.model_path.parent.name)}:{suffix}"
        self.threads = int(threads) if threads else default_threads()
        self.session = make_session(self.model_path, self.threads, spinning=spinning,
                                    fold_dequantize=folds_dequantize(preprocessing, self.model_path))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        names = [o.name for o in outputs]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in names else outputs[0].name
        outputs = [o for o in outputs if o.name == self.output_name]
        trust = preprocessing.get("trust")
        # the threshold is only meaningful with the scores of the graph it was exported with
        self.trust: dict[str, Any] | None = trust if isinstance(trust, dict) and SCORE_NAME in names else None
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1:] != [self.image_size, self.image_size, 3] or inputs[0].type != "tensor(uint8)":
            raise PlantidError(
                f"{self.model_path}: expects {inputs[0].type} {shape}, not uint8 N x {self.image_size} x "
                f"{self.image_size} x 3 as preprocessing.json says; re-export with `plantid export RUN --format onnx`"
            )
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(self.classes)):
            raise PlantidError(f"{self.model_path}: returns {out_shape}, but there are {len(self.classes)} labels")

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, quantized: bool = False, threads: int | None = None,
                 spinning: bool = False) -> "OnnxBackend":
        """Load RUN/export/model.onnx (or model.int8.onnx) with its preprocessing.json.

        `run_dir` may also be a folder holding model.onnx + preprocessing.json directly (an export
        or submission folder) or the path of the .onnx file itself.
        """
        run_dir = Path(run_dir)
        if run_dir.is_file() and run_dir.suffix == ".onnx":
            folder, model_name = run_dir.parent, run_dir.name
        else:
            folder = run_dir / EXPORT_DIR if (run_dir / EXPORT_DIR).is_dir() or not (run_dir / ONNX_FILE).exists() else run_dir
            model_name = INT8_FILE if quantized else ONNX_FILE
        export_hint = f"run `plantid export {run_dir} --format onnx{' --quantize' if quantized else ''}`"
        if not run_dir.exists():
            raise PlantidError(f"{run_dir}: no such run folder")
        meta_path = folder / PREPROCESSING_FILE
        model_path = folder / model_name
        if not model_path.is_file() or not meta_path.is_file():
            missing = model_path if not model_path.is_file() else meta_path
            raise PlantidError(f"{missing}: not found; {export_hint}")
        meta = read_export(folder).as_dict()  # checked: labels, size, checksums (one line when not)
        entry = (meta.get("int8") or {}) if model_name == INT8_FILE else meta
        if model_name == INT8_FILE and not entry.get("file"):
            raise PlantidError(f"{model_path}: left over from an earlier export; {export_hint}")
        expected_size = entry.get("size_bytes")
        if expected_size is not None and model_path.stat().st_size != expected_size:
            raise PlantidError(f"{model_path}: does not match {meta_path.name} (interrupted export?); {export_hint}")
        # the checksum, not only the size: a model overwritten in place with other bytes of the same
        # size (a damaged copy, or a swapped graph) is never run
        if entry.get("sha256") != sha256_file(model_path):
            raise PlantidError(f"{model_path}: its sha256 does not match {meta_path.name} (changed or damaged "
                               f"since the export); {export_hint}")
        _warn_if_stale(run_dir if run_dir.is_dir() else folder, meta)
        check = entry.get("accuracy") if model_name == INT8_FILE else None
        if isinstance(check, dict) and check.get("drop_points", 0) > INT8_MAX_DROP_POINTS:
            log.warning("%s scored %.1f points below the fp32 model on the run's %s photos at export; "
                        "--backend onnx keeps fp32 accuracy", model_path, check["drop_points"], check.get("split", "val"))
        return cls(model_path, meta, threads=threads, spinning=spinning)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 N x {s} x {s} x 3, got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images)})[0]
        return np.asarray(out, dtype=np.float32)

    def scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities N x K, OOD scores N or None when exported without trust) in one run."""
        if self.trust is None or len(images) == 0:
            return self(images), (None if self.trust is None else np.zeros(0, np.float32))
        self(images[:0])  # shape and dtype check
        probs, scores = self.session.run([self.output_name, SCORE_NAME], {self.input_name: np.ascontiguousarray(images)})
        return np.asarray(probs, dtype=np.float32), np.asarray(scores, dtype=np.float32)

    def trust_summary(self) -> dict[str, Any] | None:
        """The trust settings exported with the model (detector, temperature, threshold, keep), or None."""
        return self.trust


def _warn_if_stale(run_dir: Path, meta: dict[str, Any]) -> None:
    """Warn when the run's checkpoint changed since the export (the ONNX model is then outdated)."""
    source = meta.get("source_checkpoint")
    size = meta.get("source_checkpoint_size")
    if not source or size is None:
        return
    ckpt = run_dir / Path(source).name  # the run folder may have been moved or copied
    if not ckpt.is_file():
        ckpt = Path(source)
    if ckpt.is_file() and ckpt.stat().st_size != size:
        log.warning("%s changed since the ONNX export; re-run `plantid export %s --format onnx`", ckpt, run_dir)
