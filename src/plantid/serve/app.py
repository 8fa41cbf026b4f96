"""The web app: a local page and a JSON API to identify a plant from one photo.

`create_app(run_dir)` loads the run's Predictor once and returns a FastAPI app:

* ``GET /``: the page (static files under ``/static``, fully offline);
* ``GET /api/health``, ``GET /api/model``: liveness and the model card;
* ``POST /api/predict``: multipart field ``file`` -> top-k species with probabilities;
* ``POST /api/gradcam``: multipart field ``file`` (+ optional ``label`` or ``class_index``) ->
  a PNG of the Grad-CAM heat-map over the photo (torch backend only).

Uploads are bounded: Content-Length is checked before reading, and the body is counted while
it streams in, so a client that lies about its size is cut off at the limit. Decoding and
inference run in the thread pool, so the event loop keeps answering other requests. Every
error is JSON ``{"detail": "a clear sentence"}`` with a 4xx code; nothing is global, so several
apps (runs) can live in one process.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from plantid.data.images import BadImageError
from plantid.errors import PlantidError
from plantid.infer.predictor import Predictor

log = logging.getLogger("plantid.serve")

__all__ = ["create_app", "build_app", "ServeSettings"]

STATIC_DIR = Path(str(resources.files("plantid.serve") / "static"))
# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 16 * 1024
ACCEPTED_FORMATS = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# Declared part types we let through to the decoder (it has the last word on what is an image).
NEUTRAL_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/x-octet-stream"})
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


def _multipart_body(**extra_properties: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI requestBody: a multipart form with a required 'file' photo plus `extra_properties`."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the photo"},
                        **extra_properties,
                    },
                }
            }
        },
    }


UPLOAD_BODY = _multipart_body()
GRADCAM_BODY = _multipart_body(
    label={"type": "string", "description": "class to explain (default: the most likely one)"},
    class_index={"type": "integer", "description": "class to explain, by index"},
)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "empty, truncated or undecodable photo, or a malformed request"},
    409: {"description": "Grad-CAM asked of a backend without gradients (onnx)"},
    413: {"description": "upload over the size limit, or a decompression bomb"},
    415: {"description": "not multipart/form-data, or the file is not an image"},
    422: {"description": "no 'file' field, or a bad parameter"},
}


@dataclass(frozen=True)
class ServeSettings:
    """What an app instance was started with."""

    run_dir: Path
    max_upload_bytes: int
    top_k: int


def create_app(run_dir: str | os.PathLike, backend: str = "torch", max_upload_bytes: int = 10 * 1024 * 1024,
               top_k: int = 5) -> FastAPI:
    """Load `run_dir`'s model with `backend` ('torch' or 'onnx') once and return the web app."""
    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir, backend=backend)
    return build_app(predictor, run_dir, max_upload_bytes=max_upload_bytes, top_k=top_k)


def build_app(predictor: Predictor, run_dir: str | os.PathLike, max_upload_bytes: int = 10 * 1024 * 1024,
              top_k: int = 5) -> FastAPI:
    """The app around an already loaded Predictor (create_app's second half; handy in tests)."""
    if max_upload_bytes < 1:
        raise PlantidError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if top_k < 1:
        raise PlantidError(f"top_k must be at least 1, got {top_k}")
    settings = ServeSettings(run_dir=Path(run_dir), max_upload_bytes=int(max_upload_bytes), top_k=int(top_k))

    app = FastAPI(
        title="plantid",
        summary="Identify a plant species from a photo.",
        description=f"Model `{predictor.model_id}` ({predictor.backend} backend). "
                    "Send a photo as multipart/form-data in a field named `file`.",
        version=_package_version(),
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.gradcam = _make_gradcam(predictor)

    _install_error_handlers(app)

    app.add_middleware(_SecurityHeaders)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "logo.svg", media_type="image/svg+xml")

    @app.get("/api/health", tags=["service"])
    def health(request: Request) -> dict[str, Any]:
        """Liveness: the server is up and its model is loaded."""
        return {"status": "ok", "model_id": request.app.state.predictor.model_id}

    @app.get("/api/model", tags=["service"])
    def model_card(request: Request) -> dict[str, Any]:
        """The model card: backbone, classes, test accuracy and per-class F1 (when evaluated)."""
        state = request.app.state
        return _model_card(state.predictor, state.settings, state.gradcam is not None)

    @app.post("/api/predict", tags=["predict"], responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": UPLOAD_BODY})
    async def predict(request: Request, top_k: int | None = None) -> dict[str, Any]:
        """Top-k species for one photo (multipart field `file`)."""
        state = request.app.state
        predictor: Predictor = state.predictor
        k = state.settings.top_k if top_k is None else top_k
        if not 1 <= k <= 1000:
            raise HTTPException(422, f"top_k must be between 1 and 1000, got {k}")
        upload = await _read_upload(request, state.settings.max_upload_bytes)
        return await run_in_threadpool(_predict_one, predictor, upload.data, k)

    @app.post("/api/gradcam", tags=["predict"], responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": GRADCAM_BODY})
    async def gradcam(request: Request, label: str | None = None, class_index: int | None = None) -> dict[str, Any]:
        """Grad-CAM heat-map of one photo for a class (default: the most likely), as a base64 PNG."""
        state = request.app.state
        predictor: Predictor = state.predictor
        if state.gradcam is None:
            if predictor.backend != "torch":
                raise HTTPException(
                    409,
                    f"Grad-CAM needs the model's gradients, which the {predictor.backend} backend does not have; "
                    "start the server with --backend torch",
                )
            raise HTTPException(409, "Grad-CAM is not available for this model (it has no convolutional feature map)")
        upload = await _read_upload(request, state.settings.max_upload_bytes, extra_fields=("label", "class_index"))
        label = upload.fields.get("label", label)
        index_text = upload.fields.get("class_index")
        if index_text is not None:
            class_index = _int_or_reject(index_text, 422, f"class_index must be an integer, got '{index_text}'")
        target = _resolve_class(predictor.classes, label, class_index)
        return await run_in_threadpool(_gradcam_one, predictor, state.gradcam, upload.data, target)

    return app


# --------------------------------------------------------------------------- uploads


@dataclass
class _Upload:
    data: bytes
    content_type: str
    filename: str | None
    fields: dict[str, str]


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _int_or_reject(text: str, status: int, message: str) -> int:
    """`int(text)`, or an HTTPException(status, message) when `text` is not an integer."""
    try:
        return int(text)
    except ValueError:
        raise HTTPException(status, message) from None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload too large: the limit is {_mb(limit)} per photo; choose a smaller photo")


async def _read_upload(request: Request, limit: int, extra_fields: tuple[str, ...] = ()) -> _Upload:
    """The bytes of the multipart field 'file', enforcing the size limit while reading."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        shown = media_type or "no content type"
        raise HTTPException(
            415, f"expected multipart/form-data with the photo in a field named 'file', got {shown}"
        )
    body_limit = limit + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None:
        declared_size = _int_or_reject(declared, 400, f"invalid Content-Length header '{declared}'")
        if declared_size > body_limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > body_limit:  # a client that lied about (or omitted) its Content-Length
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)

    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, replay)
    try:
        form = await form_request.form(max_files=4, max_fields=16)
    except HTTPException:
        raise
    except StarletteHTTPException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
    except Exception as exc:  # the multipart parser's own errors
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    try:
        item = form.get("file")
        if item is None:
            raise HTTPException(422, "no file: send the photo as multipart/form-data in a field named 'file'")
        if not isinstance(item, UploadFile):
            raise HTTPException(422, "the 'file' field must be a file upload, not a text value")
        part_type = (item.content_type or "").split(";", 1)[0].strip().lower()
        if part_type not in NEUTRAL_TYPES and not part_type.startswith("image/"):
            raise HTTPException(415, f"the upload is {part_type}, not an image: choose a {ACCEPTED_FORMATS} photo")
        data = await item.read()
        if len(data) > limit:
            raise _too_large(limit)
        fields = {}
        for name in extra_fields:
            value = form.get(name)
            if isinstance(value, str) and value.strip():
                fields[name] = value.strip()
        return _Upload(data=data, content_type=part_type, filename=item.filename, fields=fields)
    finally:
        await form.close()


def _bad_image(exc_reason: str) -> HTTPException:
    """Map a BadImageError reason to a status code and a sentence for the page."""
    reason = exc_reason.strip()
    lowered = reason.lower()
    if lowered.startswith("empty"):
        return HTTPException(400, f"empty file (0 bytes): choose a {ACCEPTED_FORMATS} photo")
    if lowered.startswith("not an image"):
        return HTTPException(415, f"not an image (unrecognised format): choose a {ACCEPTED_FORMATS} photo")
    if "too large" in lowered:
        return HTTPException(413, f"image too large to decode safely ({reason})")
    return HTTPException(400, f"could not read the photo: {reason}")


def _image_size(data: bytes) -> dict[str, int]:
    """Width and height as displayed (EXIF rotation applied), read from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # already decoded successfully by the predictor; be defensive anyway
        return {"width": 0, "height": 0}
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return {"width": int(width), "height": int(height)}


# --------------------------------------------------------------------------- work (thread pool)


def _predict_one(predictor: Predictor, data: bytes, k: int) -> dict[str, Any]:
    started = time.perf_counter()
    prediction = predictor.predict([data], top_k=k)[0]
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if prediction.error is not None:
        raise _bad_image(prediction.error)
    return {
        "model_id": predictor.model_id,
        "top_k": [{"label": label, "probability": _finite(p)} for label, p in prediction.top],
        "elapsed_ms": round(elapsed_ms, 2),
        "image": _image_size(data),
    }


def _make_gradcam(predictor: Predictor) -> Any:
    """A GradCam on the predictor's torch model, or None when the backend has no gradients."""
    trained = getattr(predictor, "trained", None)
    model = getattr(trained, "model", None)
    if predictor.backend != "torch" or model is None or not callable(getattr(model, "gradcam_layer", None)):
        return None
    from plantid.serve.gradcam import GradCam

    try:
        return GradCam(model)
    except PlantidError as exc:
        log.warning("Grad-CAM unavailable: %s", exc)
        return None


def _gradcam_one(predictor: Predictor, cam: Any, data: bytes, target: int | None) -> dict[str, Any]:
    from plantid.serve.gradcam import encode_png, overlay_heatmap

    started = time.perf_counter()
    try:
        image = predictor.preprocess(data)
    except BadImageError as exc:
        raise _bad_image(exc.reason) from None
    result = cam(image, target)
    png = encode_png(overlay_heatmap(image, result.heatmap))
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return {
        "model_id": predictor.model_id,
        "label": predictor.classes[result.class_index],
        "class_index": result.class_index,
        "probability": _finite(result.probabilities[result.class_index]),
        "heatmap_png": base64.b64encode(png).decode("ascii"),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "elapsed_ms": round(elapsed_ms, 2),
    }


def _resolve_class(classes: list[str], label: str | None, class_index: int | None) -> int | None:
    if label is not None and class_index is not None:
        if not 0 <= class_index < len(classes) or classes[class_index] != label:
            raise HTTPException(422, f"label '{label}' and class_index {class_index} name different classes; send one")
    if label is not None:
        if label not in classes:
            shown = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
            raise HTTPException(422, f"unknown label '{label}': the model knows {shown}")
        return classes.index(label)
    if class_index is not None:
        if not 0 <= class_index < len(classes):
            raise HTTPException(422, f"class_index {class_index} is out of range: the model has {len(classes)} classes (0..{len(classes) - 1})")
        return class_index
    return None


# --------------------------------------------------------------------------- model card


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _model_card(predictor: Predictor, settings: ServeSettings, gradcam_available: bool) -> dict[str, Any]:
    run_dir = settings.run_dir if settings.run_dir.is_dir() else settings.run_dir.parent
    summary = _read_json(run_dir / "train_summary.json") or {}
    evaluation = _read_json(run_dir / "eval.json")
    trained = getattr(predictor, "trained", None)
    backbone = summary.get("model") or (trained.config.model.name if trained is not None else None)
    if backbone is None:
        config = _read_config(run_dir)
        backbone = config.model.name if config is not None else "unknown"

    metrics = (evaluation or {}).get("metrics") or {}
    per_class = (evaluation or {}).get("per_class") or []
    per_class_f1 = {
        str(row["class"]): _finite(row.get("f1"))
        for row in per_class
        if isinstance(row, dict) and "class" in row
    }
    eval_split = (evaluation or {}).get("split")
    test_accuracy = None
    if evaluation is not None and eval_split in (None, "test"):
        test_accuracy = _finite(metrics.get("accuracy"))
    if test_accuracy is None:
        test_accuracy = _finite(summary.get("test_acc"))
    parameters = summary.get("parameters")
    return {
        "model_id": predictor.model_id,
        "backbone": backbone,
        "image_size": predictor.image_size,
        "classes": list(predictor.classes),
        "backend": predictor.backend,
        "test_accuracy": test_accuracy,
        "per_class_f1": per_class_f1,
        "balanced_accuracy": _finite(metrics.get("balanced_accuracy")),
        "macro_f1": _finite(metrics.get("macro_f1")),
        "gradcam_available": gradcam_available,
        "evaluated": evaluation is not None,
        "eval_split": eval_split,
        "best_val_accuracy": _finite(summary.get("best_val_acc")),
        "parameters": parameters.get("total") if isinstance(parameters, dict) else None,
        "max_upload_bytes": settings.max_upload_bytes,
        "top_k": settings.top_k,
    }


def _read_config(run_dir: Path) -> Any:
    try:
        from plantid.config import load_run_config

        return load_run_config(run_dir / "config.yaml")
    except Exception:
        return None


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("plantid")
    except Exception:
        return "0"


# --------------------------------------------------------------------------- headers and errors


class _SecurityHeaders:
    """Pure ASGI middleware (cheaper than @app.middleware): nosniff everywhere, a strict CSP on
    the page and its static files, no caching of API answers."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        extra = [(b"x-content-type-options", b"nosniff")]
        if path == "/" or path.startswith("/static/"):
            extra += [(b"content-security-policy", PAGE_CSP.encode()), (b"referrer-policy", b"no-referrer")]
        elif path.startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as {"detail": "one clear sentence"}."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"not found: {request.url.path}"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error while handling %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)
