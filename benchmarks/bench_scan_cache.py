"""Time the data layer on a real photo folder: scan (full decode + sha256) and cold cache builds.

    .venv/bin/python benchmarks/bench_scan_cache.py [--data DIR] [--size 96 224] [--json-out FILE]

Each cache build uses a fresh temporary cache folder (cold: every photo decoded and resized), then
a second call measures the warm path (sidecar + CRC check, no decoding). The operating system's
file cache is not dropped, so "cold" means cold for plantid, not for the disk. CPU seconds (all
threads) are printed beside wall time because wall time depends on what else the machine runs;
the 1-minute load average is saved in the JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from plantid.data.cache import build_cache  # noqa: E402
from plantid.data.scan import default_workers, scan_folder  # noqa: E402
from plantid.data.split import make_split  # noqa: E402
from plantid.fileio import write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "datasets" / "an2dl2022-plants")
    parser.add_argument("--size", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "scan_cache.json")
    args = parser.parse_args(argv)
    console = Console()

    stages: list[dict] = []

    clock: dict[str, float] = {}

    def start() -> None:
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    def record(stage: str, images: int) -> None:
        seconds = time.perf_counter() - clock["wall"]
        cpu = time.process_time() - clock["cpu"]
        stages.append({"stage": stage, "seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4), "images": images,
                       "images_per_s": round(images / seconds, 1) if seconds > 0 else None})

    start()
    report = scan_folder(args.data)
    record("scan (decode + sha256)", len(report.entries) + len(report.bad))
    start()
    rows = make_split(report)
    record("split", len(rows))
    paths = [r.path for r in rows]

    with tempfile.TemporaryDirectory(prefix="plantid-bench-") as tmp:
        for size in args.size:
            cache_dir = Path(tmp) / f"cache{size}"
            start()
            arr = build_cache(paths, size, cache_dir)
            record(f"cache build {size}px (cold)", arr.shape[0])
            del arr
            start()
            arr = build_cache(paths, size, cache_dir)
            record(f"cache reuse {size}px (warm, CRC check)", arr.shape[0])
            del arr

    table = Table(title=f"plantid data layer on {args.data.resolve()}")
    for col, justify in (("stage", "left"), ("seconds", "right"), ("CPU s", "right"), ("images", "right"),
                         ("images/s", "right")):
        table.add_column(col, justify=justify)
    for s in stages:
        table.add_row(s["stage"], f"{s['seconds']:.3f}", f"{s['cpu_seconds']:.2f}", str(s["images"]),
                      f"{s['images_per_s']:.0f}")
    console.print(table)
    counts = report.class_counts()
    console.print(f"classes: {len(report.classes)}  usable: {len(report.entries)}  bad: {len(report.bad)}  "
                  f"duplicate groups: {len(report.duplicate_groups)}  conflicts: {len(report.conflicts)}")
    console.print("per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    first_cache = next(s for s in stages if s["stage"].startswith("cache build"))
    scan_plus_cache = stages[0]["seconds"] + first_cache["seconds"]
    console.print(f"scan + first cache build: {scan_plus_cache:.2f} s (goal <= 10 s)")

    result = {
        "data": str(args.data.resolve()),
        "stages": stages,
        "scan_plus_first_cache_s": round(scan_plus_cache, 3),
        "counts": {
            "classes": len(report.classes),
            "usable": len(report.entries),
            "bad": len(report.bad),
            "duplicate_groups": len(report.duplicate_groups),
            "conflicts": len(report.conflicts),
            "per_class": counts,
        },
        "load_average_1min": os.getloadavg()[0],
        "machine": {"cpus": os.cpu_count(), "threads": default_workers(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    write_json_atomic(args.json_out, result)
    console.print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
