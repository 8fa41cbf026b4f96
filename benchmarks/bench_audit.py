"""How many deliberately flipped labels does `plantid audit` find in its top 2 x 5%?

For each shared data set: a folder of symlinks (under --work, never in the repo) to --per-class
photos of each class, with the labels of a known random --flip share moved to another class;
a short `plantid train` on it; then the audit with each feature source, plus a reference that
is not out-of-fold: cleanlab on the fine-tuned model's own probabilities for the photos it
trained on. Prints a table and writes benchmarks/results/audit.json.

    .venv/bin/python benchmarks/bench_audit.py                       # leaf and flower, 40 a class
    .venv/bin/python benchmarks/bench_audit.py --datasets leaf --per-class 120 --epochs 3 \
        --work /tmp/plantid-bench-audit-120 --runs runs/bench-audit-120 --results benchmarks/results/audit_leaf120.json

Recall counts the flipped photos among the audited (train + val) photos found in the audit's
first 2 x flip x N rows; the chance level is 2 x flip (10% for 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from plantid.records import read_summary

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {"leaf": SHARED / "an2dl2022-plants", "flower": SHARED / "oxford17-flowers"}
RESULTS = REPO / "benchmarks" / "results" / "audit.json"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def build_flipped_folder(source: Path, out: Path, per_class: int, flip: float, seed: int) -> dict[str, str]:
    """Symlink `per_class` photos a class into `out/<class>/`, a `flip` share of them into a wrong class.

    Returns {link path: true class} of the flipped photos.
    """
    rng = random.Random(seed)
    shutil.rmtree(out, ignore_errors=True)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    picked = []
    for c in classes:
        photos = sorted(p for p in (source / c).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        picked += [(p, c) for p in rng.sample(photos, min(per_class, len(photos)))]
    flipped_idx = set(rng.sample(range(len(picked)), round(flip * len(picked))))
    flipped = {}
    for i, (photo, true) in enumerate(picked):
        given = rng.choice([c for c in classes if c != true]) if i in flipped_idx else true
        link = out / given / f"{true}__{photo.name}"  # the true class in the name never reaches the model
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(photo)
        if i in flipped_idx:
            flipped[str(link)] = true
    return flipped


def train(folder: Path, run: Path, epochs: int, image_size: int, extra: list[str], flipped: dict[str, str]) -> float:
    """A short cpu-default run on the folder (one size, no progressive phase); returns its wall time.

    A finished run of the same flipped folder and settings (its flips.json) is reused as it is.
    """
    stamp = {"flipped": flipped, "epochs": epochs, "image_size": image_size, "extra": extra}
    if (run / "train_summary.json").is_file() and (run / "flips.json").is_file():
        if json.loads((run / "flips.json").read_text()) == stamp:
            return read_summary(run).train_seconds
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "plantid.cli", "train", "--data", str(folder), "--recipe", "cpu-default",
           "--out", str(run), f"train.epochs={epochs}", "train.resize_phases=[]", f"data.image_size={image_size}",
           "train.progress=false", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"training on {folder} failed:\n{proc.stderr[-3000:]}")
    (run / "flips.json").write_text(json.dumps(stamp, indent=1))
    return time.perf_counter() - started


def in_sample_ranking(run: Path) -> list[str]:
    """cleanlab on the fine-tuned model's own probabilities for its train+val photos (not out-of-fold)."""
    import numpy as np

    from plantid.data.split import read_manifest
    from plantid.infer.predictor import Predictor
    from plantid.trustfit.audit import rank_label_issues

    predictor = Predictor.from_run(run)
    rows = [r for r in read_manifest(run / "split.csv").rows if r.split in ("train", "val")]
    preds = predictor.predict([r.path for r in rows])
    probs = np.stack([p.probabilities for p in preds])
    index = {c: i for i, c in enumerate(predictor.classes)}
    labels = np.array([index[r.label] for r in rows])
    order, _, _ = rank_label_issues(labels, probs)
    return [rows[i].path for i in order]


def score(ranked: list[str], flagged: set[str] | None, flipped: dict[str, str], top_share: float) -> dict:
    """Recall of the flipped photos in the first top_share of the ranking, and how many flagged were flipped."""
    audited_flips = [p for p in flipped if p in set(ranked)]
    k = round(top_share * len(ranked))
    found = sum(p in flipped for p in ranked[:k])
    out = {"audited": len(ranked), "flipped_audited": len(audited_flips), "top_k": k, "found_in_top_k": found,
           "recall_top_k": round(found / max(1, len(audited_flips)), 4)}
    if flagged is not None:
        out.update(flagged=len(flagged), flagged_flipped=sum(p in flipped for p in flagged))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 9],
                        help="training lengths: fine-tuned features memorise flipped labels as training goes on")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("/tmp/plantid-bench-audit"), help="symlink folders (not the repo)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-audit")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for training")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from plantid.trustfit.audit import audit_run

    results = []
    for name in args.datasets:
        folder = args.work / name
        flipped = build_flipped_folder(DATASETS[name], folder, args.per_class, args.flip, args.seed)
        for epochs in args.epochs:
            run = args.runs / f"{name}-{epochs}ep"
            train_s = train(folder, run, epochs, args.image_size, args.set, flipped)
            summary = read_summary(run)
            variants = {}
            for features in ("model", "pretrained"):  # the last one written stays in the run (the default's)
                started = time.perf_counter()
                res = audit_run(run, features=features)
                ranked = [r.path for r in res.rows]
                variants[f"{features} features, out-of-fold"] = {
                    **score(ranked, {r.path for r in res.flagged}, flipped, 2 * args.flip),
                    "audit_seconds": round(time.perf_counter() - started, 1)}
            started = time.perf_counter()
            ranked = in_sample_ranking(run)
            variants["model probabilities, in-sample"] = {
                **score(ranked, None, flipped, 2 * args.flip), "audit_seconds": round(time.perf_counter() - started, 1)}
            results.append({
                "dataset": name, "source": str(DATASETS[name].relative_to(REPO.parent)), "per_class": args.per_class,
                "photos": sum(1 for _ in folder.rglob("*") if _.is_symlink()), "flipped": len(flipped),
                "epochs": epochs, "train_seconds": round(train_s, 1), "val_acc": summary.best_val_acc,
                "test_acc": summary.test_acc, "variants": variants,
            })

    print(f"\nflip {args.flip:.0%} of {args.per_class} photos a class; recall in the audit's top {2 * args.flip:.0%} "
          f"(chance {2 * args.flip:.0%})")
    print(f"{'data':7} {'ep':>2} {'variant':36} {'audited':>7} {'flips':>5} {'top k':>5} {'found':>5} {'recall':>7} "
          f"{'flagged':>7} {'flag ok':>7} {'s':>6}")
    for r in results:
        for v, m in r["variants"].items():
            print(f"{r['dataset']:7} {r['epochs']:2d} {v:36} {m['audited']:7d} {m['flipped_audited']:5d} {m['top_k']:5d} "
                  f"{m['found_in_top_k']:5d} {m['recall_top_k']:7.1%} {m.get('flagged', '-'):>7} "
                  f"{m.get('flagged_flipped', '-'):>7} {m['audit_seconds']:6.1f}")
    payload = {
        "command": "python benchmarks/bench_audit.py " + " ".join(sys.argv[1:]),
        "train": f"plantid train --recipe cpu-default train.epochs={'|'.join(map(str, args.epochs))} train.resize_phases=[] "
                 f"data.image_size={args.image_size} " + " ".join(args.set),
        "flip": args.flip, "seed": args.seed, "top_share": 2 * args.flip, "results": results,
    }
    from plantid.fileio import write_json_atomic

    write_json_atomic(args.results, payload)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
