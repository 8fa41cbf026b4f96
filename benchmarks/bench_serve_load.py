"""A bounded load test of `plantid serve` on loopback: mixed good and bad uploads, answers checked.

    .venv/bin/python benchmarks/bench_serve_load.py                         # trains a tiny run first
    .venv/bin/python benchmarks/bench_serve_load.py --run runs/demo/train --requests 2000

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
level at half-way. Prints a table, writes benchmarks/results/serve_load.json, exits 1 if any
check fails, and always stops the server.
"""

from __future__ import annotations

import asyncio
import io
import json
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


def big_flat_png(side: int = 9400) -> bytes:
    """A real PNG of side x side black RGB pixels, deflated at level 9: ~0.26 MB that decodes to
    side * side * 3 bytes (265 MB at 9400). Written row by row, so building it needs no big buffer."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    deflate = zlib.compressobj(9)
    row = b"\x00" + bytes(side * 3)  # filter type 0, then the row's pixels
    body = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


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


def main(argv: list[str] | None = None) -> int:
    parser = server_parser(__doc__, requests=10_000, concurrency=32, warmup=20, startup_timeout=240.0, out=RESULTS)
    parser.add_argument("--seed", type=int, default=0, help="order of the requests (default 0)")
    parser.add_argument("--growth-mb", type=float, default=25.0,
                        help="most RSS growth over the second half still called flat (default 25 MB)")
    args = parse_server_args(parser, argv)

    cases = upload_cases()
    order = schedule(cases, args.requests, args.seed)
    with tempfile.TemporaryDirectory(prefix="plantid-bench-load-") as tmp:
        workdir = Path(tmp)
        run = run_or_tiny(args.run, workdir)
        expected = expected_answers(run, args.backend, cases)
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
                httpx.post(base + "/api/predict", files={"file": ("w.jpg", cases[0].data, "image/jpeg")}, timeout=60)
            print(f"model {model['model_id']} ({model['backend']}, {model['image_size']} px, {classes} classes); "
                  f"server pid {pid}; {args.requests} requests, concurrency {args.concurrency}")
            progress = [0]
            with MemorySampler(pid, progress) as sampler:
                result = asyncio.run(load(base, cases, order, args.concurrency, classes, expected, progress))
                time.sleep(0.5)  # one more sample after the last answer
            samples = sampler.samples
        server_log = log_path.read_text(errors="replace")

    tally = result["tally"]
    answered = sum(sum(r["statuses"].values()) for r in tally.values())
    server_errors = sum(n for r in tally.values() for code, n in r["statuses"].items() if code >= 500)
    wrong_status = sum(r["wrong_status"] for r in tally.values())
    wrong_answer = sum(r["wrong_answer"] for r in tally.values())
    transport = sum(sum(r["transport_errors"].values()) for r in tally.values())
    tracebacks = server_log.count("Traceback")
    memory = memory_summary(samples, args.requests, args.growth_mb)
    print_table(cases, result, memory)
    passed = (server_errors == 0 and wrong_status == 0 and wrong_answer == 0 and transport == 0 and tracebacks == 0
              and bool(memory.get("flat")))
    print(f"\n{answered} answered in {result['wall_s']:.1f} s ({answered / result['wall_s']:.1f}/s); "
          f"5xx {server_errors}, wrong status {wrong_status}, wrong answer {wrong_answer}, "
          f"transport errors {transport}, tracebacks in the server log {tracebacks} -> "
          f"{'PASS' if passed else 'FAIL'}")
    for line in result["examples"]:
        print("  e.g.", line)

    summary = {
        "benchmark": "serve_load",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(args.run) if args.run else "tiny simple_cnn run (trained by the benchmark)",
        "model_id": model["model_id"],
        "backend": model["backend"],
        "image_size": model["image_size"],
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seed": args.seed,
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
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
