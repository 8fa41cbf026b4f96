"""`POST /api/identify`: several photos of one plant, one answer by plantid.infer.group's rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plantid.infer.group import combine_probabilities
from plantid.infer.predictor import Predictor
from plantid.serve.app import build_app
from tests.support.images import class_pixels, jpeg_bytes


def _photo(class_index: int, seed: int) -> bytes:
    return jpeg_bytes(class_pixels(class_index, 40, 36, np.random.default_rng([seed, class_index])))


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor.from_run(trained_run)


@pytest.fixture(scope="module")
def client(predictor: Predictor, trained_run: Path) -> TestClient:
    with TestClient(build_app(predictor, trained_run, top_k=3)) as test_client:
        yield test_client


def _files(photos: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]


def test_identify_combines_the_photos(client: TestClient, predictor: Predictor) -> None:
    photos = [_photo(1, seed) for seed in range(3)]
    response = client.post("/api/identify", files=_files(photos))
    assert response.status_code == 200, response.text
    body = response.json()
    singles = predictor.predict(photos, top_k=3)
    expected = combine_probabilities(np.stack([p.probabilities for p in singles]))
    assert [item["label"] for item in body["top_k"]] == [predictor.classes[i] for i in np.argsort(-expected)[:3]]
    for item in body["top_k"]:
        assert item["probability"] == pytest.approx(expected[predictor.classes.index(item["label"])], abs=1e-6)
    assert [p["name"] for p in body["photos"]] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    assert [p["top_k"][0]["label"] for p in body["photos"]] == [p.top[0][0] for p in singles]
    assert body["photos"][0]["image"] == {"width": 40, "height": 36}
    assert body["unknown"] is None and body["calibrated"] is False  # the tiny run has no trust files

    one = client.post("/api/identify", files=_files(photos[:1])).json()
    alone = client.post("/api/predict", files={"file": ("p.jpg", photos[0], "image/jpeg")}).json()
    assert [i["label"] for i in one["top_k"]] == [i["label"] for i in alone["top_k"]]
    assert [i["probability"] for i in one["top_k"]] == pytest.approx([i["probability"] for i in alone["top_k"]], abs=1e-6)


def test_identify_refusals_name_the_photo(client: TestClient) -> None:
    good = _photo(0, 0)
    too_many = client.post("/api/identify", files=_files([good] * 6))
    assert too_many.status_code == 422 and "at most 5 photos" in too_many.json()["detail"]
    broken = client.post("/api/identify", files=[*_files([good]), ("files", ("notes.txt", b"hello", "text/plain"))])
    assert broken.status_code == 415 and broken.json()["detail"].startswith("notes.txt:")
    truncated = client.post("/api/identify", files=[*_files([good]), ("files", ("cut.jpg", good[:60], "image/jpeg"))])
    assert truncated.status_code == 400 and truncated.json()["detail"].startswith("cut.jpg:")
    none = client.post("/api/identify", files={"other": ("x.jpg", good, "image/jpeg")})
    assert none.status_code == 422 and "files" in none.json()["detail"]
    assert client.get("/api/health").status_code == 200
