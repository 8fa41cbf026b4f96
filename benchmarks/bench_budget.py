"""Does `plantid train` keep to its time budget, on an idle machine and beside another training?

Trains the default recipe on --data with `train.budget_minutes=B` three times: alone, then twice at
once (two `plantid train` processes started together on the same cores, the second a different
seed, so each finds a busy machine). For each run: the planned epochs, the training seconds
(probe and epochs: what the budget covers) against the budget, the whole command's wall time, and
whether the plan ended at the epoch cap rather than the budget. Writes
benchmarks/results/budget.json and prints a table.

    .venv/bin/python benchmarks/bench_budget.py --data ../shared/datasets/an2dl2022-plants --minutes 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
    planned = log.read_text(encoding="utf-8", errors="replace")
    return {"condition": condition, "run": run.name, "budget_seconds": 60 * minutes,
            "train_seconds": summary.train_seconds, "wall_seconds": round(wall, 1),
            "used_share": round(summary.train_seconds / (60 * minutes), 4), "epochs": summary.epochs_run,
            "epoch_cap_ended_plan": "is the most plantid trains" in planned}


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
    print(f"{'condition':26} {'run':6} {'budget s':>8} {'train s':>8} {'used':>6} {'wall s':>7} {'epochs':>6} cap")
    for c in cells:
        print(f"{c['condition']:26} {c['run']:6} {c['budget_seconds']:8.0f} {c['train_seconds']:8.1f} "
              f"{c['used_share']:6.0%} {c['wall_seconds']:7.1f} {c['epochs']:6d} {c['epoch_cap_ended_plan']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
