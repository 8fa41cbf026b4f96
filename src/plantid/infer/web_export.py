"""`plantid export RUN --format web`: a static folder that identifies plants in a browser, offline.

The folder holds the app (index.html, app.js, preprocess.js, style.css, an icon, a web manifest
and a service worker), the run's ONNX model with its calibrated probabilities and unknown-photo
score (plantid.infer.onnx_export), its labels and preprocessing, and onnxruntime-web (the npm
package, pinned in webapp/runtime.json, fetched by `make web-runtime`). Nothing loads from
another origin.

Browsers refuse fetch() and module scripts on file:// pages, so the two large binaries (the
onnxruntime WebAssembly and the model) travel as gzip + base64 inside classic scripts: the same
files then work opened from a local folder and from any static host, and they are smaller than
the raw binaries (the runtime's 14.8 MB of wasm become 5.1 MB). Over http(s) the service worker
keeps a copy of every file, so the app works offline after the first visit.

int8 or fp32: `quantize=None` (the default) ships the int8 model when it kept its accuracy on
the run's val photos at export (at most INT8_MAX_DROP_POINTS below fp32), else fp32.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from plantid.errors import PlantidError
from plantid.fileio import give_usual_mode, sha256_file
from plantid.infer.group import MAX_GROUP_PHOTOS
from plantid.infer.onnx_backend import INPUT_NAME, INT8_MAX_DROP_POINTS, OUTPUT_NAME, SCORE_NAME, folds_dequantize
from plantid.infer.onnx_export import export_onnx
from plantid.infer.quantize import DEFAULT_QUANTIZATION
from plantid.records import finite, read_evaluation, read_export, read_or_warn, read_summary, read_trust, same_trust
from plantid.runfolder import EXPORT_DIR, INT8_FILE, LABELS_FILE, ONNX_FILE, PREPROCESSING_FILE

log = logging.getLogger("plantid")

WEB_DIR = "web"
APP_FILES = ("index.html", "app.js", "preprocess.js", "bars.js", "style.css", "icon.svg")
RUNTIME_ENV = "PLANTID_WEB_RUNTIME"
MODEL_INFO_FILE = "model-info.js"  # marks a folder as a plantid web export (safe to replace)


@dataclass(frozen=True)
class WebExport:
    """What `export_web` wrote: the folder, its size, and which model it carries."""

    folder: Path
    size_bytes: int
    runtime_bytes: int
    model_bytes: int
    weights: str  # "int8" or "fp32"


def runtime_spec() -> dict[str, Any]:
    """The pinned onnxruntime-web package (name, version, npm integrity, files used): webapp/runtime.json."""
    return json.loads(_asset("runtime.json").read_text(encoding="utf-8"))


def runtime_dir() -> Path:
    """Where `make web-runtime` put onnxruntime-web: $PLANTID_WEB_RUNTIME, else $PLANTID_CACHE/onnxruntime-web/VERSION."""
    env = os.environ.get(RUNTIME_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = os.environ.get("PLANTID_CACHE") or "~/.cache/plantid"
    return Path(root).expanduser() / "onnxruntime-web" / runtime_spec()["version"]


def check_runtime() -> Path:
    """The runtime folder, or a PlantidError saying how to fetch it."""
    spec = runtime_spec()
    folder = runtime_dir()
    missing = [name for name in spec["files"] if not (folder / Path(name).name).is_file()]
    if missing:
        raise PlantidError(f"{folder}: {spec['package']} {spec['version']} is not installed ({Path(missing[0]).name} "
                           f"missing); run `make web-runtime` (it fetches the pinned package with npm)")
    return folder


def export_web(trained: Any, run_dir: Path, out: Path, quantize: bool | None = None) -> WebExport:
    """Export the run's ONNX model (RUN/export) and write the web app folder `out` around it.

    An existing `out` is replaced only when it is an earlier web export (or empty); the new
    folder is built beside it and renamed into place, so a failure leaves the old one intact.
    """
    out = Path(out)
    runtime = check_runtime()  # before minutes of export work
    check_web_target(out)
    onnx_target = run_dir / EXPORT_DIR / ONNX_FILE
    meta = current_onnx_export(run_dir, trained, need_int8=quantize is not False)
    if meta is None:
        export_onnx(trained, run_dir, onnx_target, quantize=quantize is not False)
        meta = read_export(onnx_target.parent).as_dict()
    else:
        log.info("%s matches the run's checkpoint and trust files: the web app reuses it", onnx_target.parent)
    weights = "int8" if _use_int8(meta, quantize) else "fp32"
    model_path = onnx_target.parent / (INT8_FILE if weights == "int8" else ONNX_FILE)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".plantid-web-", dir=out.parent))
    try:
        for name in APP_FILES:
            shutil.copyfile(_asset(name), work / name)
        (work / "runtime").mkdir()
        for name in runtime_spec()["files"]:
            name = Path(name).name
            if name.endswith(".wasm"):
                _write_embedded(work / "runtime" / f"{name}.js", "PLANTID_ORT_WASM_GZ_B64", (runtime / name).read_bytes())
            else:
                shutil.copyfile(runtime / name, work / "runtime" / name)
        glue = (runtime / "ort-wasm-simd-threaded.mjs").read_bytes()
        _write_script(work / "runtime" / "ort-wasm-simd-threaded.mjs.js", "PLANTID_ORT_GLUE_B64",
                      base64.b64encode(glue).decode("ascii"))
        _write_embedded(work / "model.onnx.js", "PLANTID_MODEL_GZ_B64", model_path.read_bytes())
        info = model_info(trained, run_dir, meta, weights, model_path)
        _write_script(work / MODEL_INFO_FILE, "PLANTID_MODEL_INFO", info)
        meta["web"] = {"model_script": "model.onnx.js", "encoding": "gzip, then base64, in a JavaScript string",
                       "onnx_file": model_path.name, "weights": weights, "sha256": sha256_file(model_path)}
        (work / PREPROCESSING_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (work / LABELS_FILE).write_text(json.dumps(list(trained.classes), indent=2) + "\n", encoding="utf-8")
        (work / "manifest.webmanifest").write_text(json.dumps(_manifest(info), indent=2) + "\n", encoding="utf-8")
        _write_service_worker(work)
        give_usual_mode(work)
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return WebExport(folder=out, size_bytes=sum(sizes.values()),
                     runtime_bytes=sum(v for k, v in sizes.items() if k.startswith("runtime/")),
                     model_bytes=sizes["model.onnx.js"], weights=weights)


def current_onnx_export(run_dir: Path, trained: Any, need_int8: bool) -> dict[str, Any] | None:
    """RUN/export's preprocessing.json when its models were exported from the run's current checkpoint
    and trust files (and include int8 when needed), else None: then the run is exported again."""
    folder = run_dir / EXPORT_DIR
    record = read_or_warn(read_export, folder)
    meta = record.as_dict() if record is not None else None
    if not meta or meta.get("source_checkpoint_sha256") != sha256_file(trained.checkpoint):
        return None
    models = [(folder / ONNX_FILE, meta.get("size_bytes"))]
    if need_int8:
        int8 = meta.get("int8") or {}
        if not int8.get("file") or int8.get("mode") != DEFAULT_QUANTIZATION:  # made the way the app expects
            return None
        models.append((folder / INT8_FILE, int8.get("size_bytes")))
    if any(not path.is_file() or path.stat().st_size != size for path, size in models):
        return None
    if not same_trust(read_or_warn(read_trust, Path(trained.checkpoint).parent), meta.get("trust")):
        return None
    return meta


def _use_int8(meta: dict[str, Any], quantize: bool | None) -> bool:
    """int8 when asked for; by default only when it scored within INT8_MAX_DROP_POINTS of fp32 on val."""
    if quantize is not None:
        return quantize
    check = (meta.get("int8") or {}).get("accuracy")
    if isinstance(check, dict) and check.get("drop_points", 0) <= INT8_MAX_DROP_POINTS:
        return True
    drop = check.get("drop_points") if isinstance(check, dict) else None
    log.warning("the web app carries the fp32 model: int8 %s; pass --quantize to ship int8 anyway",
                f"lost {drop:.1f} points of val accuracy" if drop is not None else "could not be checked on val photos")
    return False


def model_info(trained: Any, run_dir: Path, meta: dict[str, Any], weights: str, model_path: Path) -> dict[str, Any]:
    """What the app needs: labels, input, outputs, the unknown threshold and the model card."""
    summary = read_or_warn(read_summary, run_dir)
    evaluation = read_or_warn(read_evaluation, run_dir)
    test_accuracy = finite(evaluation.metrics.accuracy) if evaluation else None
    test_photos = evaluation.n_images if evaluation else None
    if test_accuracy is None and summary is not None:
        test_accuracy, test_photos = finite(summary.test_acc), None
    checkpoint = Path(trained.checkpoint)
    trust = meta.get("trust")
    return {
        "format": "plantid-web/1",
        "model_id": trained.model_id,
        "labels": list(trained.classes),
        "image_size": int(trained.image_size),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC"},
        "output": {"name": OUTPUT_NAME},
        "ood_score_name": SCORE_NAME,
        "trust": {"threshold": float(trust["threshold"]), "keep": float(trust.get("keep", 0.95)),
                  "answer_level": finite(trust.get("answer_level")),
                  "detector": trust.get("detector")} if isinstance(trust, dict) else None,
        "max_photos": MAX_GROUP_PHOTOS,
        # the app starts its session as OnnxBackend does (plantid.infer.onnx_backend.folds_dequantize)
        "fold_dequantize": folds_dequantize(meta, model_path),
        "card": {
            "backbone": (summary.model if summary else None) or trained.config.model.name,
            "test_accuracy": test_accuracy,
            "test_photos": test_photos,
            "trained": time.strftime("%Y-%m-%d", time.localtime(checkpoint.stat().st_mtime)),
            "weights": f"{weights}, {model_path.stat().st_size / 1e6:.1f} MB",
        },
        "runtime": {"package": runtime_spec()["package"], "version": runtime_spec()["version"]},
        "model_sha256": sha256_file(model_path),
    }


def folder_size_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def describe(folder: Path) -> str:
    """One line for the terminal: the folder's size, what takes it, and which weights it carries."""
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()}
    runtime = sum(v for k, v in sizes.items() if k.startswith("runtime/"))
    model = sizes.get("model.onnx.js", 0)
    info = read_export(folder).as_dict().get("web", {})
    total = sum(sizes.values())
    return (f"{folder}: {total / 1e6:.1f} MB ({info.get('weights', '?')} model {model / 1e6:.1f} MB, onnxruntime-web "
            f"{runtime / 1e6:.1f} MB, app {(total - runtime - model) / 1e6:.2f} MB); open index.html, or serve the "
            f"folder from any static host")


def _asset(name: str) -> Path:
    return Path(str(resources.files("plantid.infer") / "webapp" / name))


def _write_script(path: Path, name: str, value: Any) -> None:
    """A classic script that sets self.NAME to `value` (a JSON value)."""
    path.write_text(f"self.{name} = {json.dumps(value, ensure_ascii=False)};\n", encoding="utf-8")


def _write_embedded(path: Path, name: str, data: bytes) -> None:
    """`data` gzip-compressed (no timestamp: the same input gives the same file) and base64-encoded in a script."""
    _write_script(path, name, base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii"))


def _manifest(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"plantid · {len(info['labels'])} species",
        "short_name": "plantid",
        "description": "Identify a plant from photos, on this device, offline.",
        "start_url": "./index.html",
        "scope": "./",
        "display": "standalone",
        "background_color": "#f4f6f1",
        "theme_color": "#2f6f53",
        "icons": [{"src": "icon.svg", "sizes": "any", "type": "image/svg+xml", "purpose": "any"}],
    }


def _write_service_worker(folder: Path) -> None:
    """sw.js with the folder's file list and a cache name that changes whenever any file does."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).digest())
    text = _asset("sw.js").read_text(encoding="utf-8")
    text = text.replace("__VERSION__", digest.hexdigest()[:16]).replace("__FILES__", json.dumps(["./", *files]))
    (folder / "sw.js").write_text(text, encoding="utf-8")


def check_web_target(out: Path) -> None:
    """Refuse an `out` that exists and is not an earlier web export (or an empty folder): never overwritten."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MODEL_INFO_FILE).is_file())):
        raise PlantidError(f"{out}: exists and is not a plantid web export; choose another --out (it is never overwritten)")


def _swap_into_place(work: Path, out: Path) -> None:
    """Rename the finished folder onto `out`; an earlier export is removed only after the rename."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        work.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
