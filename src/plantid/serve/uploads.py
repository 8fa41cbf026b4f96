"""Reading one uploaded photo safely: the multipart body under a byte limit, and the 4xx answers.

Content-Length is checked before reading, and the body is counted while it streams in, so a
client that lies about its size is cut off at the limit; a decoder's complaint becomes a status
code and a sentence for the page.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from fastapi import HTTPException, Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message

# Uploads may decode to at most this many pixels (a 24-megapixel camera photo is 6000x4000): Pillow's
# own bomb limit (89 MP) let a 257 KB PNG decode to 9400x9400, ~0.8 GB and 3-4 s a request.
MAX_UPLOAD_PIXELS = 40_000_000
# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 16 * 1024
ACCEPTED_FORMATS = "JPEG, PNG, WebP, HEIC, AVIF, BMP, GIF or TIFF"
# Declared part types we let through to the decoder (it has the last word on what is an image).
# /api/predict and /api/gradcam take one photo; several photos of one plant go to this endpoint
SEVERAL_PHOTOS_ENDPOINT = "/api/identify"
SEVERAL_FILES = (f"this endpoint takes one photo in the field 'file'; send several photos of one plant to "
                 f"{SEVERAL_PHOTOS_ENDPOINT}, or one request per photo")
NEUTRAL_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/x-octet-stream"})


@dataclass
class Upload:
    """One uploaded photo as the server received it, with the form's other fields.

    The photo stays in the multipart parser's spooled file (on disk past 1 MB) until `read` on the
    decode thread that uses it: a request waiting for a decode thread holds no copy of its photo in
    memory, however many arrive together (docs/robustness.md, "Load test of the server").
    """

    file: BinaryIO
    size: int
    content_type: str
    filename: str | None
    fields: dict[str, str]

    def read(self) -> bytes:
        """The photo's bytes."""
        self.file.seek(0)
        return self.file.read()


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def int_or_reject(text: str, status: int, message: str) -> int:
    """`int(text)`, or an HTTPException(status, message) when `text` is not an integer."""
    try:
        return int(text)
    except ValueError:
        raise HTTPException(status, message) from None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload too large: the limit is {_mb(limit)} per photo; choose a smaller photo")


async def _read_form(request: Request, limit: int, max_files: int, too_many: str | None = None) -> Any:
    """The multipart form of the request, its body counted against `limit` while it streams in."""
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
        declared_size = int_or_reject(declared, 400, f"invalid Content-Length header '{declared}'")
        if declared_size > body_limit:
            raise _too_large(limit)
    received = 0

    async def counted() -> Message:
        # The body goes to the multipart parser as it arrives (the parser spools the file part to
        # disk), counted on the way: a waiting upload is never held whole in memory, and a client
        # that lied about (or omitted) its Content-Length is cut off at the limit.
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > body_limit:
                raise _too_large(limit)
        return message

    form_request = Request(request.scope, counted)
    try:
        return await form_request.form(max_files=max_files, max_fields=16)
    except HTTPException:
        raise
    except ClientDisconnect:
        # A closed tab or a dropped connection, not a server error: no traceback in the log (one
        # each, a client could fill the log), and the 400 goes nowhere.
        raise HTTPException(400, f"the client closed the connection after {_mb(received)} of the upload") from None
    except StarletteHTTPException as exc:
        if too_many is not None and "too many files" in str(exc.detail).lower():
            raise HTTPException(400, too_many) from None
        raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
    except Exception as exc:  # the multipart parser's own errors
        raise HTTPException(400, f"malformed multipart body: {exc}") from None


def _photo(item: Any, field: str, limit: int, fields: dict[str, str]) -> Upload:
    """One form item that must be an image upload within `limit` bytes, left where the parser put it."""
    if not isinstance(item, UploadFile):
        raise HTTPException(422, f"the '{field}' field must be a file upload, not a text value")
    part_type = (item.content_type or "").split(";", 1)[0].strip().lower()
    if part_type not in NEUTRAL_TYPES and not part_type.startswith("image/"):
        shown = f"{item.filename}: " if item.filename and field == "files" else ""
        raise HTTPException(415, f"{shown}the upload is {part_type}, not an image: choose a {ACCEPTED_FORMATS} photo")
    if item.size is None or item.size > limit:
        raise _too_large(limit)
    return Upload(file=item.file, size=item.size, content_type=part_type, filename=item.filename, fields=fields)


@asynccontextmanager
async def received_upload(request: Request, limit: int, extra_fields: tuple[str, ...] = ()) -> AsyncIterator[Upload]:
    """The photo of the multipart field 'file' (the size limit enforced while it streams in), open
    until the block ends."""
    form = await _read_form(request, limit, max_files=4, too_many=SEVERAL_FILES)
    try:
        if sum(isinstance(value, UploadFile) for _, value in form.multi_items()) > 1:
            raise HTTPException(400, SEVERAL_FILES)  # answering for one of them silently would mislead
        item = form.get("file")
        if item is None:
            raise HTTPException(422, "no file: send the photo as multipart/form-data in a field named 'file'")
        fields = {}
        for name in extra_fields:
            value = form.get(name)
            if isinstance(value, str) and value.strip():
                fields[name] = value.strip()
        yield _photo(item, "file", limit, fields)
    finally:
        await form.close()


@asynccontextmanager
async def received_uploads(request: Request, limit: int, max_files: int) -> AsyncIterator[list[Upload]]:
    """Up to `max_files` photos of one plant from the multipart field 'files' (repeated), each within
    `limit`, open until the block ends."""
    form = await _read_form(request, limit * max_files, max_files=4 * max_files,  # a clear 422 past max_files
                            too_many=f"too many photos: send at most {max_files} photos of one plant at a time")
    try:
        items = form.getlist("files") or form.getlist("file")
        if not items:
            raise HTTPException(422, "no files: send the photos as multipart/form-data, each in a field named 'files'")
        if len(items) > max_files:
            raise HTTPException(422, f"{len(items)} photos: send at most {max_files} photos of one plant at a time")
        yield [_photo(item, "files", limit, {}) for item in items]
    finally:
        await form.close()


def bad_image_error(exc_reason: str) -> HTTPException:
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


def displayed_size(data: bytes) -> dict[str, int]:
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


def check_pixels(upload: Upload, max_pixels: int) -> None:
    """Refuse (413) a photo whose header declares more than `max_pixels`, before it is decoded."""
    upload.file.seek(0)
    try:
        with Image.open(upload.file) as img:  # reads the header only
            width, height = img.size
    except Exception:  # not readable as an image: the decoder gives the precise 4xx reason
        return
    if width * height > max_pixels:
        raise HTTPException(413, f"photo too large to decode: {width}x{height} pixels, the limit is "
                                 f"{max_pixels / 1e6:.0f} megapixels; send a smaller photo")
