"""The web app: a local page and a JSON API to identify a plant from one photo.

`create_app(run_dir)` loads the run's Predictor once and returns a FastAPI app:

* ``GET /``: the page (static files under ``/static``, fully offline);
* ``GET /api/health``, ``GET /api/model``: liveness and the model card;
* ``POST /api/predict``: multipart field ``file`` -> top-k species with probabilities, and
  ``unknown`` (true when the photo looks like none of the run's species) with ``ood_score`` and
  ``ood_threshold`` (all null for a run without trust files; probabilities are then uncalibrated),
  and ``answer`` {"kind": species | unsure | unknown, "species", "text"} (plantid.infer.answers);
* ``POST /api/identify``: up to 5 photos of one plant (multipart field ``files``, repeated) ->
  one combined answer in the same shape (plantid.infer.group's rule), plus each photo's own
  answer under ``photos``;
* ``POST /api/gradcam``: multipart field ``file`` (+ optional ``label`` or ``class_index``) ->
  a PNG of the Grad-CAM heat-map over the photo (torch backend only).

Uploads are bounded: Content-Length is checked before reading, and the body is counted while
it streams in, so a client that lies about its size is cut off at the limit. Decoding and
inference run on two decode threads, so the event loop keeps answering other requests. Every
error is JSON ``{"detail": "a clear sentence"}`` with a 4xx code; nothing is global, so several
apps (runs) can live in one process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.trustedhost import TrustedHostMiddleware

from plantid.data.images import BadImageError
from plantid.errors import PlantidError
from plantid.infer.answers import answer_for
from plantid.infer.group import MAX_GROUP_PHOTOS, combine
from plantid.infer.predictor import Predictor
from plantid.records import finite
from plantid.serve.middleware import SecurityHeaders, install_error_handlers
from plantid.serve.model_card import build_model_card, package_version
from plantid.serve.openapi import ERROR_RESPONSES, GRADCAM_BODY, IDENTIFY_BODY, UPLOAD_BODY
from plantid.serve.uploads import (
    MAX_UPLOAD_PIXELS,
    Upload,
    bad_image_error,
    check_pixels,
    displayed_size,
    int_or_reject,
    received_upload,
    received_uploads,
)

log = logging.getLogger("plantid.serve")

__all__ = ["create_app", "build_app", "ServeSettings"]

STATIC_DIR = Path(str(resources.files("plantid.serve") / "static"))
BARS_SCRIPT = Path(str(resources.files("plantid.infer") / "webapp" / "bars.js"))


@dataclass(frozen=True)
class ServeSettings:
    """What an app instance was started with."""

    run_dir: Path
    max_upload_bytes: int
    top_k: int
    max_upload_pixels: int = MAX_UPLOAD_PIXELS
    # Decodes (and inferences) run on these two threads only. Each may hold a full-size photo in
    # memory, so this bounds the server's peak however many requests arrive together; and the memory
    # a thread's malloc arena keeps for reuse (plantid.runtime keeps freed memory) is kept for two
    # threads, not for each of the ~40 of the request thread pool (bench_serve_load.py).
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="plantid-decode"))


def markdown_text(text: str) -> str:
    """`text` shown literally inside the API description (Markdown that may hold HTML): every
    character Markdown or HTML could read as markup becomes an HTML character reference."""
    return "".join(f"&#{ord(c)};" if not (c.isalnum() or c in " .-_") else c for c in text)


def create_app(run_dir: str | os.PathLike, backend: str = "torch", max_upload_bytes: int = 10 * 1024 * 1024,
               top_k: int = 5, allowed_hosts: list[str] | None = None) -> FastAPI:
    """Load `run_dir`'s model with `backend` ('torch' or 'onnx') once and return the web app.

    `allowed_hosts`: the Host header values answered (`plantid serve` passes the loopback names
    and the bound one); None answers any, for an app mounted behind another server."""
    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir, backend=backend)
    return build_app(predictor, run_dir, max_upload_bytes=max_upload_bytes, top_k=top_k, allowed_hosts=allowed_hosts)


@dataclass(frozen=True)
class Asked:
    """What a request for an answer works with: the app's settings and model, and how many species to list."""

    settings: ServeSettings
    predictor: Predictor
    top_k: int


def asked(request: Request, top_k: int | None = None) -> Asked:
    """The dependency of the answering endpoints: the app's state, and the `top_k` query parameter
    (1-1000, else a 422; by default the server's setting)."""
    settings = request.app.state.settings
    k = settings.top_k if top_k is None else top_k
    if not 1 <= k <= 1000:
        raise HTTPException(422, f"top_k must be between 1 and 1000, got {k}")
    return Asked(settings, request.app.state.predictor, k)


def build_app(predictor: Predictor, run_dir: str | os.PathLike, max_upload_bytes: int = 10 * 1024 * 1024,
              top_k: int = 5, max_upload_pixels: int = MAX_UPLOAD_PIXELS,
              allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app around an already loaded Predictor (create_app's second half; handy in tests)."""
    if max_upload_bytes < 1:
        raise PlantidError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if top_k < 1:
        raise PlantidError(f"top_k must be at least 1, got {top_k}")
    settings = ServeSettings(run_dir=Path(run_dir), max_upload_bytes=int(max_upload_bytes), top_k=int(top_k),
                             max_upload_pixels=int(max_upload_pixels))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        settings.decode_pool.shutdown(wait=False, cancel_futures=True)

    # FastAPIOffline is FastAPI with /docs and /redoc served from packaged assets: the stock pages
    # load Swagger UI from a CDN, so they were blank on an offline machine.
    app = FastAPIOffline(
        lifespan=lifespan,
        title="plantid",
        summary="Identify a plant species from a photo.",
        # the model id comes from a run folder (its name, preprocessing.json) that may be someone
        # else's: escaped, so /redoc and /docs show it as text and never run it
        description=f"Model <code>{markdown_text(predictor.model_id)}</code> ({predictor.backend} backend). "
                    "Send a photo as multipart/form-data in a field named `file`.",
        version=package_version(),
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.gradcam = _make_gradcam(predictor)

    install_error_handlers(app)

    app.add_middleware(SecurityHeaders)
    if allowed_hosts is not None:
        # DNS rebinding: a web page whose name resolves to 127.0.0.1 reaches this server with its
        # own name in the Host header; only the names this server was started under are answered
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.get("/static/bars.js", include_in_schema=False)
    def bars_script() -> FileResponse:
        # the probability bars, one script with the exported web app's (plantid.infer.webapp)
        return FileResponse(BARS_SCRIPT, media_type="text/javascript; charset=utf-8")

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
        settings = state.settings
        return build_model_card(state.predictor, settings.run_dir, state.gradcam is not None,
                                max_upload_bytes=settings.max_upload_bytes, top_k=settings.top_k)

    @app.post("/api/predict", tags=["predict"], responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": UPLOAD_BODY})
    async def predict(request: Request, ask: Asked = Depends(asked)) -> dict[str, Any]:
        """Top-k species for one photo (multipart field `file`)."""
        async with received_upload(request, ask.settings.max_upload_bytes) as upload:
            return await _bounded(ask.settings, [upload], _predict_one, ask.predictor, upload, ask.top_k)

    @app.post("/api/identify", tags=["predict"], responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": IDENTIFY_BODY})
    async def identify(request: Request, ask: Asked = Depends(asked)) -> dict[str, Any]:
        """One answer for up to 5 photos of one plant (multipart field `files`, repeated), and each photo's own."""
        async with received_uploads(request, ask.settings.max_upload_bytes, MAX_GROUP_PHOTOS) as uploads:
            names = [upload.filename or f"photo {i + 1}" for i, upload in enumerate(uploads)]
            return await _bounded(ask.settings, uploads, _identify_group, ask.predictor, uploads, names, ask.top_k)

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
        async with received_upload(request, state.settings.max_upload_bytes,
                                   extra_fields=("label", "class_index")) as upload:
            label = upload.fields.get("label", label)
            index_text = upload.fields.get("class_index")
            if index_text is not None:
                class_index = int_or_reject(index_text, 422, f"class_index must be an integer, got '{index_text}'")
            target = _resolve_class(predictor.classes, label, class_index)
            return await _bounded(state.settings, [upload], _gradcam_one, predictor, state.gradcam, upload, target)

    return app


# --------------------------------------------------------------------------- work (decode threads)


async def _bounded(settings: ServeSettings, uploads: list[Upload], work: Any, *args: Any) -> dict[str, Any]:
    """`work(*args)` on a decode thread, only if every upload declares a pixel count within bounds."""
    for upload in uploads:  # the header only: cheap, and a 413 needs no decode thread
        check_pixels(upload, settings.max_upload_pixels)
    return await asyncio.get_running_loop().run_in_executor(settings.decode_pool, functools.partial(work, *args))


def _answer_fields(predictor: Predictor, top: list[tuple[str, float]], unknown: bool | None,
                   ood_score: float | None, answer: Any) -> dict[str, Any]:
    """What every answer of the API says: the ranking, the unknown check against the run's threshold
    (plantid.trust) and the answer, species | unsure | unknown (plantid.infer.answers)."""
    return {
        "model_id": predictor.model_id,
        "top_k": [{"label": label, "probability": finite(p)} for label, p in top],
        "unknown": unknown,
        "ood_score": finite(ood_score),
        "ood_threshold": finite(predictor.threshold),
        "answer": None if answer is None else answer.as_json(),
        "answer_level": finite(predictor.answer_level),
        "calibrated": predictor.trust is not None,
    }


def _predict_one(predictor: Predictor, upload: Upload, k: int) -> dict[str, Any]:
    started = time.perf_counter()
    data = upload.read()
    prediction = predictor.predict([data], top_k=k)[0]
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if prediction.error is not None:
        raise bad_image_error(prediction.error)
    return {**_answer_fields(predictor, prediction.top, prediction.unknown, prediction.ood_score, prediction.answer),
            "elapsed_ms": round(elapsed_ms, 2), "image": displayed_size(data)}


def _identify_group(predictor: Predictor, uploads: list[Upload], names: list[str], k: int) -> dict[str, Any]:
    """The combined answer for the photos of one plant; any unreadable photo refuses the request, named."""
    started = time.perf_counter()
    photos = [upload.read() for upload in uploads]
    predictions = predictor.predict(photos, top_k=k)
    for name, prediction in zip(names, predictions):
        prediction.source = name
        if prediction.error is not None:
            error = bad_image_error(prediction.error)
            raise HTTPException(error.status_code, f"{name}: {error.detail}")
    group = combine("plant", predictions, predictor.classes, predictor.threshold, k)
    # the group is answered at the same level as one photo
    answer = answer_for(group.top, group.unknown, predictor.answer_level, len(predictor.classes)) if group.top else None
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return {
        **_answer_fields(predictor, group.top, group.unknown, group.ood_score, answer),
        "combined": "mean of the photos' calibrated log-probabilities; unknown when their mean OOD score is above the threshold",
        "photos": [{"name": name, "top_k": [{"label": label, "probability": finite(p)} for label, p in prediction.top],
                    "unknown": prediction.unknown, "ood_score": finite(prediction.ood_score),
                    "answer": None if prediction.answer is None else prediction.answer.as_json(),
                    "image": displayed_size(data)}
                   for name, prediction, data in zip(names, predictions, photos)],
        "elapsed_ms": round(elapsed_ms, 2),
    }


def _make_gradcam(predictor: Predictor) -> Any:
    """A GradCam on the predictor's torch model, or None when the backend has no gradients."""
    trained = getattr(predictor, "trained", None)
    model = getattr(trained, "model", None)
    if predictor.backend != "torch" or model is None or not callable(getattr(model, "gradcam_layer", None)):
        return None
    from plantid.serve.gradcam import GradCam  # lazy: torch, only for a torch backend's heat-map

    try:
        return GradCam(model)
    except PlantidError as exc:
        log.warning("Grad-CAM unavailable: %s", exc)
        return None


def _gradcam_one(predictor: Predictor, cam: Any, upload: Upload, target: int | None) -> dict[str, Any]:
    from plantid.serve.gradcam import encode_png, overlay_heatmap  # lazy: torch, as above

    started = time.perf_counter()
    data = upload.read()
    try:
        image = predictor.preprocess(data)
    except BadImageError as exc:
        raise bad_image_error(exc.reason) from None
    result = cam(image, target)
    # the probability predict gives (calibrated by the run's temperature), not the heat-map pass's raw softmax
    probabilities = predictor.predict_scored(image[None])[0][0]
    png = encode_png(overlay_heatmap(image, result.heatmap))
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return {
        "model_id": predictor.model_id,
        "label": predictor.classes[result.class_index],
        "class_index": result.class_index,
        "probability": finite(probabilities[result.class_index]),
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
