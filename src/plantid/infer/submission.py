"""The course-challenge submission folder (`plantid export RUN --format submission`).

model.py with `model(path).predict(X)` that needs only numpy, Pillow and onnxruntime (no
PyTorch, no plantid), model.onnx, preprocessing.json and README.txt. The folder is built in a
staging folder, exercised in a separate Python process, and only then swapped in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from plantid.data.images import resize_pixels
from plantid.errors import PlantidError
from plantid.fileio import give_usual_mode, sha256_file, write_json_atomic, write_text_atomic
from plantid.infer.onnx_export import (
    TOLERANCE,
    compare_with_torch,
    export_onnx,
    probability_model,
    run_photos,
)
from plantid.infer.quantize import CALIBRATION_IMAGES, DEFAULT_QUANTIZATION
from plantid.records import read_export, read_or_warn
from plantid.runfolder import INT8_FILE, ONNX_FILE, PREPROCESSING_FILE, RunFolder

log = logging.getLogger("plantid")

SUBMISSION_SIZE = 96  # the course challenge feeds 96 x 96 x 3 images
SUBMISSION_FILES = ("model.py", ONNX_FILE, PREPROCESSING_FILE, "README.txt")  # all a submission folder holds


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



def export_submission(trained: Any, run_dir: Path, folder: Path, quantize: bool = False, quantization: str = DEFAULT_QUANTIZATION,
                      calibration_images: int = CALIBRATION_IMAGES) -> Path:
    """Build the submission folder in a staging folder, test it in a clean process, then swap it in."""
    folder = Path(os.path.abspath(folder))  # `--out .` names a folder with a name and a parent
    if folder.exists() and not folder.is_dir():
        raise PlantidError(f"{folder}: exists and is not a folder; choose another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        if not _reuse_export(trained, run_dir, staging, quantize, quantization):
            export_onnx(trained, run_dir, staging / ONNX_FILE, quantize=quantize, quantization=quantization,
                        calibration_images=calibration_images)
        meta = read_export(staging).as_dict()
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
        write_json_atomic(staging / PREPROCESSING_FILE, meta)
        write_text_atomic(staging / "model.py", SUBMISSION_MODEL_PY)
        labels = meta["labels"]
        preview = ", ".join(labels[:6]) + (", ..." if len(labels) > 6 else "")
        give_usual_mode(staging)  # mkdtemp made it 0700
        write_text_atomic(staging / "README.txt", SUBMISSION_README.format(
            version=meta["plantid_version"], model_name=meta["model_name"], model_id=meta["model_id"],
            num_classes=len(labels), labels_preview=preview, size=meta["image_size"],
            weights=f"int8 ({quantization} quantization)" if quantize else "float32", created=meta["created"],
            folder_hint=folder.name,
        ))
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
    source = RunFolder(run_dir).export_dir
    record = read_or_warn(read_export, source)
    meta = record.as_dict() if record is not None else None
    if meta is None or meta.get("source_checkpoint_sha256") != sha256_file(trained.checkpoint) \
            or meta.get("image_size") != trained.image_size or meta.get("labels") != list(trained.classes) \
            or not (source / ONNX_FILE).is_file() or meta.get("sha256") != sha256_file(source / ONNX_FILE):
        return False
    if meta.get("trust"):  # that graph carries the trust head (calibrated probabilities, ood_score); the submission does not
        return False
    int8 = meta.get("int8") or {}
    if quantize and not (int8.get("mode") == quantization and (source / INT8_FILE).is_file()
                         and int8.get("sha256") == sha256_file(source / INT8_FILE)):
        return False
    shutil.copyfile(source / ONNX_FILE, staging / ONNX_FILE)
    if quantize:
        shutil.copyfile(source / INT8_FILE, staging / INT8_FILE)
    else:
        meta["int8"] = None
    real = run_photos(run_dir, trained.image_size, limit=16, split_order=("test", "val", "train"))
    meta["max_abs_diff_vs_torch"] = compare_with_torch(probability_model(trained.model), staging / ONNX_FILE,
                                                        trained.image_size, real)
    write_json_atomic(staging / PREPROCESSING_FILE, meta)
    log.info("reused %s (same checkpoint) for the submission", source / ONNX_FILE)
    return True


def _check_submission(trained: Any, run_dir: Path, folder: Path, quantized: bool) -> None:
    """Run model.py in a fresh interpreter (no PYTHONPATH) and compare with PyTorch."""
    import torch

    real = run_photos(run_dir, SUBMISSION_SIZE, limit=8, split_order=("test", "val", "train"))
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
