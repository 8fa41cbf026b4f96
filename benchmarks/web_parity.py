"""Every test photo of a run through the exported web app in headless Chromium, against onnxruntime in Python.

    .venv/bin/python benchmarks/web_parity.py --run runs/lite0 [--web runs/lite0/web] [--file-url]

The app's folder is opened from a loopback static server (or as file:// with --file-url); each
test photo is decoded, resized and predicted by the app's own code; Python predicts the same
files with plantid's Predictor on the same ONNX file (`--backend onnx`, or `onnx-int8` for an int8
export). Counted: same top-1, largest probability difference (the tests' bar is 1e-4), same
unknown answer. Prints one line and writes benchmarks/results/web_parity.json.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "web_parity.json"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--web", type=Path, default=None)
    parser.add_argument("--file-url", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from plantid.data.split import read_manifest
    from plantid.infer.predictor import Predictor

    web = args.web or args.run / "web"
    weights = json.loads((web / "preprocessing.json").read_text(encoding="utf-8"))["web"]["weights"]
    paths = [Path(r.path) for r in read_manifest(args.run / "split.csv").rows_for("test")]
    predictor = Predictor.from_run(args.run, backend="onnx-int8" if weights == "int8" else "onnx")
    expected = predictor.predict([str(p) for p in paths], top_k=1)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(web)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = (web / "index.html").resolve().as_uri() if args.file_url else f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    got = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.set_default_timeout(600_000)
            page.goto(url)
            page.wait_for_function("window.plantidApp !== undefined")
            page.evaluate("plantidApp.ready")
            for start in range(0, len(paths), 16):
                chunk = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths[start:start + 16]]
                got += page.evaluate("""async (photos) => {
                    const out = [];
                    for (const b64 of photos) {
                        const blob = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]);
                        out.push((await plantidApp.classifyBlobs([blob]))[0]);
                    }
                    return out;
                }""", chunk)
            browser.close()
    finally:
        httpd.shutdown()
    same_top, same_unknown, worst = 0, 0, 0.0
    for g, e in zip(got, expected):
        probs = np.asarray(g["probabilities"])
        same_top += int(probs.argmax()) == int(np.argmax(e.probabilities))
        same_unknown += g["unknown"] == e.unknown
        worst = max(worst, float(np.abs(probs - e.probabilities).max()))
    result = {"run": args.run.name, "weights": weights, "opened": "file://" if args.file_url else "http (loopback)",
              "photos": len(paths), "same_top1": same_top, "same_unknown": same_unknown,
              "max_probability_difference": worst, "date": time.strftime("%Y-%m-%d")}
    print(f"{len(paths)} test photos, {weights}, {result['opened']}: same top-1 {same_top}, same unknown "
          f"{same_unknown}, largest probability difference {worst:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
