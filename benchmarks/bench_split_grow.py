"""A split that grows, on real photo folders: split 70% of each class, then the whole folder.

    .venv/bin/python benchmarks/bench_split_grow.py [--data DIR ...] [--seeds 0 1 2] [--json-out FILE]

Each folder is scanned once (near duplicates included). For each seed, a seeded 70% of every
class's photos are split as a first folder would be; then the whole folder is split twice: grown
from that first manifest (`grow_split`, what `plantid split --out DIR` does when DIR holds a
split.csv), and afresh (`make_split`, what it did before). The table counts the photos of the
first split that changed side, the former train photos that reached test, and how far each
class's split sizes end from the quotas.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from plantid.data.scan import ScanReport, scan_folder  # noqa: E402
from plantid.data.split import Manifest, _targets, grow_split, make_split  # noqa: E402
from plantid.fileio import write_json_atomic  # noqa: E402

DATASETS = REPO / ".." / "shared" / "datasets"


def subset(report: ScanReport, share: float, seed: int) -> ScanReport:
    """The report restricted to a seeded `share` of each class's photos (groups cut to their members left)."""
    rng = random.Random(seed)
    by_class: dict[str, list] = defaultdict(list)
    for entry in report.entries:
        by_class[entry.label].append(entry)
    kept = [e for label in sorted(by_class) for e in rng.sample(by_class[label], round(len(by_class[label]) * share))]
    names = {e.relpath for e in kept}
    groups = [[p for p in g if p in names] for g in report.near_duplicate_groups]
    return dataclasses.replace(report, entries=sorted(kept, key=lambda e: (e.label, e.relpath)),
                               near_duplicate_groups=[g for g in groups if len(g) > 1])


def measure(report: ScanReport, seed: int, share: float = 0.7) -> dict:
    """Moved photos and quota gaps for growing against re-splitting, for one seed."""
    first = make_split(subset(report, share, seed), seed=seed)
    manifest = Manifest(path=Path("split.csv"), rows=first, classes=sorted({r.label for r in first}))
    grown, growth = grow_split(report, manifest, seed=seed)
    fresh = make_split(report, seed=seed)
    before = {r.path: r.split for r in first}
    out = {"seed": seed, "first": len(first), "all": len(grown), "added": growth.added}
    for name, rows in (("grown", grown), ("fresh", fresh)):
        side = {r.path: r.split for r in rows}
        counts = Counter((r.label, r.split) for r in rows)
        per_class = Counter(r.label for r in rows)
        gap = max(abs(counts[(label, s)] - t) for label, n in per_class.items()
                  for s, t in _targets(n, 0.15, 0.15).items())
        out[name] = {"moved": sum(1 for p, s in before.items() if side[p] != s),
                     "train_to_test": sum(1 for p, s in before.items() if s == "train" and side[p] == "test"),
                     "largest_quota_gap": gap}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[DATASETS / "an2dl2022-plants", DATASETS / "oxford17-flowers"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "split_grow.json")
    args = parser.parse_args(argv)
    console = Console()
    table = Table(title="70% of each class split, then the whole folder: grown vs split afresh")
    for column in ("folder", "seed", "first split", "whole folder", "moved (grown)", "moved (afresh)",
                   "train -> test (grown)", "train -> test (afresh)", "largest quota gap (grown / afresh)"):
        table.add_column(column, justify="right" if column not in ("folder",) else "left")
    results = []
    for folder in args.data:
        report = scan_folder(folder)
        for seed in args.seeds:
            r = measure(report, seed)
            results.append({"folder": folder.name, **r})
            table.add_row(folder.name, str(seed), str(r["first"]), str(r["all"]), str(r["grown"]["moved"]),
                          str(r["fresh"]["moved"]), str(r["grown"]["train_to_test"]), str(r["fresh"]["train_to_test"]),
                          f"{r['grown']['largest_quota_gap']} / {r['fresh']['largest_quota_gap']}")
    console.print(table)
    write_json_atomic(args.json_out, {"command": " ".join(["benchmarks/bench_split_grow.py", *(argv or sys.argv[1:])]),
                                      "share": 0.7, "results": results})
    console.print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
