"""Write the generated sections of docs/benchmarks.md from the JSON files in benchmarks/results/.

A section stands between `<!-- render_docs: NAME -->` and `<!-- /render_docs -->`; everything
outside them is prose kept by hand. Run it after a benchmark wrote new JSON, so the page cannot
drift from its files; `--check` only says whether the page is current (exit 1 if not; the test
suite runs it).

    .venv/bin/python benchmarks/render_docs.py            # rewrite the sections
    .venv/bin/python benchmarks/render_docs.py --check    # exit 1 when the page is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts, loaded by path too
from bench_outside import KEYS as OUTSIDE_KEYS, table as outside_table  # noqa: E402
from cells import summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
SECTION = re.compile(r"(<!-- render_docs: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /render_docs -->)", re.S)
RECIPE_NOTES = {"cpu-default": "lite0, ImageNet", "inception": "31k parameters"}


def _load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def training(results: Callable[[str], Any] = _load) -> str:
    """One row a recipe: sizes and epochs, training seconds, val, test, test with the flip views."""
    lines = ["| recipe | px x epochs | train s | val | test | test, flips TTA | JSON |",
             "|---|---|---:|---:|---:|---:|---|"]
    for file in ("train_cpu_default.json", "train.json"):
        for run in results(file)["runs"]:
            note = RECIPE_NOTES.get(run["recipe"])
            recipe = f"`{run['recipe']}`" + (f" ({note})" if note else "")
            sizes = (run.get("px") or f"{run['image_size']}x{run['epochs']}").replace("x", " x ").replace("+", " + ")
            lines.append(f"| {recipe} | {sizes} | {run['train_seconds']:.0f} | {_pct(run['val_acc'])} | "
                         f"{_pct(run['test_acc'])} | {_pct(run.get('test_acc_tta'))} | `{file}` |")
    return "\n".join(lines) + "\n"


def data_kernels(results: Callable[[str], Any] = _load) -> str:
    """Scan and cache stages, and the depthwise weight gradient against PyTorch's."""
    scan = {s["stage"]: s["seconds"] for s in results("scan_cache.json")["stages"]}
    scan_total = results("scan_cache.json")["scan_plus_first_cache_s"]
    depthwise = results("depthwise.json")
    small = next(g for g in depthwise["weight_gradients"] if g["kernel_exceeds_map"])
    steps = "; ".join(f"{s['pytorch_images_per_s']} -> {s['plantid_images_per_s']} img/s at {s['image_size']} px"
                      for s in depthwise["training_steps"])
    return (f"- Scan + cache (`bench_scan_cache.py`, `scan_cache.json`): scan (decode + sha256) "
            f"{scan['scan (decode + sha256)']:.2f} s, cache build 96 px {scan['cache build 96px (cold)']:.2f} s, "
            f"224 px {scan['cache build 224px (cold)']:.2f} s, reuse {scan['cache reuse 96px (warm, CRC check)']:.2f} s; "
            f"scan + first cache {scan_total:.2f} s.\n"
            f"- Depthwise weight gradient where the kernel exceeds the map (`bench_depthwise.py --repeats "
            f"{depthwise['repeats']}`, `depthwise.json`): {small['channels']} channels {small['kernel']}x{small['kernel']} "
            f"on {small['map']}x{small['map']}, PyTorch {small['pytorch_ms']:.2f} ms, plantid {small['plantid_ms']:.2f} ms; "
            f"a `cpu-default` training step {steps}.\n")


ENGINES = (("torch", "PyTorch"), ("onnx-fp32", "onnxruntime fp32"),
           ("onnx-int8-static", "onnxruntime int8 (static, 7-bit weights)"),
           ("onnx-int8-static-spin", "onnxruntime int8, spin"))


def inference(results: Callable[[str], Any] = _load) -> str:
    """Images per second of each engine at batch 1 (with the median latency) and batch 64."""
    sizes = [results(f"inference_{px}px.json") for px in (96, 128)]
    head = " | ".join(f"{r['image_size']} px b1 img/s (p50 ms) | {r['image_size']} px b64 img/s" for r in sizes)
    lines = [f"| engine | {head} |", "|---|" + "---:|" * (2 * len(sizes))]
    for key, label in ENGINES:
        cells = []
        for r in sizes:
            engine = r["engines"][key]
            cells += [f"{engine['batch1']['images_per_s']:,.1f} ({engine['batch1']['p50_ms']:.1f})",
                      f"{engine['batch64']['images_per_s']:,.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def outside(results: Callable[[str], Any] = _load) -> str:
    """One row a shared set: plantid, the yardstick and the probe on the outside folders, over the seeds."""
    return outside_table(summarize(results("outside.json")["cells"], OUTSIDE_KEYS)) + "\n"


RENDERERS: dict[str, Callable[..., str]] = {"outside": outside, "training": training, "data-kernels": data_kernels,
                                            "inference": inference}


def render(page: str, results: Callable[[str], Any] = _load) -> str:
    """The page with every generated section rewritten; an unknown section name is an error."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise SystemExit(f"{PAGE}: unknown generated section '{name}' (known: {', '.join(RENDERERS)})")
        return match.group(1) + RENDERERS[name](results) + match.group(4)

    return SECTION.sub(replace, page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from its JSON files")
    args = parser.parse_args(argv)
    page = PAGE.read_text(encoding="utf-8")
    current = render(page)
    if args.check:
        if current != page:
            print(f"{PAGE}: stale; run `python benchmarks/render_docs.py`", file=sys.stderr)
            return 1
        return 0
    if current != page:
        PAGE.write_text(current, encoding="utf-8")
        print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
