"""Train each CPU-runnable recipe on one stratified split of the shared plant photos and
print a table: image size, epochs, wall time, val and test accuracy, and test accuracy with
test-time augmentation (`plantid evaluate --tta default`; results/train.json).

    .venv/bin/python benchmarks/bench_train.py                      # all CPU recipes
    .venv/bin/python benchmarks/bench_train.py --recipes cpu-default --set train.epochs=6

Each recipe runs as its own `plantid train` process, one after the other, so they share the
machine equally. The split is `data.split_seed=0` with 15% val and 15% test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plantid.records import read_evaluation, read_summary

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "an2dl2022-plants"
CPU_RECIPES = ["simple-cnn", "inception", "cpu-default"]


def train_once(recipe: str, manifest: Path, out: Path, overrides: list[str]) -> dict:
    """Run `plantid train` for one recipe and return its train_summary.json plus wall time."""
    cmd = [sys.executable, "-m", "plantid.cli", "train", "--data", str(manifest), "--recipe", recipe,
           "--out", str(out), "train.progress=false", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} failed:\n{proc.stderr[-3000:]}")
    summary = read_summary(out).model_dump()
    summary["wall_seconds"] = round(wall, 1)
    summary["command"] = " ".join(["plantid", *cmd[3:]])
    return summary


def test_acc_with_tta(run: Path, tta: str = "default") -> float:
    """Test accuracy of a trained run with the given TTA views (`plantid evaluate --tta`)."""
    cmd = [sys.executable, "-m", "plantid.cli", "evaluate", str(run), "--split", "test", "--tta", tta]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"evaluating {run} failed:\n{proc.stderr[-3000:]}")
    return read_evaluation(run).tta.metrics.accuracy


def _sizes_label(sizes: list[int]) -> str:
    """Epoch sizes as '128' or, under progressive resizing, '128x5+192x2'."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return str(sizes[0]) if len(runs) == 1 else "+".join(f"{s}x{n}" for s, n in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--recipes", nargs="+", default=CPU_RECIPES)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value overrides for every recipe")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}; pass --data FOLDER")

    work = args.work or Path(tempfile.mkdtemp(prefix="plantid-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "plantid.cli", "split", str(args.data), "--out", str(work / "split")],
                   check=True, capture_output=True)
    manifest = work / "split" / "split.csv"

    rows = []
    for recipe in args.recipes:
        run = work / recipe
        if run.exists():
            shutil.rmtree(run)
        summary = train_once(recipe, manifest, run, args.overrides)
        rows.append({
            "recipe": recipe, "model": summary["model"], "image_size": summary["image_size"],
            "px": _sizes_label(summary.get("train_image_sizes") or [summary["image_size"]]),
            "epochs": summary["epochs_run"], "train_seconds": summary["train_seconds"],
            "wall_seconds": summary["wall_seconds"], "val_acc": summary["best_val_acc"],
            "test_acc": summary["test_acc"], "test_acc_tta": test_acc_with_tta(run), "command": summary["command"],
        })
        print(f"{recipe}: done in {summary['wall_seconds']} s", flush=True)

    header = f"{'recipe':<14} {'model':<22} {'px':>11} {'epochs':>6} {'train s':>8} {'wall s':>7} {'val acc':>8} {'test acc':>8} {'test TTA':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['recipe']:<14} {r['model']:<22} {r['px']:>11} {r['epochs']:>6} {r['train_seconds']:>8.1f} "
              f"{r['wall_seconds']:>7.1f} {r['val_acc']:>8.4f} {r['test_acc']:>8.4f} {r['test_acc_tta']:>8.4f}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"cpu_count": os.cpu_count(), "overrides": args.overrides, "runs": rows}
    args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
