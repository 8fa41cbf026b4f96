"""Where `plantid train` holds its memory: resident memory sampled through a run, tied to its log.

    .venv/bin/python benchmarks/bench_memory.py --data FOLDER [--set key=value ...] [--label NAME]

Runs `plantid train --data FOLDER --out WORK/run` (the default recipe, plus any `--set`
overrides) and samples the process's resident memory (VmRSS, every 0.2 s). Each log line is
stamped with the resident memory when it appeared, so the table says what the run was doing when
its memory grew: the import, the scan, each epoch, the trust fit, the test evaluation. Prints the
peak, the run's own `peak memory` (getrusage), and the growth between log lines above 50 MB;
writes one cell per `--label` to benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from cells import REPO, git_commit, plantid_cmd

RESULTS = REPO / "benchmarks" / "results" / "memory.json"
SAMPLE_SECONDS = 0.2
GROWTH_MB = 50.0


def resident_mb(pid: int) -> float | None:
    """VmRSS of a live process in MB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def timeline(cmd: list[str]) -> tuple[list[tuple[float, float]], list[tuple[float, str]], int]:
    """Run `cmd`; its (seconds, MB) samples, its (seconds, log line) lines and its exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        mb = resident_mb(proc.pid)
        if mb is not None:
            samples.append((time.perf_counter() - started, mb))
        time.sleep(SAMPLE_SECONDS)
    reader.join(timeout=5)
    return samples, lines, proc.returncode


def at(samples: list[tuple[float, float]], t: float) -> float:
    """The largest resident memory sampled up to time t (MB)."""
    return max((mb for s, mb in samples if s <= t), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a photo folder, one subfolder per species")
    parser.add_argument("--set", action="append", default=[], help="a recipe setting, key=value (repeatable)")
    parser.add_argument("--label", default="default")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-memory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    run = args.work / args.label
    shutil.rmtree(run, ignore_errors=True)
    cmd = plantid_cmd("train", "--data", str(args.data), "--out", str(run), "train.progress=false", *args.set)
    samples, lines, code = timeline(cmd)
    if code != 0:
        raise SystemExit("\n".join(line for _, line in lines[-20:]) + f"\n{' '.join(cmd)} failed (exit {code})")
    peak = max(mb for _, mb in samples)
    print(f"{'s':>7} {'MB':>7} {'+MB':>6}  log line (growth above {GROWTH_MB:.0f} MB since the line before)")
    previous = 0.0
    steps = []
    for t, line in lines:
        now = at(samples, t)
        if now - previous >= GROWTH_MB:
            steps.append({"seconds": round(t, 1), "mb": round(now), "growth_mb": round(now - previous), "line": line})
            print(f"{t:7.1f} {now:7.0f} {now - previous:+6.0f}  {line[:110]}")
        previous = max(previous, now)
    every = max(1.0, (samples[-1][0] if samples else 0.0) / 30)  # about 30 points, largest sample in each
    curve = [(round(t0, 1), round(max((mb for t, mb in samples if t0 <= t < t0 + every), default=0.0)))
             for t0 in [k * every for k in range(int((samples[-1][0] if samples else 0.0) / every) + 1)]]
    print("resident MB over time: " + " ".join(f"{t:.0f}s:{mb}" for t, mb in curve))
    reported = next((line for _, line in reversed(lines) if "peak memory" in line), "")
    print(f"peak {peak:.0f} MB (sampled); the run says: {reported.strip()[:160]}")
    cell = {"label": args.label, "data": str(args.data), "settings": args.set, "peak_mb": round(peak),
            "samples": len(samples), "seconds": round(samples[-1][0], 1) if samples else None, "growth": steps,
            "curve": curve,
            "train_summary_line": reported.strip(), "commit": git_commit(), "date": time.strftime("%Y-%m-%d")}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"cells": []}
    results["cells"] = [c for c in results["cells"] if c["label"] != args.label] + [cell]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
