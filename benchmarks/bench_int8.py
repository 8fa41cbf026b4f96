"""int8 that keeps its accuracy: size, val accuracy against fp32, reported on test once.

    .venv/bin/python benchmarks/bench_int8.py --run runs/lite0 [--mode weights|static] [--counts 0,2,4,8,16]

The run's fp32 ONNX export (RUN/export/model.onnx, made if missing) is quantized as
`plantid export --quantize --mode` does. `--mode weights` (the default): int8 tensors, float
arithmetic, one candidate. `--mode static` (QDQ, per-channel 7-bit int8 weights, uint8 activations
calibrated on 128 train photos), then again with the k noisiest convolutions left in float
(`plantid.infer.quantize.noisiest_nodes`, measured on 16 train photos). For each candidate: size,
val accuracy against fp32, and the share of val photos whose unknown answer changes. The smallest k
within 0.5 points of fp32 on val is chosen (else the k that lost least on val); test is scored
once, for fp32, k = 0 and the chosen k.
Writes benchmarks/results/int8.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "int8.json"
MAX_DROP_POINTS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--mode", choices=("weights", "static"), default="weights")
    parser.add_argument("--counts", default="0,2,4,8,16", help="float nodes to try (static mode)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from plantid.infer.export import export_run
    from plantid.infer.onnx_export import labelled_run_photos, run_photos
    from plantid.infer.quantize import CALIBRATION_IMAGES, model_outputs, noisiest_nodes, quantize_onnx

    meta_path = args.run / "export" / "preprocessing.json"
    if not meta_path.is_file():
        export_run(args.run, "onnx")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    size, classes = meta["image_size"], meta["labels"]
    threshold = (meta.get("trust") or {}).get("threshold")
    fp32 = args.run / "export" / "model.onnx"
    calib = run_photos(args.run, size, CALIBRATION_IMAGES, ("train",))

    def labelled(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, names = labelled_run_photos(args.run, size, 100_000, (split,))
        return images, np.array([classes.index(n) for n in names])

    val_x, val_y = labelled("val")
    counts = sorted(int(c) for c in args.counts.split(",")) if args.mode == "static" else [0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-") as work:
        work = Path(work)
        fp_val, fp_val_scores = model_outputs(fp32, val_x)
        models: dict[int, Path] = {}
        noisy: list[str] = []
        for k in counts:
            if k and not noisy:
                noisy = noisiest_nodes(fp32, models[0], calib[:16], max(counts))
            path = work / f"k{k}.onnx"
            t0 = time.perf_counter()
            exported = args.run / "export" / "model.int8.onnx"
            made = meta.get("int8") or {}
            if k == 0 and made.get("file") and made.get("mode") == args.mode and exported.is_file():
                path = exported  # the export's own int8 model is the k = 0 candidate
            else:
                quantize_onnx(fp32, path, calib, mode=args.mode, exclude=tuple(noisy[:k]))
            models[k] = path
            probs, scores = model_outputs(path, val_x, args.mode)
            row = {"float_nodes": k, "names": noisy[:k], "size_mb": path.stat().st_size / 1e6,
                   "val_fp32": float((fp_val.argmax(1) == val_y).mean()), "val_int8": float((probs.argmax(1) == val_y).mean()),
                   "seconds": round(time.perf_counter() - t0, 1)}
            row["val_drop_points"] = round(100 * (row["val_fp32"] - row["val_int8"]), 2)
            if threshold is not None and scores is not None:
                row["val_unknown_changed"] = float(((scores > threshold) != (fp_val_scores > threshold)).mean())
            rows.append(row)
            print(f"k={k:>2}  {row['size_mb']:.1f} MB  val fp32 {100 * row['val_fp32']:.2f}%  int8 "
                  f"{100 * row['val_int8']:.2f}%  drop {row['val_drop_points']:+.2f}  unknown changed "
                  f"{100 * row.get('val_unknown_changed', 0):.1f}%", flush=True)
        # the smallest k within the rule, else the candidate that lost least on val
        chosen = next((r for r in rows if r["val_drop_points"] <= MAX_DROP_POINTS),
                      min(rows, key=lambda r: (r["val_drop_points"], r["float_nodes"])))
        test_x, test_y = labelled("test")
        test = {"photos": int(len(test_y)), "fp32": float((model_outputs(fp32, test_x)[0].argmax(1) == test_y).mean())}
        for k in sorted({0, chosen["float_nodes"]}):
            test[f"int8_k{k}"] = float((model_outputs(models[k], test_x, args.mode)[0].argmax(1) == test_y).mean())
    result = {"run": str(args.run), "mode": args.mode, "image_size": size, "val_photos": int(len(val_y)), "candidates": rows,
              "chosen_float_nodes": chosen["float_nodes"], "test": test, "date": time.strftime("%Y-%m-%d")}
    print(f"chosen on val: {chosen['float_nodes']} float nodes; test ({test['photos']} photos): fp32 "
          f"{100 * test['fp32']:.2f}%, " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in test.items() if k.startswith("int8")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
