"""Accuracy as a user meets it: plantid given a folder, scored on an outside folder it never saw.

For each shared data set and outer seed S, a fixed share of the photos (`OUTSIDE_SHARE`, chosen by
a salted hash of each file's content, so byte-identical copies fall on one side) becomes the
outside folder; the rest is the inner folder, handed over as a user would hand it over:

* plantid: `plantid train --data inner/ --out RUN` (the default recipe, nothing else), then
  `plantid evaluate RUN --split outside/ --tta default`: outside accuracy without and with the
  default views, beside what the run itself reports (its best val accuracy, its own test split);
* yardstick: `benchmarks/baseline_finetune.py inner/` with the wall time plantid's `train` took
  (a plain timm fine-tune on every inner photo, fixed recipe, no plantid code in training);
* linear-probe: `benchmarks/linear_probe.py inner/` (frozen features + logistic regression).

The two folders are symlink trees under --work (runs/bench-outside/<set>/seed<S>/{inner,outside}).
Every finished cell is written to the results JSON at once (atomically), so an interrupted run
goes on where it stopped; a cell already there is skipped. `--variant NAME --set key=value ...`
trains plantid with overrides as a separate arm (`plantid+NAME`), for levers under study, which
are chosen on the inner folder's own val numbers (docs/decisions.md), never on the outside ones.

    .venv/bin/python benchmarks/bench_outside.py                          # every set, seeds 0 1 2
    .venv/bin/python benchmarks/bench_outside.py --datasets oxford17-flowers --seeds 0
    .venv/bin/python benchmarks/bench_outside.py --table                  # the table of the JSON
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from plantid.records import read_evaluation, read_summary

from cells import (DATASETS, PHOTO_SUFFIXES, REPO, cell_parser, git_commit, load_results, plantid_cmd,
                   run_logged, save_results, summarize)

RESULTS = REPO / "benchmarks" / "results" / "outside.json"
SCRIPTS = REPO / "benchmarks"
SETS = ("an2dl2022-plants", "oxford17-flowers", "plantvillage39-leaves", "fruits10-web")
METHODS = ("plantid", "yardstick", "linear-probe")
# the numbers a cell reports, summarised over the seeds
KEYS = ("outside_acc", "outside_acc_views", "val_acc", "own_test_acc", "wall_seconds", "val_gap")
OUTSIDE_SHARE = 0.2


def is_outside(content_sha256: str, seed: int) -> bool:
    """Whether a photo with this content hash is in outer seed `seed`'s outside folder."""
    key = hashlib.sha256(f"plantid-outside-{seed}:{content_sha256}".encode()).hexdigest()
    return int(key[:12], 16) / 16**12 < OUTSIDE_SHARE


def outer_split(data: Path, seed: int, cell_dir: Path) -> tuple[Path, Path]:
    """The inner and outside symlink folders of `data` for outer seed `seed` (made once)."""
    inner, outside = cell_dir / "inner", cell_dir / "outside"
    done = cell_dir / "outer_split.json"
    if done.is_file():
        return inner, outside
    counts: dict[str, dict[str, int]] = {}
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        for photo in sorted(class_dir.rglob("*")):
            if not photo.is_file() or photo.suffix.lower() not in PHOTO_SUFFIXES:
                continue
            side = "outside" if is_outside(hashlib.sha256(photo.read_bytes()).hexdigest(), seed) else "inner"
            link = cell_dir / side / class_dir.name / photo.relative_to(class_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(photo.resolve())
            counts.setdefault(class_dir.name, {"inner": 0, "outside": 0})[side] += 1
    done.write_text(json.dumps({"seed": seed, "share": OUTSIDE_SHARE, "counts": counts}, indent=1), encoding="utf-8")
    return inner, outside


def run_plantid(inner: Path, outside: Path, cell_dir: Path, method: str, overrides: list[str]) -> dict:
    """Train plantid on `inner` as a user would, score `outside` with and without the default views."""
    run, log = cell_dir / method, cell_dir / f"{method}.log"
    timing = cell_dir / f"{method}.seconds"
    if not (run / "train_summary.json").is_file():
        if (run / "last.ckpt").is_file():
            seconds = run_logged(plantid_cmd("train", "--resume", str(run)), log)
            seconds += float(timing.read_text()) if timing.is_file() else 0.0
        else:
            seconds = run_logged(plantid_cmd("train", "--data", str(inner), "--out", str(run),
                                             "train.progress=false", *overrides), log)
        timing.write_text(f"{seconds:.1f}")
    summary = read_summary(run)
    run_logged(plantid_cmd("evaluate", str(run), "--split", str(outside), "--tta", "default"), log)
    scored = read_evaluation(run, outside.name)  # eval_outside.json
    return {
        "outside_acc": scored.metrics.accuracy,
        "outside_acc_views": scored.tta.metrics.accuracy if scored.tta else None,
        "val_acc": summary.best_val_acc,
        "own_test_acc": summary.test_acc,
        "n_outside": scored.n_images,
        "wall_seconds": float(timing.read_text()),
        "train_seconds": summary.train_seconds,
        "epochs": summary.epochs_run,
        "image_size": summary.image_size,
        "overrides": overrides,
    }


def run_script(script: str, inner: Path, outside: Path, cell_dir: Path, method: str, extra: list[str]) -> dict:
    """Run a plain benchmark script (yardstick or probe) on `inner`, scoring `outside`."""
    out = cell_dir / f"{method}.json"
    if not out.is_file():
        run_logged([sys.executable, str(SCRIPTS / script), str(inner), "--eval", f"outside={outside}",
                    "--out", str(out), *extra], cell_dir / f"{method}.log")
    result = json.loads(out.read_text(encoding="utf-8"))
    return {"outside_acc": result["accuracy"]["outside"], "wall_seconds": result["wall_seconds"],
            "epochs": result.get("epochs"), "image_size": result["image_size"],
            "budget_seconds": result.get("budget_seconds")}


def plantid_seconds(cells: list[dict], cell_dir: Path, dataset: str, seed: int) -> float:
    """plantid's `train` wall time in this cell, the yardstick's budget: from the cell folder, or
    from the results JSON when the folder was made on another machine."""
    timing = cell_dir / "plantid.seconds"
    if timing.is_file():
        return float(timing.read_text())
    for cell in cells:
        if (cell["dataset"], cell["seed"], cell["method"]) == (dataset, seed, "plantid") and not cell.get("superseded"):
            return float(cell["wall_seconds"])
    raise SystemExit(f"{dataset} seed {seed}: run plantid first; the yardstick gets its wall time")


def table(rows: list[dict], plantid_method: str = "plantid") -> str:
    """Markdown, one row per data set: outside accuracy (mean ± std over the seeds, %) of plantid,
    plantid with its default views, the yardstick and the linear probe; wall seconds; plantid's
    val accuracy minus its outside accuracy with views (points)."""
    by_set: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_set.setdefault(r["dataset"], {})[r["method"]] = r

    def pct(row: dict | None, key: str) -> str:
        stat = (row or {}).get(key)
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}" if stat else "–"

    def seconds(row: dict | None) -> str:
        stat = (row or {}).get("wall_seconds")
        return f"{stat['mean']:.0f}" if stat else "–"

    lines = ["| data set | seeds | plantid % | plantid, views % | yardstick % | linear probe % "
             "| plantid s | yardstick s | probe s | val − outside |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for dataset, methods in sorted(by_set.items()):
        ours, yard, probe = methods.get(plantid_method), methods.get("yardstick"), methods.get("linear-probe")
        seeds = ",".join(map(str, (ours or yard or probe or {}).get("seeds", [])))
        gap = (ours or {}).get("val_gap")
        gap_text = f"{100 * gap['mean']:+.1f}" if gap else "–"
        lines.append(f"| {dataset} | {seeds} | {pct(ours, 'outside_acc')} | {pct(ours, 'outside_acc_views')} "
                     f"| {pct(yard, 'outside_acc')} | {pct(probe, 'outside_acc')} | {seconds(ours)} | {seconds(yard)} "
                     f"| {seconds(probe)} | {gap_text} |")
    return "\n".join(lines)


def main() -> None:
    """Run the missing cells one after the other (plantid before the yardstick it times) and print the table."""
    ap = cell_parser(__doc__, work=REPO / "runs" / "bench-outside", out=RESULTS, datasets=list(SETS), arm="plantid")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args()

    plantid_method = f"plantid+{args.variant}" if args.variant else "plantid"
    if args.table:
        print(table(summarize(load_results(args.out)["cells"], KEYS), plantid_method))
        return
    methods = [plantid_method if m == "plantid" else m for m in args.methods]
    for seed in args.seeds:  # seed-major: an interrupted run still covers every set once
        for name in args.datasets:
            cell_dir = args.work / name / f"seed{seed}"
            inner, outside = outer_split(args.root / name, seed, cell_dir)
            for method in methods:
                done = {(c["dataset"], c["seed"], c["method"]) for c in load_results(args.out)["cells"]}
                if (name, seed, method) in done:
                    continue
                print(f"run {name} seed {seed} {method} ...", flush=True)
                if method.startswith("plantid"):
                    scores = run_plantid(inner, outside, cell_dir, method, args.overrides)
                    scores["val_gap"] = scores["val_acc"] - (scores["outside_acc_views"] or scores["outside_acc"])
                elif method == "yardstick":
                    budget = plantid_seconds(load_results(args.out)["cells"], cell_dir, name, seed)
                    scores = run_script("baseline_finetune.py", inner, outside, cell_dir, method,
                                        ["--budget-seconds", f"{budget:.1f}", "--seed", str(seed)])
                else:
                    scores = run_script("linear_probe.py", inner, outside, cell_dir, method, [])
                cell = {"dataset": name, "seed": seed, "method": method, **scores, "commit": git_commit(),
                        "plantid_commit": git_commit("src"), "cpu_count": os.cpu_count(),
                        "load_average": os.getloadavg()[0]}
                results = load_results(args.out)
                results["cells"].append(cell)
                save_results(results, args.out, KEYS)
                print(f"  outside {cell['outside_acc']:.4f}  ({cell['wall_seconds']:.0f} s)", flush=True)
    results = load_results(args.out)
    results["command"] = "python benchmarks/bench_outside.py " + " ".join(sys.argv[1:])
    save_results(results, args.out, KEYS)
    print(table(summarize(results["cells"], KEYS), plantid_method))


if __name__ == "__main__":
    main()
