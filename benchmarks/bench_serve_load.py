"""A bounded load test of `plantid serve` on loopback: mixed good and bad uploads, answers checked.

    .venv/bin/python benchmarks/bench_serve_load.py                         # trains a tiny run first
    .venv/bin/python benchmarks/bench_serve_load.py --run runs/demo/train --requests 2000
    .venv/bin/python benchmarks/bench_serve_load.py --queued-only --queued 16 --out /tmp/q.json  # phase 2 only

Starts `plantid serve RUN` on 127.0.0.1 (a free port) and sends `--requests` POST /api/predict
requests (default 10,000) from `--concurrency` workers (default 32), in a seeded shuffled order:

* good photos (JPEGs and PNGs of several sizes and colour modes): each answer must have the same
  top-1 label, the same probability for every class (within 1e-5) and the same `unknown` flag as
  a `Predictor` loaded in this process gives for the same bytes;
* bad uploads, each with the status it must get: an empty file (400), a truncated JPEG (400), text
  named .jpg (415), a file 1 KB over the 10 MB upload limit (413), and a 0.26 MB PNG that decodes
  to 9400x9400 pixels (413, refused from its header before decoding).

Counts 5xx answers, wrong statuses, wrong answers and transport errors (all must be zero), and
samples the server's resident memory (VmRSS and VmHWM from /proc/PID/status) every 0.25 s:
reported at start (after warm-up), at each tenth of the requests, the peak and at the end.
"flat" means the RSS over the last half of the requests grew less than `--growth-mb` above its
level at half-way.

Then the queued-uploads phase (alone with `--queued-only`; skipped with `--queued 0`): the cost in
server memory of one large upload that waits for a decode thread. One valid photo just under the
limit is built, an RGB PNG of random noise (noise does not deflate) of 9.5-10 MB and ~3.4 MP (far
below the server's 40 MP). The server's peak-RSS counter is reset (`5 > /proc/PID/clear_refs`; if
that is refused the previous peak stays, recorded as `peak_reset`), its VmRSS read, then
`--queued` copies (default 32) are sent at once, one connection and thread each, released
together by a barrier, so most wait in the server while its two decode threads work. Every answer
must be 200 with the same prediction as a `Predictor` here gives for the bytes. Then VmHWM is read:
`peak_growth_mb` = peak after - RSS before, and `mb_per_queued_upload` = peak_growth_mb / N (which
includes the decode threads' working memory, shared among the N) must be at most the goal, 12 MB.
After the mixed load the heap may hold memory freed by it, which queued uploads can reuse without
growing the RSS: `--queued-only` measures on a server that has only been warmed up.

Prints a table, writes benchmarks/results/serve_load.json (`--out`; with `--queued-only` only to
an `--out` given), exits 1 if any check fails, and always stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import math
import os
import platform
import random
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/support
from bench_serve import (  # the sibling benchmark
    parse_server_args,
    photo_jpeg,
    run_or_tiny,
    server_parser,
)

# test support, not the package
from tests.support.launch import free_port, running_server

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # plantid serve's limit (serve.app.create_app's default)
PROBABILITY_TOLERANCE = 1e-5
QUEUED_MIN_BYTES = int(9.5 * 1024 * 1024)  # the queued upload: a photo between this and the limit
QUEUED_GOAL_MB = 12.0  # the project goal: peak server memory per queued 10 MB upload
QUEUED_TIMEOUT_S = 600.0  # one queued request, connection to answer


@dataclass(frozen=True)
class Case:
    """One kind of upload: its bytes, how it is sent, and the status it must get."""

    name: str
    data: bytes
    filename: str
    content_type: str
    status: int
    weight: float  # share of the requests


# --------------------------------------------------------------------------- uploads


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _rgb_png(width: int, height: int, idat: bytes) -> bytes:
    """A PNG of 8-bit RGB pixels around its deflated scanlines `idat`."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def big_flat_png(side: int = 9400) -> bytes:
    """A real PNG of side x side black RGB pixels, deflated at level 9: ~0.26 MB that decodes to
    side * side * 3 bytes (265 MB at 9400). Written row by row, so building it needs no big buffer."""
    deflate = zlib.compressobj(9)
    row = b"\x00" + bytes(side * 3)  # filter type 0, then the row's pixels
    body = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    return _rgb_png(side, side, body)


def upload_cases() -> list[Case]:
    """The request mix: 70% good photos (7 kinds), 30% bad uploads (5 kinds)."""
    rng = np.random.default_rng(0)
    good = [
        Case("jpeg 96x96", photo_jpeg(96, seed=0), "leaf.jpg", "image/jpeg", 200, 0.10),
        Case("jpeg 320x320", photo_jpeg(320, seed=1), "leaf.jpeg", "image/jpeg", 200, 0.10),
        Case("jpeg 1200x1200", photo_jpeg(1200, seed=2), "big.jpg", "application/octet-stream", 200, 0.10),
        Case("png rgb 64x48", _png(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)), "x.png", "image/png", 200, 0.10),
        Case("png rgba 50x70", _png(rng.integers(0, 256, (70, 50, 4), dtype=np.uint8), "RGBA"), "a.png", "image/png", 200, 0.10),
        Case("png grey 40x40", _png(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L"), "g.png", "image/png", 200, 0.10),
        Case("jpeg red 32x32", _solid_jpeg((220, 40, 40)), "red.jpg", "image/jpeg", 200, 0.10),
    ]
    jpeg = good[0].data
    bad = [
        Case("empty file", b"", "leaf.jpg", "image/jpeg", 400, 0.06),
        Case("truncated jpeg", jpeg[: len(jpeg) // 2], "leaf.jpg", "image/jpeg", 400, 0.06),
        Case("text named .jpg", b"this is not a photo, only words\n" * 4, "leaf.jpg", "image/jpeg", 415, 0.06),
        Case("10 MB + 1 KB", bytes(rng.integers(0, 256, MAX_UPLOAD_BYTES + 1024, dtype=np.uint8)), "huge.jpg",
             "image/jpeg", 413, 0.06),
        Case("9400x9400 png", big_flat_png(), "bomb.png", "image/png", 413, 0.06),
    ]
    return good + bad


def _solid_jpeg(colour: tuple[int, int, int], size: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def schedule(cases: list[Case], requests: int, seed: int) -> list[int]:
    """`requests` case indices in their shares (rounded, every case at least once), shuffled with `seed`."""
    total = sum(c.weight for c in cases)
    counts = [max(1, round(requests * c.weight / total)) for c in cases]
    counts[0] += requests - sum(counts)
    order = [i for i, n in enumerate(counts) for _ in range(n)]
    random.Random(seed).shuffle(order)
    return order


# --------------------------------------------------------------------------- the server's memory


def server_pid(port: int) -> int:
    """The pid of this process's child that runs `plantid serve ... --port PORT`."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid == me and b"serve" in cmdline and str(port).encode() in cmdline:
            return int(entry.name)
    raise RuntimeError(f"no child process serving port {port}")


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0  # kB
    return fields["VmRSS"], fields["VmHWM"]


class MemorySampler:
    """A thread that samples the server's memory every `interval` s with the number of answers so far."""

    def __init__(self, pid: int, progress: list[int], interval: float = 0.25):
        self.pid, self.progress, self.interval = pid, progress, interval
        self.samples: list[tuple[float, int, float, float]] = []  # (t, answered, rss, hwm)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            try:
                rss, hwm = memory_mb(self.pid)
            except (OSError, KeyError):
                return
            self.samples.append((time.perf_counter() - started, self.progress[0], rss, hwm))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- load


def expected_answers(run: Path, backend: str, cases: list[Case]) -> dict[str, dict]:
    """What a Predictor in this process says for each good case's bytes: probabilities by label, unknown."""
    from plantid.infer.predictor import Predictor

    predictor = Predictor.from_run(run, backend=backend)
    out = {}
    for case in cases:
        if case.status != 200:
            continue
        (pred,) = predictor.predict([case.data], top_k=len(predictor.classes))
        if pred.error is not None:
            raise SystemExit(f"the good case '{case.name}' is unreadable to the Predictor: {pred.error}")
        out[case.name] = {"top1": pred.top[0][0], "probabilities": dict(pred.top), "unknown": pred.unknown}
    return out


def check_answer(body: dict, expected: dict) -> str | None:
    """None when the server's answer matches the direct prediction, else what differs."""
    got = {item["label"]: item["probability"] for item in body["top_k"]}
    if set(got) != set(expected["probabilities"]):
        return f"labels {sorted(got)} != {sorted(expected['probabilities'])}"
    if body["top_k"][0]["label"] != expected["top1"]:
        return f"top-1 {body['top_k'][0]['label']} != {expected['top1']}"
    worst = max(abs(got[k] - v) for k, v in expected["probabilities"].items())
    if worst > PROBABILITY_TOLERANCE:
        return f"a probability differs by {worst:.2e}"
    if body.get("unknown") != expected["unknown"]:
        return f"unknown {body.get('unknown')} != {expected['unknown']}"
    return None


async def load(base: str, cases: list[Case], order: list[int], concurrency: int, top_k: int,
               expected: dict[str, dict], progress: list[int]) -> dict:
    """Send every request of `order` from `concurrency` workers; tally statuses and mismatches per case."""
    import httpx

    tally = {c.name: {"sent": 0, "statuses": {}, "wrong_status": 0, "wrong_answer": 0, "transport_errors": {},
                      "latencies_ms": []} for c in cases}
    examples: list[str] = []
    # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: with both at
    # 5 s (httpx's default) a request can go out on a connection the server is closing.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    queue = list(reversed(order))
    async with httpx.AsyncClient(base_url=base, timeout=120.0, limits=limits) as client:
        async def worker() -> None:
            while queue:
                case = cases[queue.pop()]
                row = tally[case.name]
                row["sent"] += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post("/api/predict", params={"top_k": top_k},
                                                 files={"file": (case.filename, case.data, case.content_type)})
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                    row["transport_errors"][kind] = row["transport_errors"].get(kind, 0) + 1
                    if len(examples) < 10:
                        examples.append(f"{case.name}: {kind} {exc}")
                    continue
                finally:
                    progress[0] += 1
                row["latencies_ms"].append((time.perf_counter() - t0) * 1000.0)
                code = response.status_code
                row["statuses"][code] = row["statuses"].get(code, 0) + 1
                if code != case.status:
                    row["wrong_status"] += 1
                    if len(examples) < 10:
                        examples.append(f"{case.name}: {code} {response.text[:200]}")
                elif code == 200:
                    problem = check_answer(response.json(), expected[case.name])
                    if problem is not None:
                        row["wrong_answer"] += 1
                        if len(examples) < 10:
                            examples.append(f"{case.name}: {problem}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"tally": tally, "wall_s": wall, "examples": examples}


# --------------------------------------------------------------------------- queued uploads


def noise_png(low: int = QUEUED_MIN_BYTES, high: int = MAX_UPLOAD_BYTES, seed: int = 0) -> Case:
    """A valid photo just under the upload limit: a square RGB PNG of random noise, stored (noise would
    not deflate), so its size is its pixel bytes: `low` to `high` bytes, ~3.4 MP at 10 MB."""
    from plantid.serve.uploads import MAX_UPLOAD_PIXELS

    side = math.isqrt((low + high) // 2 // 3)  # 3 bytes a pixel, plus a filter byte a row
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    scanlines = np.concatenate([np.zeros((side, 1), np.uint8), pixels.reshape(side, -1)], axis=1)  # filter 0
    # stored (level 0): noise would not deflate anyway, and Pillow's encoder takes ~10 s on it
    data = _rgb_png(side, side, zlib.compress(scanlines.tobytes(), 0))
    if not low <= len(data) < high:
        raise RuntimeError(f"the queued photo is {len(data)} bytes, not in [{low}, {high})")
    if side * side > MAX_UPLOAD_PIXELS // 10:
        raise RuntimeError(f"the queued photo has {side * side} pixels, not far below {MAX_UPLOAD_PIXELS}")
    return Case(f"png noise {side}x{side}", data, "noise.png", "image/png", 200, 0.0)


def multipart(case: Case) -> tuple[bytes, str]:
    """The request body that uploads `case` in the form field 'file', and its Content-Type."""
    boundary = "plantid-bench-queued-7d1c"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{case.filename}"\r\n'
            f"Content-Type: {case.content_type}\r\n\r\n").encode()
    return head + case.data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class QueuedAnswer:
    """What one queued request got, and when (seconds from the release): its body fully sent, answered."""

    status: int  # 0: no answer (see error)
    body: bytes
    sent_s: float
    answered_s: float
    error: str | None = None


def send_together(port: int, case: Case, n: int, top_k: int, progress: list[int]) -> list[QueuedAnswer]:
    """POST `case` to /api/predict `n` times at once: one thread and connection each, connected first,
    then released together by a barrier. `progress[0]` counts the requests that are over."""
    body, content_type = multipart(case)
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    barrier = threading.Barrier(n)
    counted = threading.Lock()
    answers: list[QueuedAnswer | None] = [None] * n
    released = [0.0]

    def one(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=QUEUED_TIMEOUT_S)
        sent = 0.0
        try:
            connection.connect()
            if barrier.wait(timeout=60.0) == 0:
                released[0] = time.perf_counter()
            connection.request("POST", f"/api/predict?top_k={top_k}", body=body, headers=headers)
            sent = time.perf_counter()
            response = connection.getresponse()
            answers[i] = QueuedAnswer(response.status, response.read(), sent, time.perf_counter())
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
            barrier.abort()  # the others must not wait for this one at the barrier
            answers[i] = QueuedAnswer(0, b"", sent, time.perf_counter(), f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
            with counted:
                progress[0] += 1

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    begun = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    start = released[0] or begun  # the barrier broke: from the threads' start
    return [QueuedAnswer(a.status, a.body, max(0.0, a.sent_s - start), a.answered_s - start, a.error)
            for a in answers if a is not None]


def reset_peak(pid: int) -> str:
    """Reset `pid`'s VmHWM to its VmRSS: 'clear_refs' when done, 'previous_peak' when refused (or ignored)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return "previous_peak"
    rss, hwm = memory_mb(pid)
    return "clear_refs" if hwm - rss < 1.0 else "previous_peak"


def most_held(answers: list[QueuedAnswer]) -> int:
    """The most requests whose upload had been fully sent and not yet answered at one time (at most
    two of them decoding; the others waiting in the server with their bytes)."""
    events = sorted([(a.sent_s, 1) for a in answers if a.status] + [(a.answered_s, -1) for a in answers if a.status])
    held = most = 0
    for _, step in events:
        held += step
        most = max(most, held)
    return most


def queued_phase(pid: int, port: int, case: Case, n: int, top_k: int, expected: dict) -> dict:
    """The memory one queued upload of `case` costs the server: peak growth over `n` sent at once, per upload."""
    method = reset_peak(pid)
    rss_before, hwm_before = memory_mb(pid)
    progress = [0]
    started = time.perf_counter()
    with MemorySampler(pid, progress, interval=0.05) as sampler:
        answers = send_together(port, case, n, top_k, progress)
    wall = time.perf_counter() - started
    _, hwm_after = memory_mb(pid)
    statuses: dict[int, int] = {}
    wrong_status = wrong_answer = transport = 0
    examples: list[str] = []
    for answer in answers:
        if answer.error is not None:
            transport += 1
            examples.append(answer.error)
            continue
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        if answer.status != 200:
            wrong_status += 1
            examples.append(f"{answer.status} {answer.body[:200]!r}")
            continue
        problem = check_answer(json.loads(answer.body), expected)
        if problem is not None:
            wrong_answer += 1
            examples.append(problem)
    growth = hwm_after - rss_before
    per_upload = growth / n
    latencies = np.asarray([a.answered_s for a in answers if a.error is None] or [0.0]) * 1000.0
    return {
        "uploads": n,
        "upload": case.name,
        "upload_bytes": len(case.data),
        "peak_reset": method,
        "rss_before_mb": round(rss_before, 1),
        "hwm_before_mb": round(hwm_before, 1),
        "peak_after_mb": round(hwm_after, 1),
        "sampled_peak_rss_mb": round(max((s[2] for s in sampler.samples), default=0.0), 1),
        "peak_growth_mb": round(growth, 1),
        "mb_per_queued_upload": round(per_upload, 2),
        "goal_mb_per_queued_upload": QUEUED_GOAL_MB,
        "goal_met": per_upload <= QUEUED_GOAL_MB,
        "most_held_at_once": most_held(answers),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "wrong_status": wrong_status,
        "wrong_answer": wrong_answer,
        "transport_errors": transport,
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_max": round(float(latencies.max()), 1),
        "wall_s": round(wall, 2),
        "examples": examples[:10],
        "passed": wrong_status == 0 and wrong_answer == 0 and transport == 0 and per_upload <= QUEUED_GOAL_MB,
    }


# --------------------------------------------------------------------------- report


def memory_summary(samples: list[tuple[float, int, float, float]], requests: int, growth_mb: float) -> dict:
    """RSS at start, at each tenth of the answers, peak and end; whether the second half stayed flat."""
    if not samples:
        return {"samples": 0}
    by_tenth = []
    for tenth in range(1, 11):
        reached = [s for s in samples if s[1] >= requests * tenth / 10]
        if reached:
            by_tenth.append({"answered": reached[0][1], "rss_mb": round(reached[0][2], 1)})
    rss = [s[2] for s in samples]
    half = [s[2] for s in samples if s[1] >= requests / 2]
    at_half = half[0] if half else rss[-1]
    growth = max(half) - at_half if half else 0.0
    return {
        "samples": len(samples),
        "start_rss_mb": round(rss[0], 1),
        "peak_rss_mb": round(max(rss), 1),
        "peak_hwm_mb": round(max(s[3] for s in samples), 1),
        "end_rss_mb": round(rss[-1], 1),
        "rss_at_half_mb": round(at_half, 1),
        "growth_over_second_half_mb": round(growth, 1),
        "flat": growth < growth_mb,
        "by_tenth": by_tenth,
    }


def print_table(cases: list[Case], result: dict, memory: dict) -> None:
    print(f"\n{'upload':<18} {'expect':>6} {'sent':>6} {'statuses':<22} {'wrong':>6} {'mismatch':>8} "
          f"{'errors':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for case in cases:
        row = result["tally"][case.name]
        lat = np.asarray(row["latencies_ms"]) if row["latencies_ms"] else np.zeros(1)
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(row["statuses"].items()))
        print(f"{case.name:<18} {case.status:>6} {row['sent']:>6} {statuses:<22} {row['wrong_status']:>6} "
              f"{row['wrong_answer']:>8} {sum(row['transport_errors'].values()):>6} "
              f"{np.percentile(lat, 50):>8.1f} {np.percentile(lat, 99):>8.1f}")
    print(f"\nserver RSS (MB): start {memory.get('start_rss_mb')}, peak {memory.get('peak_rss_mb')} "
          f"(VmHWM {memory.get('peak_hwm_mb')}), end {memory.get('end_rss_mb')}; "
          f"growth over the second half {memory.get('growth_over_second_half_mb')} MB -> "
          f"{'flat' if memory.get('flat') else 'GROWING'}")
    print("RSS by answers: " + ", ".join(f"{t['answered']}: {t['rss_mb']}" for t in memory.get("by_tenth", [])))


def print_queued(queued: dict) -> None:
    """The queued-uploads phase in one table row and a verdict."""
    print(f"\n{'queued upload':<22} {'N':>4} {'MB each':>8} {'statuses':<10} {'wrong':>6} {'mismatch':>8} "
          f"{'errors':>6} {'held':>5} {'p50 ms':>8} {'max ms':>8}")
    statuses = " ".join(f"{k}:{v}" for k, v in queued["status_counts"].items())
    print(f"{queued['upload']:<22} {queued['uploads']:>4} {queued['upload_bytes'] / 2**20:>8.2f} {statuses:<10} "
          f"{queued['wrong_status']:>6} {queued['wrong_answer']:>8} {queued['transport_errors']:>6} "
          f"{queued['most_held_at_once']:>5} {queued['latency_ms_p50']:>8.1f} {queued['latency_ms_max']:>8.1f}")
    print(f"server RSS (MB): before {queued['rss_before_mb']}, peak after {queued['peak_after_mb']} "
          f"(peak reset: {queued['peak_reset']}; sampled RSS peak {queued['sampled_peak_rss_mb']}); "
          f"growth {queued['peak_growth_mb']} MB / {queued['uploads']} = {queued['mb_per_queued_upload']} MB "
          f"per queued upload (goal <= {queued['goal_mb_per_queued_upload']:g}) -> "
          f"{'PASS' if queued['passed'] else 'FAIL'}")
    for line in queued["examples"]:
        print("  e.g.", line)


def mixed_summary(cases: list[Case], result: dict, memory: dict, tracebacks: int) -> dict:
    """Print the mixed load's table and verdict; return its part of the JSON, with its own `passed`."""
    tally = result["tally"]
    answered = sum(sum(r["statuses"].values()) for r in tally.values())
    server_errors = sum(n for r in tally.values() for code, n in r["statuses"].items() if code >= 500)
    wrong_status = sum(r["wrong_status"] for r in tally.values())
    wrong_answer = sum(r["wrong_answer"] for r in tally.values())
    transport = sum(sum(r["transport_errors"].values()) for r in tally.values())
    print_table(cases, result, memory)
    passed = (server_errors == 0 and wrong_status == 0 and wrong_answer == 0 and transport == 0 and tracebacks == 0
              and bool(memory.get("flat")))
    print(f"\n{answered} answered in {result['wall_s']:.1f} s ({answered / result['wall_s']:.1f}/s); "
          f"5xx {server_errors}, wrong status {wrong_status}, wrong answer {wrong_answer}, "
          f"transport errors {transport}, tracebacks in the server log {tracebacks} -> "
          f"{'PASS' if passed else 'FAIL'}")
    for line in result["examples"]:
        print("  e.g.", line)
    return {
        "answered": answered,
        "server_errors_5xx": server_errors,
        "wrong_status": wrong_status,
        "wrong_answer": wrong_answer,
        "transport_errors": transport,
        "server_log_tracebacks": tracebacks,
        "probability_tolerance": PROBABILITY_TOLERANCE,
        "wall_s": round(result["wall_s"], 2),
        "throughput_rps": round(answered / result["wall_s"], 2),
        "cases": [
            {"upload": c.name, "bytes": len(c.data), "expected_status": c.status, "sent": tally[c.name]["sent"],
             "status_counts": {str(k): v for k, v in sorted(tally[c.name]["statuses"].items())},
             "wrong_status": tally[c.name]["wrong_status"], "wrong_answer": tally[c.name]["wrong_answer"],
             "transport_errors": tally[c.name]["transport_errors"],
             "latency_ms_p50": round(float(np.percentile(tally[c.name]["latencies_ms"] or [0], 50)), 2),
             "latency_ms_p99": round(float(np.percentile(tally[c.name]["latencies_ms"] or [0], 99)), 2)}
            for c in cases
        ],
        "memory": memory,
        "examples": result["examples"],
        "passed": passed,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The serve benchmark's options, this one's, and the output path (None: write no JSON)."""
    parser = server_parser(__doc__, requests=10_000, concurrency=32, warmup=20, startup_timeout=240.0, out=RESULTS)
    parser.add_argument("--seed", type=int, default=0, help="order of the requests (default 0)")
    parser.add_argument("--growth-mb", type=float, default=25.0,
                        help="most RSS growth over the second half still called flat (default 25 MB)")
    parser.add_argument("--queued", type=int, default=32, metavar="N",
                        help="large uploads sent at once in the queued-uploads phase (default 32; 0 skips it)")
    parser.add_argument("--queued-only", action="store_true",
                        help="only the queued-uploads phase (no mixed load); writes JSON only to an --out given")
    parser.set_defaults(out=None)
    args = parse_server_args(parser, argv)
    if not 0 <= args.queued <= 256:
        parser.error("--queued must be between 0 and 256")
    if args.queued_only and args.queued == 0:
        parser.error("--queued-only needs --queued of at least 1")
    if args.out is None and not args.queued_only:  # a quick check never overwrites the full run's results
        args.out = RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mixed = not args.queued_only
    cases = upload_cases() if mixed else []
    order = schedule(cases, args.requests, args.seed) if mixed else []
    big = noise_png() if args.queued else None
    warm_photo = photo_jpeg(96, seed=0)  # the first good case's bytes
    queued = None
    with tempfile.TemporaryDirectory(prefix="plantid-bench-load-") as tmp:
        workdir = Path(tmp)
        run = run_or_tiny(args.run, workdir)
        expected = expected_answers(run, args.backend, cases + ([big] if big else []))
        classes = len(next(iter(expected.values()))["probabilities"])
        port = free_port()
        log_path = workdir / "serve.log"
        print(f"starting plantid serve {run} --backend {args.backend} on 127.0.0.1:{port}")
        with running_server(run, port=port, backend=args.backend, timeout=args.startup_timeout,
                            log_path=log_path) as base:
            import httpx

            pid = server_pid(port)
            model = httpx.get(base + "/api/model", timeout=10).json()
            for _ in range(args.warmup):
                httpx.post(base + "/api/predict", files={"file": ("w.jpg", warm_photo, "image/jpeg")}, timeout=60)
            print(f"model {model['model_id']} ({model['backend']}, {model['image_size']} px, {classes} classes); "
                  f"server pid {pid}; " + (f"{args.requests} requests, concurrency {args.concurrency}; "
                                           if mixed else "") + f"{args.queued} queued uploads")
            if mixed:
                progress = [0]
                with MemorySampler(pid, progress) as sampler:
                    result = asyncio.run(load(base, cases, order, args.concurrency, classes, expected, progress))
                    time.sleep(0.5)  # one more sample after the last answer
                samples = sampler.samples
            if big is not None:
                queued = queued_phase(pid, port, big, args.queued, classes, expected[big.name])
        server_log = log_path.read_text(errors="replace")

    tracebacks = server_log.count("Traceback")
    summary = {
        "benchmark": "serve_load",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "mixed load and queued uploads" if mixed else "queued uploads only",
        "run": str(args.run) if args.run else "tiny simple_cnn run (trained by the benchmark)",
        "model_id": model["model_id"],
        "backend": model["backend"],
        "image_size": model["image_size"],
    }
    passed = tracebacks == 0
    if mixed:
        memory = memory_summary(samples, args.requests, args.growth_mb)
        load_part = mixed_summary(cases, result, memory, tracebacks)
        load_passed = load_part.pop("passed")
        summary.update({"requests": args.requests, "concurrency": args.concurrency, "seed": args.seed, **load_part,
                        "mixed_load_passed": load_passed})
        passed = passed and load_passed
    else:
        summary["server_log_tracebacks"] = tracebacks
        print(f"\ntracebacks in the server log {tracebacks}")
    if queued is not None:
        print_queued(queued)
        passed = passed and queued["passed"]
    summary["queued_uploads"] = queued
    summary["passed"] = passed
    summary["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    print(f"\n-> {'PASS' if passed else 'FAIL'}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(args.out.name + ".tmp")
        tmp_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_out, args.out)
        print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
