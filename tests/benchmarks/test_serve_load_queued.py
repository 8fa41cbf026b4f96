"""benchmarks/bench_serve_load.py's queued-uploads phase, without a server: the photo, the body, the options."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its sibling bench_serve

import bench_serve_load as bench  # noqa: E402

from plantid.serve.uploads import MAX_UPLOAD_PIXELS  # noqa: E402


def test_the_queued_photo_is_a_valid_noise_png_just_under_the_limit() -> None:
    case = bench.noise_png()
    assert bench.QUEUED_MIN_BYTES <= len(case.data) < bench.MAX_UPLOAD_BYTES
    with Image.open(io.BytesIO(case.data)) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        width, height = img.size
        pixels = np.asarray(img)
    assert width * height * 10 <= MAX_UPLOAD_PIXELS
    assert pixels.std() > 60  # noise, not a flat image
    assert case.status == 200


def test_the_multipart_body_holds_the_photo_in_the_field_file() -> None:
    case = bench.Case("tiny", b"\x89PNG-bytes", "x.png", "image/png", 200, 0.0)
    body, content_type = bench.multipart(case)
    boundary = content_type.split("boundary=", 1)[1]
    assert content_type.startswith("multipart/form-data; ")
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert b'name="file"; filename="x.png"' in body and b"\r\n\r\n\x89PNG-bytes\r\n" in body


def test_most_held_counts_uploads_sent_and_not_yet_answered() -> None:
    answer = bench.QueuedAnswer
    answers = [answer(200, b"", 0.0, 1.0), answer(200, b"", 0.1, 2.0), answer(200, b"", 1.5, 3.0),
               answer(0, b"", 0.0, 0.5, "ConnectionResetError")]  # no answer: never counted
    assert bench.most_held(answers) == 2


def test_a_queued_only_check_writes_json_only_where_told(tmp_path: Path) -> None:
    assert bench.parse_args([]).out == bench.RESULTS
    assert bench.parse_args([]).queued == 32
    assert bench.parse_args(["--queued-only"]).out is None
    assert bench.parse_args(["--queued-only", "--out", str(tmp_path / "q.json")]).out == tmp_path / "q.json"
    for wrong in (["--queued", "-1"], ["--queued", "257"], ["--queued-only", "--queued", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(wrong)
