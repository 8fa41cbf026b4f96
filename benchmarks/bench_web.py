"""The exported web app's weight and speed in headless Chromium, against onnxruntime in Python.

    .venv/bin/python benchmarks/bench_web.py --run runs/lite0            # exports RUN/web first if missing
    .venv/bin/python benchmarks/bench_web.py --run runs/lite0 --photos 100 --threads 2

The folder is served from a loopback static server that sends the cross-origin isolation headers
(COOP/COEP), so onnxruntime-web may use `--threads` WebAssembly threads (as on a host that sends
them, or on a second visit, when the app's service worker adds them). Measured:

* page weight: the bytes the page loads on a first visit (MB), and the folder's size;
* first load: from navigation to the model ready to answer (cold browser context, no cache), and
  the part spent unpacking the runtime and the model and starting the session;
* per photo, one at a time, as the app does: decode + resize + model (end to end), and the model
  alone on already-resized pixels; photos/s = 1000 / mean ms;
* the same photos through plantid's Python path (`load_image` + onnxruntime, same model file,
  `--threads` intra-op threads).

Prints a table and writes benchmarks/results/web.json.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import platform
import statistics
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "web.json"
CHROMIUM = "/usr/bin/chromium"


class IsolatedHandler(SimpleHTTPRequestHandler):
    """A static file server that makes the page cross-origin isolated (SharedArrayBuffer, threads)."""

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args: object) -> None:
        pass


def python_timings(run: Path, paths: list[Path], threads: int, weights: str) -> dict:
    """ms per photo through load_image + onnxruntime (batch 1), and the model alone."""
    from plantid.data.images import load_image
    from plantid.infer.onnx_backend import OnnxBackend

    backend = OnnxBackend.from_run(run, quantized=weights == "int8", threads=threads)
    pixels = [load_image(p, backend.image_size) for p in paths[:3]]
    for arr in pixels:
        backend.scored(arr[None])  # warm-up
    total, model = [], []
    for path in paths:
        t0 = time.perf_counter()
        arr = load_image(path, backend.image_size)
        t1 = time.perf_counter()
        backend.scored(arr[None])
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        model.append((t2 - t1) * 1000)
    return {"ms_per_photo": statistics.mean(total), "ms_model": statistics.mean(model),
            "photos_per_s": 1000 / statistics.mean(total), "threads": threads}


def browser_timings(url: str, paths: list[Path], threads: int) -> dict:
    """First load and per-photo times of the app in headless Chromium."""
    from playwright.sync_api import sync_playwright

    payload = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        context = browser.new_context(service_workers="block")
        page = context.new_page()
        loaded_bytes = []
        page.on("response", lambda r: loaded_bytes.append(len(r.body())) if r.ok else None)
        t0 = time.perf_counter()
        page.goto(f"{url}/index.html?threads={threads}")
        page.wait_for_function("window.plantidApp !== undefined")
        page.evaluate("plantidApp.ready")
        first_load_ms = (time.perf_counter() - t0) * 1000
        measured = page.evaluate("""async (photos) => {
            const blobs = photos.map((b64) => new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]));
            const size = plantidApp.info.image_size;
            for (const blob of blobs.slice(0, 3)) await plantidApp.classifyBlobs([blob]);  // warm-up
            const total = [], model = [];
            for (const blob of blobs) {
                const t0 = performance.now();
                const photo = await plantidPreprocess.loadImage(blob, size);
                const t1 = performance.now();
                await plantidApp.runModel([photo.pixels]);
                const t2 = performance.now();
                total.push(t2 - t0); model.push(t2 - t1);
            }
            return {total, model, threads: plantidApp.threads(), isolated: self.crossOriginIsolated,
                    startMs: plantidApp.loadMs()};
        }""", payload)
        browser.close()
    mean_total = statistics.mean(measured["total"])
    return {"first_load_ms": first_load_ms, "session_start_ms": measured["startMs"],
            "page_weight_mb": sum(loaded_bytes) / 1e6, "ms_per_photo": mean_total,
            "ms_model": statistics.mean(measured["model"]), "photos_per_s": 1000 / mean_total,
            "threads": measured["threads"], "cross_origin_isolated": measured["isolated"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--photos", type=int, default=64, help="test photos timed, one at a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--web", type=Path, default=None, help="the exported folder (default RUN/web, exported if missing)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from plantid.data.split import read_manifest
    from plantid.infer.export import export_run
    from plantid.infer.web_export import folder_size_bytes

    web = args.web or args.run / "web"
    if not (web / "model-info.js").is_file():
        export_run(args.run, "web", out=web)
    meta = json.loads((web / "preprocessing.json").read_text(encoding="utf-8"))
    weights = meta["web"]["weights"]
    paths = [Path(r.path) for r in read_manifest(args.run / "split.csv").rows_for("test")][: args.photos]

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(IsolatedHandler, directory=str(web)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        browser = browser_timings(f"http://127.0.0.1:{httpd.server_address[1]}", paths, args.threads)
    finally:
        httpd.shutdown()
    python = python_timings(args.run, paths, args.threads, weights)
    result = {"run": args.run.name, "weights": weights, "photos": len(paths), "image_size": meta["image_size"],
              "folder_mb": folder_size_bytes(web) / 1e6, "browser": browser, "python_onnxruntime": python,
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "cpus": os.cpu_count(), "load_average_1_5_15": [round(v, 1) for v in os.getloadavg()]},
              "date": time.strftime("%Y-%m-%d")}
    print(f"web app ({weights}, {meta['image_size']} px, {len(paths)} test photos, {args.threads} threads)")
    print(f"  folder {result['folder_mb']:.1f} MB; page weight on a first visit {browser['page_weight_mb']:.1f} MB")
    print(f"  first load {browser['first_load_ms']:.0f} ms (runtime + model start {browser['session_start_ms']:.0f} ms)")
    print(f"{'':24}{'ms/photo':>10}{'model ms':>10}{'photos/s':>10}")
    for name, row in (("chromium (wasm)", browser), ("python onnxruntime", python)):
        print(f"{name:24}{row['ms_per_photo']:>10.1f}{row['ms_model']:>10.1f}{row['photos_per_s']:>10.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
