"""Kinds of bad input that docs/robustness.md lists and no other test file exercised.

Each test gives plantid one hostile or broken input through its real entry point (the web app,
the Predictor, the CLI) and checks the promised outcome: a clear 4xx or one-line error, nothing
run, written or echoed that should not be, and the process still answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plantid.errors import PlantidError
from plantid.infer.predictor import Predictor
from plantid.serve.app import build_app
from tests.support.cli import PLANTID, one_line_error, run_plantid
from tests.support.images import class_pixels, jpeg_bytes, png_bomb
from tests.support.refusals import refusal

LABELS = ["a", "b", "c"]


def _photo() -> bytes:
    return jpeg_bytes(class_pixels(1, 40, 40, np.random.default_rng(0)))


def _uniform_predictor(work=None) -> Predictor:
    """A real Predictor (32 px, three classes) whose network answers uniform probabilities."""
    def batch(images: np.ndarray) -> np.ndarray:
        if work is not None:
            work()
        return np.full((len(images), len(LABELS)), 1.0 / len(LABELS))

    return Predictor(LABELS, 32, batch, "uniform:model", "onnx")


# --------------------------------------------------------------------------- serve


def test_a_client_that_disconnects_mid_upload_gets_a_400_and_leaves_no_traceback(tmp_path: Path, caplog) -> None:
    app = build_app(_uniform_predictor(), tmp_path)
    pulled = 0
    sent: list[dict] = []

    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="leaf.jpg"\r\n\r\n'
    chunks = [head + bytes(4096 - len(head)), bytes(4096)]  # the start of a photo upload, 8 KB

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        if pulled <= len(chunks):
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": True}
        return {"type": "http.disconnect"}  # the tab was closed half-way

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"100000")]}
    with caplog.at_level(logging.INFO, logger="plantid.serve"):
        asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert start["status"] == 400 and "closed the connection after 8 KB" in body["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_many_concurrent_uploads_decode_on_two_threads_only(tmp_path: Path) -> None:
    """32 uploads at once: at most two decodes and inferences run together, always on the same two threads."""
    import httpx

    lock = threading.Lock()
    running, most, threads = 0, 0, set()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            running -= 1

    app = build_app(_uniform_predictor(work), tmp_path)
    photo = _photo()

    async def flood() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            answers = await asyncio.gather(*(http.post("/api/predict", files={"file": ("a.jpg", photo, "image/jpeg")})
                                             for _ in range(32)))
        return [a.status_code for a in answers]

    assert asyncio.run(flood()) == [200] * 32
    assert most == 2
    assert len(threads) == 2 and all(name.startswith("plantid-decode") for name in threads), threads


@pytest.mark.parametrize("name", ["../../../../escaped.jpg", "/etc/cron.d/leaf.jpg", '<img src=x onerror="alert(1)">.jpg',
                                  "..\\..\\win.jpg", "leaf\x00.jpg.exe"])
def test_an_upload_file_name_is_never_used_as_a_path_or_echoed(name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    before = sorted(tmp_path.rglob("*"))
    client = TestClient(build_app(_uniform_predictor(), tmp_path / "run"))
    response = client.post("/api/predict", files={"file": (name, _photo(), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert "escaped" not in response.text and "onerror" not in response.text and "cron" not in response.text
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere under the tree


def test_the_server_binds_to_loopback_unless_told_otherwise(trained_run: Path, tmp_path: Path) -> None:
    """`plantid serve RUN` with no --host listens on 127.0.0.1 only (read back from /proc/net/tcp)."""
    import urllib.request

    from tests.support.launch import free_port

    port = free_port()
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([*PLANTID, "serve", str(trained_run), "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                with opener.open(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    listening.add(address)
        assert listening == {"0100007F"}, listening  # 127.0.0.1, little-endian hex; not 0.0.0.0 or ::
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_a_host_that_is_not_an_address_of_this_machine(trained_run: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = run_plantid("serve", str(trained_run), "--host", "192.0.2.1", "--port", str(port))
    line = one_line_error(proc)  # 192.0.2.1 is TEST-NET-1: never an address of this machine
    assert "192.0.2.1" in line and "serving" not in proc.stdout


# --------------------------------------------------------------------------- predict and run folders


def test_a_hostile_best_checkpoint_is_refused_without_running_it(copy_run: Path, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return Path.touch, (marker,)

    checkpoint = torch.load(copy_run / "best.ckpt", map_location="cpu", weights_only=True)
    torch.save({**checkpoint, "payload": Payload()}, copy_run / "best.ckpt")
    with pytest.raises(PlantidError, match="best.ckpt: cannot load checkpoint"):
        Predictor.from_run(copy_run)
    with open(copy_run / "best.ckpt", "wb") as fh:  # a bare pickle, no zip container
        pickle.dump({"state_dict": {}, "payload": Payload()}, fh)
    with pytest.raises(PlantidError, match="best.ckpt"):
        Predictor.from_run(copy_run)
    assert not marker.exists()


def test_pipes_devices_and_bombs_among_photos_are_skipped_without_hanging(trained_run: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(30_000))
    good = tmp_path / "leaf.jpg"
    good.write_bytes(_photo())
    proc = run_plantid("predict", str(trained_run), str(fifo), "/dev/zero", str(bomb), str(good), "--backend", "torch",
                    "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3, proc.stderr
    assert any("bomb.png" in s and "decompression bomb" in s for s in skipped), skipped
    assert [Path(entry["file"]).name for entry in json.loads(proc.stdout)] == ["leaf.jpg"]


def test_resume_with_a_damaged_config_yaml_is_one_line_and_changes_nothing(copy_run: Path) -> None:
    from plantid.train.run import train_run

    (copy_run / "config.yaml").write_text("model: {name: simple_cnn\ntrain: [epochs\n")
    before = {p.name: p.read_bytes() for p in copy_run.iterdir() if p.is_file()}
    message = refusal(train_run, None, copy_run, resume=True)
    assert "config.yaml: not valid YAML (line" in message and "--out NEW_RUN" in message
    assert {p.name: p.read_bytes() for p in copy_run.iterdir() if p.is_file()} == before
