"""Web-server latency and throughput: `plantid serve` under a bounded load of one-photo requests.

    .venv/bin/python benchmarks/bench_serve.py --run runs/demo/train            # a trained run
    .venv/bin/python benchmarks/bench_serve.py                                  # trains a tiny run first
    .venv/bin/python benchmarks/bench_serve.py --requests 500 --concurrency 8 --backend onnx

Starts `plantid serve RUN` on 127.0.0.1 (a free port), waits for /api/health, sends a few
warm-up requests, then `--requests` POST /api/predict requests of one 96x96 JPEG from
`--concurrency` workers (httpx, keep-alive). Reports client-side p50/p95/p99 latency, throughput
and the number of non-2xx answers (and transport errors); writes benchmarks/results/serve.json
and always stops the server. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/support
from tests.support.launch import free_port, running_server  # noqa: E402  (test support, not the package)

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
PLANTID = Path(sys.executable).with_name("plantid")


def photo_jpeg(size: int = 96, seed: int = 0) -> bytes:
    """One real 96x96 JPEG: a green leaf-like ellipse on a brown background, with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    leaf = ((xx - 0.5) / 0.32) ** 2 + ((yy - 0.5) / 0.42) ** 2 < 1.0
    img = np.where(leaf[..., None], [60, 150, 70], [120, 95, 70]).astype(np.float32)
    img += rng.normal(0, 12, size=img.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def train_tiny_run(workdir: Path) -> Path:
    """A tiny simple_cnn run (3 classes x 12 photos, 32 px, 1 epoch) for when no --run is given."""
    from PIL import Image

    photos = workdir / "photos"
    colours = [(220, 40, 40), (40, 200, 60), (40, 70, 220)]
    for k, colour in enumerate(colours):
        rng = np.random.default_rng(k)
        (photos / f"class{k}").mkdir(parents=True)
        for i in range(12):
            img = np.array(colour, np.float32) + rng.normal(0, 18, size=(32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(photos / f"class{k}" / f"{i}.jpg", quality=92)
    run = workdir / "run"
    cmd = [str(PLANTID), "train", "--data", str(photos), "--recipe", "simple-cnn", "--out", str(run),
           "data.image_size=32", "train.epochs=1", "train.progress=false", "data.val=0.2", "data.test=0.2",
           f"data.cache_dir={workdir / 'cache'}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training the tiny run failed:\n{done.stderr[-3000:]}")
    return run


async def load(base: str, photo: bytes, requests: int, concurrency: int, warmup: int) -> dict:
    """Send `requests` predictions from `concurrency` workers; latencies in ms, status counts."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        for _ in range(warmup):
            await client.post("/api/predict", files={"file": ("leaf.jpg", photo, "image/jpeg")})

        latencies: list[float] = []
        statuses: dict[int, int] = {}
        errors: dict[str, int] = {}
        server_ms: list[float] = []
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    response = await client.post("/api/predict", files={"file": ("leaf.jpg", photo, "image/jpeg")})
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000.0)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.is_success:
                    server_ms.append(float(response.json().get("elapsed_ms", 0.0)))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "wall_s": wall, "server_ms": server_ms}


def server_parser(description: str, requests: int, concurrency: int, warmup: int, startup_timeout: float,
                  out: Path) -> argparse.ArgumentParser:
    """The options every serve benchmark takes (run, load, backend, warm-up, output), with its defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained run folder (default: train a tiny simple_cnn run)")
    parser.add_argument("--requests", type=int, default=requests, help=f"requests to send (default {requests})")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help=f"concurrent client workers (default {concurrency})")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed good requests first (default {warmup})")
    parser.add_argument("--startup-timeout", type=float, default=startup_timeout,
                        help="seconds to wait for the server")
    parser.add_argument("--out", type=Path, default=out)
    return parser


def parse_server_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and bound the load: 1..1,000,000 requests from 1..256 clients."""
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 1_000_000:
        parser.error("--requests must be between 1 and 1000000")
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency must be between 1 and 256")
    return args


def run_or_tiny(run: Path | None, workdir: Path) -> Path:
    """The run to serve: the one given, else a tiny simple_cnn run trained in `workdir`."""
    if run is not None:
        return run
    print(f"no --run: training a tiny simple_cnn run in {workdir}")
    return train_tiny_run(workdir)


def main(argv: list[str] | None = None) -> int:
    parser = server_parser(__doc__, requests=2000, concurrency=4, warmup=10, startup_timeout=180.0, out=RESULTS)
    args = parse_server_args(parser, argv)

    with tempfile.TemporaryDirectory(prefix="plantid-bench-serve-") as tmp:
        workdir = Path(tmp)
        run = run_or_tiny(args.run, workdir)
        port = free_port()
        print(f"starting plantid serve {run} --backend {args.backend} on 127.0.0.1:{port}")
        with running_server(run, port=port, backend=args.backend, timeout=args.startup_timeout,
                            log_path=workdir / "serve.log") as base:
            import httpx

            model = httpx.get(base + "/api/model", timeout=10).json()
            photo = photo_jpeg()
            print(f"model {model['model_id']} ({model['backend']}, {model['image_size']} px); "
                  f"{args.requests} requests, concurrency {args.concurrency}")
            result = asyncio.run(load(base, photo, args.requests, args.concurrency, args.warmup))

    latencies = np.asarray(result["latencies"]) if result["latencies"] else np.zeros(1)
    ok = sum(n for code, n in result["statuses"].items() if 200 <= code < 300)
    non_2xx = sum(n for code, n in result["statuses"].items() if not 200 <= code < 300)
    transport_errors = sum(result["errors"].values())
    summary = {
        "benchmark": "serve",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(args.run) if args.run else "tiny simple_cnn run (trained by the benchmark)",
        "model_id": model["model_id"],
        "backbone": model["backbone"],
        "backend": model["backend"],
        "image_size": model["image_size"],
        "photo": "one 96x96 JPEG",
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ok": ok,
        "non_2xx": non_2xx,
        "transport_errors": transport_errors,
        "status_counts": {str(k): v for k, v in sorted(result["statuses"].items())},
        "wall_s": round(result["wall_s"], 3),
        "throughput_rps": round(len(result["latencies"]) / result["wall_s"], 2) if result["wall_s"] > 0 else None,
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 2),
            "p95": round(float(np.percentile(latencies, 95)), 2),
            "p99": round(float(np.percentile(latencies, 99)), 2),
            "mean": round(float(latencies.mean()), 2),
            "max": round(float(latencies.max()), 2),
        },
        "server_elapsed_ms_p50": round(float(np.percentile(result["server_ms"], 50)), 2) if result["server_ms"] else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    lat = summary["latency_ms"]
    print(f"latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  (max {lat['max']})")
    print(f"throughput: {summary['throughput_rps']} requests/s over {summary['wall_s']} s; "
          f"non-2xx: {non_2xx}; transport errors: {transport_errors}; "
          f"server-side decode+predict p50 {summary['server_elapsed_ms_p50']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 0 if non_2xx == 0 and transport_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
