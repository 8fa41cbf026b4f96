"""Calibration of a recipe over several runs' test splits pooled, against its noise floor.

One test split of a few hundred photos measures an ECE that a perfectly calibrated model would
also show at about 3% (`plantid evaluate` prints that floor beside each run's ECE). Pooling the
reliability bins of several runs of the same recipe (eval.json, "bins_after": count, mean
confidence and accuracy per confidence bin, after each run's own temperature) measures the
recipe's calibration on many more photos, with a floor that is correspondingly lower.

    .venv/bin/python benchmarks/pool_calibration.py leaves=runs/bench-cal/an2dl2022-plants/seed*/cpu-default \
        flowers=runs/bench-cal/oxford17-flowers/seed*/cpu-default --out benchmarks/results/calibration_pooled.json

Each NAME=RUN argument adds RUN/eval.json to the group NAME (a shell glob gives several runs). It
prints per-run and pooled ECE with the floor (mean and 5-95% of the ECE a calibrated model would
measure on the same photos, every photo drawn at its bin's mean confidence: within 0.05 points of
`ece_if_calibrated`'s per-photo draws on the shared sets' runs) and writes the JSON atomically.
No photo is read: the numbers are those `plantid evaluate` already wrote.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from plantid.fileio import write_json_atomic
from plantid.records import Evaluation

Bins = list[tuple[int, float, float]]  # (photos, mean confidence, accuracy) per confidence bin, in order


def run_bins(eval_json: Path) -> Bins:
    """Every bin after the temperature in one eval.json (an empty bin is (0, 0.0, 0.0))."""
    evaluation = Evaluation.read(eval_json)
    if evaluation is None or evaluation.trust is None:
        raise SystemExit(f"{eval_json}: no calibration; run `plantid evaluate RUN --split test` on a run with trust files")
    return [(b.count, b.confidence or 0.0, b.accuracy or 0.0) for b in evaluation.trust.calibration.bins_after]


def pool(runs: list[Bins]) -> Bins:
    """Bin by bin (every run has the same edges): photos summed, confidence and accuracy photo-weighted."""
    if len({len(bins) for bins in runs}) != 1:
        raise SystemExit("the runs' reliability bins differ in number; evaluate them with the same plantid")
    pooled = []
    for same_bin in zip(*runs):
        photos = sum(n for n, _, _ in same_bin)
        weighted = [sum(n * value[i] for n, *value in same_bin) / photos if photos else 0.0 for i in (0, 1)]
        pooled.append((photos, *weighted))
    return pooled


def ece(bins: Bins) -> float:
    """Expected calibration error of binned answers: photo-weighted |accuracy - confidence|."""
    return sum(n * abs(a - c) for n, c, a in bins) / sum(n for n, _, _ in bins)


def floor(bins: Bins, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 5th, 95th percentile) ECE of a calibrated model on these photos: each bin's right
    answers drawn as Binomial(photos, its mean confidence)."""
    rng = np.random.default_rng(seed)
    counts = np.array([n for n, _, _ in bins])
    confidence = np.array([c for _, c, _ in bins])
    right = rng.binomial(counts, confidence, size=(draws, len(bins)))
    eces = np.abs(right - counts * confidence).sum(axis=1) / counts.sum()
    return float(eces.mean()), float(np.percentile(eces, 5)), float(np.percentile(eces, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER (RUN/eval.json of a test-split evaluation)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration_pooled.json"))
    args = parser.parse_args(argv)
    groups: dict[str, list[Path]] = defaultdict(list)
    for item in args.runs:
        name, sep, run = item.partition("=")
        if not sep:
            raise SystemExit(f"{item}: write NAME=RUN_FOLDER, e.g. leaves=runs/bench/an2dl2022-plants/seed0/cpu-default")
        groups[name].append(Path(run) / "eval.json")
    result = {}
    print(f"{'group':10} {'run':60} {'photos':>6} {'ECE':>6} {'floor (5-95%)':>20}")
    for name, paths in groups.items():
        rows = []
        for path in paths:
            bins = run_bins(path)
            rows.append({"run": str(path.parent), "photos": sum(n for n, _, _ in bins), "ece": ece(bins), "floor": floor(bins)})
        pooled = pool([run_bins(p) for p in paths])
        result[name] = {"runs": rows, "pooled": {"photos": sum(n for n, _, _ in pooled), "ece": ece(pooled), "floor": floor(pooled)}}
        for row in [*rows, {"run": "POOLED", **result[name]["pooled"]}]:
            f = row["floor"]
            print(f"{name:10} {row['run'][-60:]:60} {row['photos']:6d} {100 * row['ece']:5.2f}% "
                  f"{100 * f[0]:5.2f}% ({100 * f[1]:.2f}-{100 * f[2]:.2f})")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
