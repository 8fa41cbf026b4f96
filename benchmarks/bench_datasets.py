"""plantid's default against a plain fine-tune on every shared data set, over several split seeds.

For each data set in ../shared/datasets/ (relative to the repo root) and each split seed, on the
same stratified split (`plantid split --seed S`, 15% val, 15% test):

* cpu-default: `plantid train --data split.csv --recipe cpu-default`, then
  `plantid evaluate RUN --split val --tta default` and `--split test --tta default`: val and test
  accuracy without and with the run's default views, and the training seconds;
* baseline: `benchmarks/baseline_finetune.py split.csv` (the same backbone and weights, plain
  PyTorch + timm): val and test accuracy and the training seconds.

It prints a table (mean and spread over the seeds that ran) and writes
benchmarks/results/datasets.json atomically after every cell. Runs are resumable: a (data set,
seed, method) cell already in the JSON is skipped, a training that was interrupted continues from
its last.ckpt, and run folders live under --work (default runs/bench/<data set>/seed<S>/).

    .venv/bin/python benchmarks/bench_datasets.py                                   # everything
    .venv/bin/python benchmarks/bench_datasets.py --datasets oxford17-flowers --seeds 0 --only baseline
    .venv/bin/python benchmarks/bench_datasets.py --table                           # print the JSON's table

Selection hygiene: defaults are chosen on the val columns; the test columns are read to report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from plantid.records import read_evaluation, read_summary, read_trust

from cells import (DATASETS, REPO, cell_parser, git_commit, load_results, plantid_cmd, run_logged,
                   save_results, summarize)

RESULTS = REPO / "benchmarks" / "results" / "datasets.json"
BASELINE = REPO / "benchmarks" / "baseline_finetune.py"
METHODS = ("cpu-default", "baseline")
# the numbers a cell reports, summarised over the seeds
KEYS = ("val_acc", "val_acc_views", "test_acc", "test_acc_views", "val_ece_crossfit", "test_ece", "train_seconds")


def plantid(*args: str, log: Path) -> None:
    """Run one `plantid` command with its output appended to `log`; exit with the log's tail on failure."""
    run_logged(plantid_cmd(*args), log)


def split_for(data: Path, seed: int, cell_dir: Path) -> Path:
    """The split.csv of `data` for split seed `seed` (made once with `plantid split`)."""
    manifest = cell_dir / "split.csv"
    if not manifest.is_file():
        plantid("split", str(data), "--out", str(cell_dir), "--seed", str(seed), log=cell_dir / "split.log")
    return manifest


def run_cpu_default(manifest: Path, cell_dir: Path, overrides: list[str], method: str = "cpu-default",
                    splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Train (or resume, or reuse) cpu-default on `manifest`, evaluate `splits` with the default views.

    `method` names the run folder: "cpu-default", or "cpu-default+VARIANT" for an A/B arm with overrides.
    A decision still being made evaluates ("val",) only, so its test split stays unread.
    """
    run = cell_dir / method
    log = cell_dir / f"{method}.log"
    if not (run / "train_summary.json").is_file():
        if (run / "last.ckpt").is_file():
            plantid("train", "--resume", str(run), log=log)
        else:
            unread = [] if "test" in splits else ["train.score_test=false"]  # not even in train's summary
            plantid("train", "--data", str(manifest), "--recipe", "cpu-default", "--out", str(run),
                    "train.progress=false", *unread, *overrides, log=log)
    summary = read_summary(run)
    scores = {}
    for split in ("val", "test"):
        if split not in splits:
            continue
        plantid("evaluate", str(run), "--split", split, "--tta", "default", log=log)
        result = read_evaluation(run, split)
        scores[f"{split}_acc"] = result.metrics.accuracy
        scores[f"{split}_acc_views"] = result.tta.metrics.accuracy if result.tta else None
        if result.trust:  # calibration error after the run's temperature (fitted on val)
            scores[f"{split}_ece"] = result.trust.calibration.ece_after
    trust = read_trust(run)
    scores["val_ece_crossfit"] = trust.measured.get("val_ece_crossfit") if trust else None
    return {
        **scores,
        "train_seconds": summary.train_seconds,
        "epochs": summary.epochs_run,
        "image_size": summary.image_size,
        "train_image_sizes": summary.train_image_sizes,
        "run": str(run),
        "overrides": overrides,
    }


def run_baseline(manifest: Path, cell_dir: Path, extra: list[str]) -> dict:
    """Run baseline_finetune.py on `manifest` (or reuse its baseline.json)."""
    out = cell_dir / "baseline.json"
    if not out.is_file():
        fixed = [] if {"--epochs", "--budget-seconds"} & set(extra) else ["--epochs", "6"]
        run_logged([sys.executable, str(BASELINE), str(manifest), "--out", str(out), *fixed, *extra],
                   cell_dir / "baseline.log")
    result = json.loads(out.read_text(encoding="utf-8"))
    return {
        "val_acc": result["accuracy"]["val"],
        "test_acc": result["accuracy"]["test"],
        "val_acc_views": None,
        "test_acc_views": None,
        "train_seconds": result["train_seconds"],
        "epochs": result["epochs"],
        "image_size": result["image_size"],
        "run": str(out),
        "overrides": extra,
    }


def table(rows: list[dict]) -> str:
    """Markdown table of the summary: mean ± std in percent (seconds for time)."""

    def cell(stat: dict | None, scale: float = 100.0, digits: int = 1) -> str:
        if not stat:
            return "-"
        return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"

    lines = ["| data set | method | seeds | val % | val % (views) | test % | test % (views) | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['method']} | {','.join(map(str, r['seeds']))} | {cell(r.get('val_acc'))} | "
                     f"{cell(r.get('val_acc_views'))} | {cell(r.get('test_acc'))} | {cell(r.get('test_acc_views'))} | "
                     f"{cell(r.get('train_seconds'), 1.0, 0)} |")
    return "\n".join(lines)


def main() -> None:
    """Run the missing cells, one after the other, and print the table."""
    ap = cell_parser(__doc__, work=REPO / "runs" / "bench", out=RESULTS, datasets=None, arm="cpu-default")
    ap.add_argument("--only", choices=METHODS, help="run one method only")
    ap.add_argument("--baseline-args", default="", help="extra baseline_finetune.py arguments, e.g. '--epochs 8'")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"],
                    help="splits to score; `--splits val` while a decision is open keeps test unread")
    args = ap.parse_args()

    results = load_results(args.out)
    if args.table:
        print(table(summarize(results["cells"], KEYS)))
        return
    names = args.datasets or sorted(p.name for p in args.root.iterdir() if p.is_dir())
    methods = [args.only] if args.only else list(METHODS)
    if args.variant:
        methods = [f"cpu-default+{args.variant}" if m == "cpu-default" else m for m in methods]
    done = {(c["dataset"], c["seed"], c["method"]) for c in results["cells"]}
    for name in names:
        data = args.root / name
        if not data.is_dir():
            raise SystemExit(f"no data set {data}")
        for seed in args.seeds:
            for method in methods:
                if (name, seed, method) in done:
                    print(f"skip {name} seed {seed} {method}: already in {args.out}")
                    continue
                cell_dir = args.work / name / f"seed{seed}"
                manifest = split_for(data, seed, cell_dir)
                print(f"run {name} seed {seed} {method} ...", flush=True)
                started = time.perf_counter()
                if method.startswith("cpu-default"):
                    scores = run_cpu_default(manifest, cell_dir, args.overrides, method, tuple(args.splits))
                else:
                    scores = run_baseline(manifest, cell_dir, args.baseline_args.split())
                cell = {"dataset": name, "seed": seed, "method": method, **scores,
                        "commit": git_commit(), "wall_seconds": round(time.perf_counter() - started, 1),
                        "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        "load_average": os.getloadavg()[0]}
                results = load_results(args.out)  # another invocation may have added cells meanwhile
                results["cells"].append(cell)
                save_results(results, args.out, KEYS)
                print(f"  val {cell['val_acc']:.4f}  test {cell.get('test_acc', float('nan')):.4f}  "
                      f"train {cell['train_seconds']:.0f} s", flush=True)
    command = "python benchmarks/bench_datasets.py " + " ".join(sys.argv[1:])
    results = load_results(args.out)
    results.setdefault("commands", []).append(command)
    save_results(results, args.out, KEYS)
    print(table(summarize(results["cells"], KEYS)))


if __name__ == "__main__":
    main()
