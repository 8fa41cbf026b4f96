"""Inputs and outputs at the edges: only the documented photo formats are decoded, huge files are
refused from their size, names that are not UTF-8, diverged trainings, the loopback server's Host
check and HEAD, CSV cells that look like formulas, and the memory an upload costs."""

from __future__ import annotations

import asyncio
import io
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.requests import Request

from plantid.data.images import BadImageError, decode_image
from plantid.data.scan import scan_folder
from plantid.errors import PlantidError
from plantid.infer.cli_predict import format_csv
from plantid.infer.predictor import Predictor
from plantid.serve.app import build_app
from plantid.serve.uploads import received_upload
from tests.support.cli import one_line_error, run_plantid


def _encoded(fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "ICO", "SGI", "EPS", "PPM", "DDS", "QOI"])
def test_formats_plantid_does_not_document_are_never_decoded(fmt: str):
    try:
        data = _encoded(fmt)
    except (KeyError, OSError, ValueError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    with pytest.raises(BadImageError, match="not an image"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_the_documented_formats_still_decode(fmt: str):
    assert decode_image(_encoded(fmt)).pixels.shape == (16, 16, 3)


def test_a_huge_file_is_refused_from_its_size_without_reading_it(tmp_path: Path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:
        fh.write(_encoded("JPEG"))
        fh.truncate(3 * 1024**3)  # a sparse 3 GB file: costs nothing on disk
    tracemalloc.start()
    with pytest.raises(BadImageError, match="file too large"):
        decode_image(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 1024**2


def test_a_name_that_is_not_utf8_is_listed_as_bad_and_split_goes_on(tmp_path: Path, make_image_folder):
    data = make_image_folder(tmp_path / "D", per_class=4)
    os.rename(data / "a" / "a_000.jpg", os.path.join(os.fsencode(data / "a"), b"bad\xffname.jpg"))
    report = scan_folder(data)
    bad = [b for b in report.bad if "UTF-8" in b.reason]
    assert len(bad) == 1 and "bad\\xffname.jpg" in bad[0].path
    proc = run_plantid("split", str(data), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "bad" not in (tmp_path / "s" / "split.csv").read_text()


def test_a_diverged_training_stops_with_one_line_and_no_trust_file(tmp_path: Path, tiny_folder: Path):
    run = tmp_path / "run"
    proc = run_plantid("train", "--data", str(tiny_folder), "--recipe", "simple-cnn", "--out", str(run),
                       "data.image_size=32", "train.epochs=2", "train.progress=false", "optim.lr=inf",
                       f"data.cache_dir={tmp_path / 'cache'}", "track.mlflow=false")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and "diverged" in errors[0], proc.stderr[-3000:]
    assert not (run / "trust.json").exists() and not (run / "best.ckpt").exists()


def test_devices_zero_is_one_line(tmp_path: Path, tiny_folder: Path):
    proc = run_plantid("train", "--data", str(tiny_folder), "--recipe", "simple-cnn", "--out", str(tmp_path / "r"),
                       "train.devices=0")
    assert "train.devices" in one_line_error(proc)


def _app(tmp_path: Path, **kwargs):
    predictor = Predictor(["a", "b"], 32, lambda images: np.full((len(images), 2), 0.5), "m", "onnx")
    return build_app(predictor, tmp_path, **kwargs)


def test_the_loopback_server_answers_only_its_own_host_names_and_head(tmp_path: Path):
    app = _app(tmp_path, allowed_hosts=["127.0.0.1", "localhost"])
    local = TestClient(app, base_url="http://127.0.0.1:8000")
    assert local.get("/api/health").status_code == 200
    head = local.head("/api/health")
    assert head.status_code == 200 and head.content == b""
    rebound = TestClient(app, base_url="http://attacker.example:8000")
    assert rebound.get("/api/health").status_code == 400
    assert rebound.post("/api/predict", files={"file": ("x.png", _encoded("PNG"))}).status_code == 400


def test_csv_cells_that_look_like_formulas_are_quoted():
    text = format_csv([("=cmd|' /C calc'!A0.jpg", [("+a", 0.5), ("b", 0.5)], False, 1.0, None)])
    rows = text.splitlines()[1:]
    assert all(row.startswith("'=cmd") for row in rows) and ",'+a," in rows[0]


def test_a_queued_10_mb_upload_waits_on_disk_not_in_memory(tmp_path: Path):
    """While a request waits for a decode thread its photo stays in the parser's spooled file: the
    memory it holds is the spool's first megabyte, not the photo (the goal is 12 MB a 10 MB upload)."""
    boundary = "plantidboundary"
    photo = os.urandom(int(9.4 * 1024**2))
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    scope = {"type": "http", "method": "POST", "path": "/api/predict", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                         (b"content-length", str(len(body)).encode())]}

    async def held_while_waiting() -> int:
        pending = list(chunks)

        async def receive() -> dict:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

        tracemalloc.start()
        async with received_upload(Request(scope, receive), limit=10 * 1024**2) as upload:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert upload.size == len(photo) and upload.read() == photo
        return peak

    assert asyncio.run(held_while_waiting()) <= 3 * 1024**2


def test_an_eval_json_with_values_of_the_wrong_type_is_evaluated_again(copy_run: Path, caplog):
    """The report warns in one line naming the file and evaluates the test split afresh: no traceback."""
    import json

    from plantid.evaluate.report import build_report
    from plantid.records import read_evaluation

    (copy_run / "eval.json").write_text(json.dumps({"split": "test", "n_images": "many", "classes": 3, "metrics": 7,
                                                    "per_class": "x", "confusion": None, "checkpoint": 1,
                                                    "worst": {}, "tta": None, "trust": None}))
    with pytest.raises(PlantidError):
        read_evaluation(copy_run)
    build_report(copy_run)
    assert (copy_run / "report.html").is_file()
    assert read_evaluation(copy_run).n_images > 0  # written anew, whole


@pytest.mark.slow
def test_ctrl_c_during_training_says_how_to_go_on(tmp_path: Path, tiny_folder: Path):
    import signal
    import subprocess
    import time

    from tests.support.cli import PLANTID

    run = tmp_path / "run"
    proc = subprocess.Popen([*PLANTID, "train", "--data", str(tiny_folder), "--recipe", "simple-cnn", "--out", str(run),
                             "data.image_size=32", "train.epochs=500", "train.progress=false",
                             f"data.cache_dir={tmp_path / 'cache'}", "track.mlflow=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (run / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # Lightning is fitting once the first epoch's checkpoint exists
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
