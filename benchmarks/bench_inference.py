"""Inference speed and int8 accuracy: PyTorch vs onnxruntime fp32 vs onnxruntime int8, on the CPU.

    .venv/bin/python benchmarks/bench_inference.py --run runs/lite0            # a trained run
    .venv/bin/python benchmarks/bench_inference.py                             # trains a tiny run first

For each engine: images/s at batch 1 and batch 64, and p50/p95 latency at batch 1 (one image:
uint8 pixels in, probabilities out; decoding and resizing the file are not included since
they are the same for every engine). Engines:

* torch: the run's Classifier in eval mode under torch.inference_mode, `--threads` intra-op threads;
* onnx-fp32: RUN/export/model.onnx (exported first if missing);
* onnx-int8-static: RUN/export/model.int8.onnx (static QDQ, calibrated on train photos);
* onnx-int8-dynamic: dynamic quantization of the same model (weights int8, activations at run time);
* with --spinning: onnx-fp32-spin and onnx-int8-static-spin, the same models with onnxruntime's
  spinning worker threads (session.intra_op.allow_spinning=1, plantid turns it off).

Accuracy of every engine on the run's test split, and the drop of each int8 model against the fp32
ONNX model in points. Prints a table and writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_engine(fn, images: np.ndarray, batch: int, min_seconds: float, min_iters: int, warmup: int) -> dict:
    """Run `fn` on batches of `batch` images; latencies per call in ms, throughput in images/s."""
    reps = int(np.ceil(batch / len(images)))
    pool = np.concatenate([images] * max(reps, 1))
    starts = list(range(0, max(1, len(pool) - batch + 1), max(1, batch)))
    for i in range(warmup):
        fn(pool[starts[i % len(starts)] : starts[i % len(starts)] + batch])
    latencies: list[float] = []
    t_start = time.perf_counter()
    i = 0
    while len(latencies) < min_iters or time.perf_counter() - t_start < min_seconds:
        s = starts[i % len(starts)]
        t0 = time.perf_counter()
        fn(pool[s : s + batch])
        latencies.append((time.perf_counter() - t0) * 1000.0)
        i += 1
    total = sum(latencies) / 1000.0
    return {
        "batch": batch,
        "calls": len(latencies),
        "images_per_s": round(batch * len(latencies) / total, 2),
        "p50_ms": round(_percentile(latencies, 50), 3),
        "p95_ms": round(_percentile(latencies, 95), 3),
        "mean_ms": round(float(np.mean(latencies)), 3),
    }


def load_split(run: Path, split: str, size: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from plantid.data.images import BadImageError, load_image
    from plantid.data.split import read_manifest

    manifest = read_manifest(run / "split.csv")
    classes = json.loads((run / "labels.json").read_text(encoding="utf-8"))
    images, labels = [], []
    for row in manifest.rows_for(split)[: limit or None]:
        try:
            images.append(load_image(row.path, size))
        except BadImageError:
            continue
        labels.append(classes.index(row.label))
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64), classes
    return np.stack(images), np.asarray(labels), classes


def train_tiny_run(workdir: Path, image_size: int) -> Path:
    """A small simple_cnn run on generated photos (class colour + noise + a bright square)."""
    from PIL import Image

    from plantid.config import load_config
    from plantid.train.run import train_run

    palette = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 210, 40)]
    photos = workdir / "photos"
    for k, colour in enumerate(palette):
        rng = np.random.default_rng([0, k])
        for i in range(30):
            img = np.asarray(colour, np.float32) + rng.normal(0, 25, (image_size, image_size, 3))
            side = image_size // 4
            y, x = rng.integers(0, image_size - side, 2)
            img[y : y + side, x : x + side] += 60
            path = photos / f"class{k}" / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    cfg = load_config("simple-cnn", [
        f"data.root={photos}", f"data.image_size={image_size}", "data.val=0.2", "data.test=0.2",
        f"data.cache_dir={workdir / 'cache'}", "train.epochs=3", "train.progress=false", "data.batch_size=16",
    ])
    run = workdir / "run"
    train_run(cfg, run)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained run folder (default: train a tiny simple_cnn run)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size of the tiny run (default 64); with --run it must match the run's size")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine (default 2)")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing per engine and batch size")
    parser.add_argument("--big-batch", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=128, help="train photos for static calibration")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-dynamic", action="store_true", help="skip dynamic int8 quantization")
    parser.add_argument("--spinning", action="store_true",
                        help="also time the ONNX models with spinning worker threads (onnxruntime's default)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnx_ir", "onnxscript", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    os.environ["PLANTID_ORT_THREADS"] = str(args.threads)

    from rich.console import Console
    from rich.table import Table

    from plantid.fileio import write_json_atomic
    from plantid.infer.checkpoint import load_trained
    from plantid.infer.export import export_run
    from plantid.infer.onnx_backend import INT8_FILE, OnnxBackend
    from plantid.infer.onnx_export import run_photos
    from plantid.infer.quantize import quantize_onnx
    from plantid.infer.predictor import TorchBackend

    console = Console(width=max(120, Console().width))
    tmp = tempfile.TemporaryDirectory(prefix="plantid-bench-")
    run = args.run
    if run is None:
        size = args.image_size or 64
        console.print(f"no --run: training a tiny simple_cnn run at {size} px in {tmp.name}")
        run = train_tiny_run(Path(tmp.name), size)
    trained = load_trained(run)
    size = trained.image_size
    if args.image_size and args.image_size != size:
        console.print(f"[red]--image-size {args.image_size} differs from the run's {size} px; the model decides[/]")
        return 2

    export_dir = run / "export"
    meta_path = export_dir / "preprocessing.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    int8_meta = meta.get("int8") or {}
    # exports before the 7-bit weights (reduce_range) saturate on AVX2 CPUs: make a current one
    if not (export_dir / INT8_FILE).is_file() or int8_meta.get("mode") != "static" \
            or "reduce_range" not in str(int8_meta.get("weights")):
        console.print("exporting fp32 + static int8 ONNX ...")
        t0 = time.perf_counter()
        export_run(run, "onnx", quantize=True, calibration_images=args.calibration)
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
        meta = json.loads(meta_path.read_text())

    engines: dict[str, object] = {
        "torch": TorchBackend(trained),
        "onnx-fp32": OnnxBackend.from_run(run, threads=args.threads),
        "onnx-int8-static": OnnxBackend.from_run(run, quantized=True, threads=args.threads),
    }
    if args.spinning:
        for name in ("onnx-fp32", "onnx-int8-static"):
            engines[f"{name}-spin"] = OnnxBackend.from_run(run, quantized=name.endswith("static"),
                                                           threads=args.threads, spinning=True)
    if not args.no_dynamic:
        calib = run_photos(run, size, limit=16, split_order=("train",))
        dyn_path = Path(tmp.name) / "model.int8-dynamic.onnx"
        quantize_onnx(export_dir / "model.onnx", dyn_path, calib, mode="dynamic")
        engines["onnx-int8-dynamic"] = OnnxBackend(dyn_path, meta, threads=args.threads)

    test_x, test_y, classes = load_split(run, "test", size)
    split_used = "test"
    if not len(test_x):
        test_x, test_y, classes = load_split(run, "val", size)
        split_used = "val"
    timing_images = test_x if len(test_x) else np.random.default_rng(0).integers(0, 256, (8, size, size, 3), np.uint8)

    results: dict[str, dict] = {}
    probs: dict[str, np.ndarray] = {}
    for name, fn in engines.items():
        console.print(f"timing {name} ...")
        b1 = time_engine(fn, timing_images, 1, args.seconds, 20, 5)
        bb = time_engine(fn, timing_images, args.big_batch, args.seconds, 3, 1)
        entry = {"batch1": b1, f"batch{args.big_batch}": bb}
        if len(test_x):
            p = np.concatenate([fn(test_x[i : i + 64]) for i in range(0, len(test_x), 64)])
            probs[name] = p
            entry["accuracy"] = round(float((p.argmax(1) == test_y).mean()), 4)
        results[name] = entry
    if "onnx-fp32" in probs:
        for name in list(results):
            if name in probs and name != "onnx-fp32":
                results[name]["accuracy_drop_points_vs_onnx_fp32"] = round(
                    100.0 * (results["onnx-fp32"]["accuracy"] - results[name]["accuracy"]), 2)
                results[name]["top1_agreement_with_onnx_fp32"] = round(
                    float((probs[name].argmax(1) == probs["onnx-fp32"].argmax(1)).mean()), 4)
                results[name]["max_abs_prob_diff_vs_onnx_fp32"] = float(np.abs(probs[name] - probs["onnx-fp32"]).max())

    sizes = {"onnx-fp32": (export_dir / "model.onnx").stat().st_size, "onnx-int8-static": (export_dir / INT8_FILE).stat().st_size}
    if "onnx-int8-dynamic" in engines:
        sizes["onnx-int8-dynamic"] = (Path(tmp.name) / "model.int8-dynamic.onnx").stat().st_size
    for name, nbytes in sizes.items():
        results[name]["model_mb"] = round(nbytes / 1e6, 2)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > (os.cpu_count() or 1):
        console.print(f"[yellow]load average {load:.1f} on {os.cpu_count()} CPUs: other work competes, timings are noisy[/]")
    table = Table(title=f"{trained.model_id}, {size} px, {args.threads} threads, {split_used} split n={len(test_x)}")
    for col in ("engine", "b1 img/s", "b1 p50 ms", "b1 p95 ms", f"b{args.big_batch} img/s", "accuracy", "drop (pts)", "MB"):
        table.add_column(col, justify="left" if col == "engine" else "right", no_wrap=col == "engine")
    for name, r in results.items():
        bb = r[f"batch{args.big_batch}"]
        table.add_row(name, f"{r['batch1']['images_per_s']:.1f}", f"{r['batch1']['p50_ms']:.2f}",
                      f"{r['batch1']['p95_ms']:.2f}", f"{bb['images_per_s']:.1f}",
                      f"{r['accuracy']:.4f}" if "accuracy" in r else "-",
                      f"{r['accuracy_drop_points_vs_onnx_fp32']:+.2f}" if "accuracy_drop_points_vs_onnx_fp32" in r else "",
                      f"{r.get('model_mb', 0):.2f}" if "model_mb" in r else "")
    console.print(table)

    import onnxruntime

    report = {
        "run": str(run if args.run else "tiny simple_cnn run (trained by the benchmark)"),
        "model_id": trained.model_id,
        "model_name": trained.config.model.name,
        "image_size": size,
        "classes": len(classes),
        "threads": args.threads,
        "onnx_spinning": "off (plantid's make_session); on for the *-spin engines",
        "eval_split": split_used,
        "eval_images": int(len(test_x)),
        "int8_static": meta.get("int8"),
        "engines": results,
        "machine": {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min": round(load, 2) if load is not None else None,
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": "latency = one call on a uint8 batch already at the model size (no decode/resize)",
    }
    write_json_atomic(args.out, report)
    console.print(f"wrote {args.out}")
    tmp.cleanup()
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
