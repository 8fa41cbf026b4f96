"""What wraps every response: security headers, and every error as {"detail": "one sentence"}."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("plantid.serve")

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def docs_csp(html: bytes) -> str:
    """The CSP of an API docs page (Swagger UI, ReDoc): scripts only from this server and the page's
    own inline scripts, each allowed by its hash, so nothing injected into the page (a model id in
    the API description) can run; inline styles allowed (ReDoc's styled components need them)."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
                      for body in INLINE_SCRIPT.findall(html))
    return ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            f"script-src 'self' {hashes}; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


class SecurityHeaders:
    """Pure ASGI middleware (cheaper than @app.middleware): nosniff everywhere, a strict CSP on
    the page, its static files and the API docs, no caching of API answers; HEAD answered as GET
    without a body."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope.get("method") == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        path = scope.get("path", "")
        extra = [(b"x-content-type-options", b"nosniff")]
        if path == "/" or path.startswith("/static/"):
            extra += [(b"content-security-policy", PAGE_CSP.encode()), (b"referrer-policy", b"no-referrer")]
        elif path.startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))
        docs = path in DOCS_PATHS
        held: list[dict] = []

        async def send_with_headers(message: dict) -> None:
            if docs:  # a small HTML page: held whole, so its CSP can name its inline scripts' hashes
                held.append(message)
                if message["type"] != "http.response.body" or message.get("more_body"):
                    return
                body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
                start = next(m for m in held if m["type"] == "http.response.start")
                headers = [(n, v) for n, v in start.get("headers", []) if n.lower() != b"content-security-policy"]
                headers += [(b"content-security-policy", docs_csp(body).encode()), (b"referrer-policy", b"no-referrer")]
                await send_body({**start, "headers": headers + extra})
                await send_body({"type": "http.response.body", "body": body, "more_body": False})
                return
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send_body(message)

        async def send_body(message: dict) -> None:
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_error_handlers(app: FastAPI) -> None:
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
