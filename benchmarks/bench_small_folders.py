"""Do the three answers hold on a small folder? Measured on photos the run never saw.

For each shared set and split seed: N classes x M photos (a fixed random draw per seed) become a
folder of links, `plantid train --data` trains the default recipe on it (scan, split, train,
trust: what a new user runs), and then, on photos the run never saw,

* the other photos of the same classes ("new"): the share KEPT as known (goal: at least 90%),
  with the finite-sample threshold the run fitted and with the plain val quantile it replaced
  (the 95th percentile of the val scores), and the coverage and accuracy of the photos named;
* photos of the other shared set and generated images (noise, flat colours): the share
  answered "not one of the species" (goal: at least 95%);
* the run's peak memory and its training time against its budget.

Prints a table and writes benchmarks/results/small_folders.json.

    nice -n 19 .venv/bin/python benchmarks/bench_small_folders.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from plantid.records import read_summary, read_trust

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_datasets import plantid  # noqa: E402
from cells import DATASETS, REPO, git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "small_folders.json"
PAIRS = {"an2dl2022-plants": "oxford17-flowers", "oxford17-flowers": "an2dl2022-plants"}
FOREIGN = 200  # photos of the other set, per run
GENERATED = 40  # noise and flat-colour images, per run


def photos_of(folder: Path) -> dict[str, list[Path]]:
    """{class: sorted photo paths} of a one-subfolder-per-class folder."""
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            for d in sorted(folder.iterdir()) if d.is_dir()}


def small_folder(data: Path, classes: int, per_class: int, seed: int, out: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """A folder of links to `per_class` photos of `classes` classes (drawn with `seed`), and the
    (path, class) of the same classes' other photos, which the run never sees."""
    rng = random.Random(seed)
    by_class = photos_of(data)
    chosen = sorted(rng.sample(sorted(by_class), classes))
    folder, unseen = out / "photos", []
    for name in chosen:
        picked = set(rng.sample(by_class[name], min(per_class, len(by_class[name]))))
        (folder / name).mkdir(parents=True, exist_ok=True)
        for path in by_class[name]:
            if path in picked:
                link = folder / name / path.name
                if not link.exists():
                    link.symlink_to(path)
            else:
                unseen.append((path, name))
    return folder, unseen


def generated(out: Path, n: int, seed: int) -> list[Path]:
    """`n` images no species looks like: uniform noise and flat colours, written once as PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        if i % 2:
            pixels = np.full((128, 128, 3), rng.integers(0, 256, 3), np.uint8)
        else:
            pixels = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        path = out / f"generated{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def val_scores(run: Path, predictor) -> np.ndarray:
    """The unknown-photo scores of the run's own val photos."""
    from plantid.data.split import read_manifest

    rows = read_manifest(run / "split.csv").rows_for("val")
    return np.array([p.ood_score for p in predictor.predict([r.path for r in rows]) if p.ok])


def measure(run: Path, unseen: list[tuple[Path, str]], foreign: list[Path], budget_minutes: float) -> dict:
    """The cell's numbers (see the module docstring)."""
    from plantid.infer.predictor import Predictor
    from plantid.trustfit.fit import choose_threshold
    from plantid.trust.selective import selective_summary

    predictor = Predictor.from_run(run)
    trust = read_trust(run)
    summary = read_summary(run)
    read = [(p, name) for p, (_, name) in zip(predictor.predict([str(path) for path, _ in unseen]), unseen) if p.ok]
    new = [p for p, _ in read]
    labels = np.array([predictor.classes.index(name) for _, name in read])
    probabilities = np.stack([p.probabilities for p in new])
    scores = np.array([p.ood_score for p in new])
    plain = choose_threshold(val_scores(run, predictor), trust.keep)
    others = [p for p in predictor.predict([str(p) for p in foreign]) if p.ok]
    answers = selective_summary(probabilities, labels, scores > predictor.threshold, predictor.answer_level)
    return {
        "val_photos": trust.measured["val_photos"],
        "keep_promised": trust.measured.get("keep_promised"),
        "new_photos": len(new),
        "kept": round(float(np.mean(scores <= predictor.threshold)), 4),
        "kept_plain_quantile": round(float(np.mean(scores <= plain)), 4),
        "accuracy_all": round(float(np.mean(probabilities.argmax(1) == labels)), 4),
        "coverage": answers["coverage"],
        "answered_accuracy": answers["answered_accuracy"],
        "unsure": answers["unsure"],
        "answer_level": predictor.answer_level,
        "foreign_photos": len(others),
        "foreign_unknown": round(float(np.mean([p.unknown for p in others])), 4),
        "foreign_unknown_plain_quantile": round(float(np.mean([p.ood_score > plain for p in others])), 4),
        "peak_memory_mb": summary.peak_memory_mb,
        "train_seconds": summary.train_seconds,
        "budget_seconds": 60 * budget_minutes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(PAIRS))
    parser.add_argument("--datasets-root", type=Path, default=DATASETS, help="the folder holding the shared sets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--budget-minutes", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "small-folders")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cells = []
    for name in args.datasets:
        for seed in args.seeds:
            cell = args.out / name / f"seed{seed}"
            folder, unseen = small_folder(args.datasets_root / name, args.classes, args.per_class, seed, cell)
            other = [p for paths in photos_of(args.datasets_root / PAIRS[name]).values() for p in paths]
            foreign = random.Random(seed).sample(other, FOREIGN) + generated(cell / "generated", GENERATED, seed)
            run = cell / "run"
            if not (run / "trust.json").is_file():
                started = time.perf_counter()
                plantid("train", "--data", str(folder), "--out", str(run), f"data.split_seed={seed}",
                        f"train.seed={seed}", f"train.budget_minutes={args.budget_minutes:g}", log=cell / "train.log")
                print(f"{name} seed {seed}: trained in {time.perf_counter() - started:.0f} s", flush=True)
            cells.append({"dataset": name, "seed": seed, **measure(run, unseen, foreign, args.budget_minutes)})
            print(json.dumps(cells[-1]), flush=True)
    from plantid.fileio import write_json_atomic

    write_json_atomic(args.results, {"commit": git_commit(), "classes": args.classes, "per_class": args.per_class,
                                     "cells": cells})
    keys = ("kept", "kept_plain_quantile", "coverage", "answered_accuracy", "foreign_unknown", "peak_memory_mb")
    print("dataset            seed  " + "  ".join(f"{k:>22}" for k in keys))
    for c in cells:
        print(f"{c['dataset']:<18} {c['seed']:>4}  " + "  ".join(f"{c[k] if c[k] is not None else '':>22}" for k in keys))
    for k in keys[:-1]:
        values = [c[k] for c in cells if c[k] is not None]
        if values:
            print(f"{k}: mean {statistics.mean(values):.4f}, worst {min(values):.4f}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
