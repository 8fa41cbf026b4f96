"""Uploads are bounded by decoded pixels, not only bytes: a small file that decodes huge is a 413."""

from __future__ import annotations

import io
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from plantid.infer.predictor import Predictor
from plantid.serve.app import build_app


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_small_file_that_decodes_to_too_many_pixels_is_refused(trained_run: Path):
    app = build_app(Predictor.from_run(trained_run, backend="torch"), trained_run, max_upload_pixels=1_000_000)
    client = TestClient(app)
    big = _png(1500, 1000)  # 1.5 megapixels in a few KB
    assert len(big) < 50_000
    refused = client.post("/api/predict", files={"file": ("big.png", big, "image/png")})
    assert refused.status_code == 413
    assert "1500x1000" in refused.json()["detail"] and "megapixels" in refused.json()["detail"]
    ok = client.post("/api/predict", files={"file": ("ok.png", _png(900, 1000), "image/png")})
    assert ok.status_code == 200 and ok.json()["top_k"]
    cam = client.post("/api/gradcam", files={"file": ("big.png", big, "image/png")})
    assert cam.status_code == 413 and "megapixels" in cam.json()["detail"]
