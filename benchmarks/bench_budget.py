"""Does `plantid train` keep to its time budget, on an idle machine and beside another training?

Trains the default recipe on --data with `train.budget_minutes=B` three times: alone, then twice at
once (two `plantid train` processes started together on the same cores, the second a different
seed, so each finds a busy machine). For each run: the planned epochs, the probe's and the
epochs' seconds (what the budget covers) against the budget, the whole command's wall time,
whether the plan ended at the epoch cap rather than the budget, and whether the run stopped
early to keep its budget, whether it re-planned its remaining epochs, and its val accuracy. Writes
benchmarks/results/budget.json and prints a table.

    .venv/bin/python benchmarks/bench_budget.py --data ../shared/datasets/an2dl2022-plants --minutes 3
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from plantid.records import read_summary

from cells import REPO, git_commit, plantid_cmd, write_json

RESULTS = REPO / "benchmarks" / "results" / "budget.json"


def start(data: Path, run: Path, minutes: float, seed: int, log: Path) -> tuple[subprocess.Popen, float]:
    """Start one training; the process and its start time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = plantid_cmd("train", "--data", str(data), "--out", str(run), f"train.budget_minutes={minutes:g}",
                      f"train.seed={seed}", "train.progress=false")
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), time.perf_counter()


def cell(run: Path, minutes: float, wall: float, condition: str, log: Path) -> dict:
    """One run's numbers against its budget (exits naming the log when the run did not finish)."""
    summary = read_summary(run)
    if summary is None:
        sys.exit(f"{run} did not finish; see {log}")
    printed = log.read_text(encoding="utf-8", errors="replace")
    plan = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]
    probe = float(re.search(r"probe (\d+) s", plan["planned"]).group(1))  # whole seconds, as the plan notes them
    return {"condition": condition, "run": run.name, "budget_seconds": 60 * minutes, "probe_seconds": probe,
            "train_seconds": summary.train_seconds, "wall_seconds": round(wall, 1),
            "used_share": round((probe + summary.train_seconds) / (60 * minutes), 4),
            "epochs": summary.epochs_run, "planned_epochs": plan["epochs"],
            "best_val_acc": summary.best_val_acc,
            "epoch_cap_ended_plan": "is the most plantid trains" in printed,
            "replanned": "re-planned to the" in printed,
            "stopped_for_budget": "to stay inside the" in printed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-budget")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    cells = []
    for old in ("alone", "busy0", "busy1"):
        shutil.rmtree(args.work / old, ignore_errors=True)
    proc, started = start(args.data, args.work / "alone", args.minutes, 0, args.work / "alone.log")
    proc.wait()
    cells.append(cell(args.work / "alone", args.minutes, time.perf_counter() - started, "idle", args.work / "alone.log"))
    pair = [start(args.data, args.work / f"busy{i}", args.minutes, i, args.work / f"busy{i}.log") for i in (0, 1)]
    for (proc, began), i in zip(pair, (0, 1)):
        proc.wait()
        cells.append(cell(args.work / f"busy{i}", args.minutes, time.perf_counter() - began, "beside another training",
                          args.work / f"busy{i}.log"))
    write_json({"command": "python benchmarks/bench_budget.py " + " ".join(sys.argv[1:]), "data": str(args.data),
                "commit": git_commit(), "cells": cells}, args.out)
    print(f"{'condition':26} {'run':6} {'budget s':>8} {'probe s':>7} {'train s':>8} {'used':>6} {'wall s':>7} "
          f"{'epochs':>9} {'val':>6} cap   re-planned stopped")
    for c in cells:
        print(f"{c['condition']:26} {c['run']:6} {c['budget_seconds']:8.0f} {c['probe_seconds']:7.0f} "
              f"{c['train_seconds']:8.1f} {c['used_share']:6.0%} {c['wall_seconds']:7.1f} "
              f"{c['epochs']:4d} of {c['planned_epochs']:<2d} {c['best_val_acc']:6.1%} {c['epoch_cap_ended_plan']!s:5} "
              f"{c['replanned']!s:10} {c['stopped_for_budget']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
