"""Would a small data set gain from more training photos: a refit on train + val, or 10/10 shares?

For a set of 80 photos a class: does a final refit on train + val (85% of the
photos instead of 70%, x1.21) or smaller val/test shares (10/10: 80%, x1.14) pays. Neither can be
scored on val once val is trained on, and the test split must not choose, so this measures the
learning curve one step down, on val: cpu-default trained on the seed's whole train split against
cpu-default trained on 70/85 of it (the same x1.21 step, every class cut alike), both at the same
epoch count, both scored on the same val photos. The difference is what the refit's extra photos
would buy; the 10/10 shares would buy about log(1.14)/log(1.21) = 0.69 of it.

The whole-train arm is the `cpu-default` cell of bench_datasets.py (same split, same overrides)
when --full-from names its JSON, else it is trained here. Results: benchmarks/results/small_data.json.

    .venv/bin/python benchmarks/bench_small_data.py --datasets oxford17-flowers --seeds 0 1 2 \\
        --set train.epochs=18 --full-from benchmarks/results/datasets.json --full-method cpu-default+epochs18-decay-all
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_datasets import run_cpu_default, split_for  # noqa: E402
from cells import DATASETS, REPO, git_commit, load_results, save_results  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "small_data.json"
# the numbers a cell reports, summarised over the seeds
KEYS = ("val_acc_cut", "val_acc_full", "gain", "gain_views")
KEEP = 0.70 / 0.85  # the train share of a 70/15/15 split over that of a refit on train + val


def subset_manifest(manifest: Path, keep: float, out: Path, seed: int = 0) -> Path:
    """`manifest` with only `keep` of each class's train rows (a fixed random choice); val and test unchanged."""
    import random

    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_class: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["split"] == "train":
            by_class.setdefault(row["label"], []).append(i)
    rng = random.Random(seed)
    dropped = set()
    for label in sorted(by_class):
        indices = by_class[label]
        dropped.update(rng.sample(indices, len(indices) - round(keep * len(indices))))
    kept = [row for i, row in enumerate(rows) if i not in dropped]
    from plantid.fileio import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return out


def full_train_cell(path: Path | None, method: str, dataset: str, seed: int) -> dict | None:
    """The bench_datasets.py cell of the whole-train arm, if `path` holds it."""
    if path is None:
        return None
    for cell in load_results(path)["cells"]:
        if (cell["dataset"], cell["seed"], cell["method"]) == (dataset, seed, method):
            return cell
    return None


def main() -> None:
    """Train the missing arms, score them on val, print the per-seed gains and their mean."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["oxford17-flowers"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="cpu-default overrides for both arms")
    ap.add_argument("--full-from", type=Path, help="bench_datasets JSON holding the whole-train arm")
    ap.add_argument("--full-method", default="cpu-default", help="its method name there")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-small")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    for name in args.datasets:
        for seed in args.seeds:
            results = load_results(args.out)
            if any((c["dataset"], c["seed"]) == (name, seed) for c in results["cells"]):
                print(f"skip {name} seed {seed}: already in {args.out}")
                continue
            cell_dir = args.work / name / f"seed{seed}"
            manifest = split_for(DATASETS / name, seed, cell_dir)
            started = time.perf_counter()
            cut = run_cpu_default(subset_manifest(manifest, KEEP, cell_dir / "split_cut.csv"), cell_dir,
                                  args.overrides, "cpu-default+cut", splits=("val",))
            full = full_train_cell(args.full_from, args.full_method, name, seed)
            if full is None:
                full = run_cpu_default(manifest, cell_dir, args.overrides, "cpu-default", splits=("val",))
            cell = {"dataset": name, "seed": seed, "method": "learning-curve",
                    "val_acc_cut": cut["val_acc"], "val_acc_views_cut": cut["val_acc_views"],
                    "val_acc_full": full["val_acc"], "val_acc_views_full": full["val_acc_views"],
                    "gain": full["val_acc"] - cut["val_acc"],
                    "gain_views": full["val_acc_views"] - cut["val_acc_views"],
                    "train_seconds_cut": cut["train_seconds"], "train_seconds_full": full["train_seconds"],
                    "overrides": args.overrides, "commit": git_commit(),
                    "wall_seconds": round(time.perf_counter() - started, 1), "load_average": os.getloadavg()[0]}
            results = load_results(args.out)
            results["cells"].append(cell)
            save_results(results, args.out, KEYS)
            print(f"{name} seed {seed}: val {cut['val_acc']:.4f} on 70/85 of train -> {full['val_acc']:.4f} "
                  f"on all of it (views {cut['val_acc_views']:.4f} -> {full['val_acc_views']:.4f})", flush=True)
    cells = load_results(args.out)["cells"]
    for name in args.datasets:
        mine = [c for c in cells if c["dataset"] == name]
        if mine:
            gain = statistics.fmean(c["gain"] for c in mine)
            views = statistics.fmean(c["gain_views"] for c in mine)
            print(f"{name}: x{1 / KEEP:.2f} train photos gained {100 * gain:+.2f} val points "
                  f"({100 * views:+.2f} with views) over seeds {sorted(c['seed'] for c in mine)}; "
                  f"10/10 shares would gain about {100 * gain * math.log(0.80 / 0.70) / math.log(1 / KEEP):+.2f}")


if __name__ == "__main__":
    main()
