"""`plantid review RUN`: a local page to go through the photos a run doubts and decide about each.

`create_review_app(run, sorted_folders)` returns a FastAPI app:

* ``GET /``: the page (``static/review.html``, ``review.js``, ``review.css``; no external resources);
* ``GET /api/items``: the run's classes and the photos to review (plantid.curate.review), each with
  the decision in force;
* ``GET /api/photo/{id}``: a large thumbnail (JPEG, at most ``THUMB_PX`` a side) of item `id`;
* ``POST /api/decide`` ``{"id": 3, "action": "keep" | "relabel" | "exclude", "label": "..."}`` and
  ``POST /api/undo`` ``{"id": 3}``: append to ``RUN/corrections.jsonl``; answer the item as it is now.

Photos are named by their item id only, never by a path from the browser, so the page can show
nothing but the listed photos. The page builds every label into the document as text (never as
HTML), since class names are folder names and may hold any character. Nothing loads a model.
"""

from __future__ import annotations

import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from plantid.curate.corrections import ACTIONS, UNDO, append_decision, effective_decisions, read_decisions
from plantid.curate.review import ReviewItem, review_items
from plantid.data.images import BadImageError, decode_image
from plantid.errors import PlantidError
from plantid.runfolder import RunFolder
from plantid.serve.middleware import SecurityHeaders, install_error_handlers

STATIC_DIR = Path(str(resources.files("plantid.serve") / "static"))
THUMB_PX = 384


class DecideBody(BaseModel):
    """A decision from the page."""

    id: int
    action: str
    label: str = ""


class UndoBody(BaseModel):
    """Take back the latest decision about item `id`."""

    id: int


def run_classes(run: Path) -> list[str]:
    """The run's classes in the model's order (labels.json)."""
    path = RunFolder(run).labels
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PlantidError(f"{path}: missing or unreadable; pass a trained run folder") from None
    return [str(c) for c in classes]


def create_review_app(run: str | os.PathLike, sorted_folders: list[Path] | None = None,
                      allowed_hosts: list[str] | None = None) -> FastAPI:
    """The review app for `run` (and the unsure photos of `sorted_folders`); `allowed_hosts`: the
    Host header values answered, as for `plantid serve` (DNS rebinding)."""
    run = Path(run)
    classes = run_classes(run)
    items = review_items(run, sorted_folders)
    by_id = {item.id: item for item in items}
    app = FastAPI(title="plantid review", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(SecurityHeaders)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def item_of(item_id: int) -> ReviewItem:
        if item_id not in by_id:
            raise HTTPException(404, f"no photo {item_id} in this review")
        return by_id[item_id]

    def refreshed(item: ReviewItem) -> dict[str, Any]:
        item.decision = effective_decisions(read_decisions(run)).get(item.path)
        return item.as_json()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "review.html", media_type="text/html; charset=utf-8")

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/items")
    def list_items() -> dict[str, Any]:
        decisions = effective_decisions(read_decisions(run))
        for item in items:
            item.decision = decisions.get(item.path)
        return {"run": run.resolve().name, "classes": classes, "corrections": str(RunFolder(run).corrections),
                "items": [item.as_json() for item in items]}

    @app.get("/api/photo/{item_id}")
    def photo(item_id: int) -> Response:
        item = item_of(item_id)
        try:
            pixels = decode_image(item.path).pixels
        except BadImageError as exc:
            raise HTTPException(404, f"{Path(item.path).name}: {exc.reason}") from None
        img = Image.fromarray(pixels)
        img.thumbnail((THUMB_PX, THUMB_PX))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=88)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"cache-control": "max-age=3600"})

    @app.post("/api/decide")
    def decide(body: DecideBody) -> dict[str, Any]:
        item = item_of(body.id)
        if body.action not in ACTIONS:
            raise HTTPException(422, f"unknown action '{body.action}': use one of {', '.join(ACTIONS)}")
        if body.action == "relabel" and body.label not in classes:
            raise HTTPException(422, f"unknown class '{body.label}': relabel to one of the run's classes")
        append_decision(run, item.path, body.action, label=body.label, given=item.given, source=item.sources[0])
        return refreshed(item)

    @app.post("/api/undo")
    def undo(body: UndoBody) -> dict[str, Any]:
        item = item_of(body.id)
        append_decision(run, item.path, UNDO, given=item.given, source=item.sources[0])
        return refreshed(item)

    @app.exception_handler(PlantidError)
    async def plantid_error(_: Request, exc: PlantidError) -> Response:
        return Response(json.dumps({"detail": str(exc)}), status_code=409, media_type="application/json")

    return app
