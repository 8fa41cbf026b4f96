"""A warm start against a fresh one on a folder that grew: how soon does it reach the same val accuracy?

For each data set and seed S, a photo folder of symlinks (under --work) first holds a seeded
`--first` share of each class's photos, and `plantid train --data photos/ --out first` trains on
it (the default recipe, from ImageNet weights). Then the rest of the photos join the same folder,
and two runs train on the grown split:

* warm: `plantid train --data photos/ --from first --out warm`: first's weights, first's split
  grown (every earlier photo stays on its side), the default shorter plan;
* fresh: `plantid train --data warm/split.csv --out fresh`: the same split, from ImageNet weights,
  the recipe's whole plan.

Both score their val photos after each epoch; metrics.csv's `elapsed_s` is the wall time from the
start of training to the end of that epoch. Reported: fresh's best val accuracy (what it delivers)
and its training time; the first epoch at which warm reaches that accuracy, and its elapsed time
as a share of fresh's; the photos of the first split that changed side. A finished run is reused.

    .venv/bin/python benchmarks/bench_warm_start.py --datasets an2dl2022-plants --seeds 0
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from plantid.data.split import read_manifest
from plantid.records import metrics_by_epoch, read_summary
from plantid.runfolder import RunFolder

from cells import (DATASETS, PHOTO_SUFFIXES, REPO, cell_parser, git_commit, markdown_table, plantid_cmd, run_benchmark,
                   run_logged)

RESULTS = REPO / "benchmarks" / "results" / "warm_start.json"
KEYS = ("fresh_val_acc", "warm_val_acc", "time_share_to_fresh_val")


def link_photos(source: Path, photos: Path, share: float, seed: int, rest: bool) -> int:
    """Symlink a seeded `share` of each class's photos of `source` into `photos/<class>/` (with `rest`:
    the other photos); returns how many links were made."""
    rng = random.Random(seed)
    made = 0
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        first = set(rng.sample(range(len(files)), round(share * len(files))))
        for i, photo in enumerate(files):
            if (i in first) != rest:
                link = photos / class_dir.name / photo.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(photo.resolve())
                    made += 1
    return made


def train(run: Path, args: list[str], log: Path) -> None:
    """`plantid train ... --out run` unless the run finished before (a run cut short starts again)."""
    if read_summary(run) is None:
        shutil.rmtree(run, ignore_errors=True)
        run_logged(plantid_cmd("train", *args, "--out", str(run), "train.progress=false"), log)


def val_curve(run: Path) -> list[tuple[int, float, float]]:
    """(epoch, val accuracy, elapsed seconds at its end) for each epoch of the run."""
    series = metrics_by_epoch(RunFolder(run).metrics)
    return [(epoch, acc, series["elapsed_s"][epoch]) for epoch, acc in sorted(series["val_acc"].items())
            if epoch in series.get("elapsed_s", {})]


def run_cell(dataset: str, seed: int, first_share: float, work: Path, overrides: list[str]) -> dict:
    """First, warm and fresh runs of one data set and seed; the warm run's time to fresh's val accuracy."""
    cell_dir = work / dataset / f"seed{seed}"
    photos = cell_dir / "photos"
    source = DATASETS / dataset
    if read_summary(cell_dir / "first") is None:
        shutil.rmtree(photos, ignore_errors=True)
        link_photos(source, photos, first_share, seed, rest=False)
    train(cell_dir / "first", ["--data", str(photos), *overrides], cell_dir / "first.log")
    added = link_photos(source, photos, first_share, seed, rest=True)
    train(cell_dir / "warm", ["--data", str(photos), "--from", str(cell_dir / "first"), *overrides],
          cell_dir / "warm.log")
    train(cell_dir / "fresh", ["--data", str(RunFolder(cell_dir / "warm").manifest), *overrides],
          cell_dir / "fresh.log")

    before = {r.path: r.split for r in read_manifest(RunFolder(cell_dir / "first").manifest).rows}
    after = {r.path: r.split for r in read_manifest(RunFolder(cell_dir / "warm").manifest).rows}
    fresh, warm = read_summary(cell_dir / "fresh"), read_summary(cell_dir / "warm")
    fresh_curve, warm_curve = val_curve(cell_dir / "fresh"), val_curve(cell_dir / "warm")
    fresh_seconds = fresh_curve[-1][2]
    reached = next(((e, acc, s) for e, acc, s in warm_curve if acc >= fresh.best_val_acc), None)
    return {
        "dataset": dataset, "seed": seed, "method": "warm-start", "first_share": first_share,
        "first_photos": len(before), "all_photos": len(after), "added_photos": added or len(after) - len(before),
        "moved": sum(after.get(p) != side for p, side in before.items()),
        "fresh_val_acc": fresh.best_val_acc, "fresh_epochs": fresh.epochs_run, "fresh_seconds": fresh_seconds,
        "fresh_train_seconds": fresh.train_seconds,
        "warm_val_acc": warm.best_val_acc, "warm_epochs": warm.epochs_run, "warm_seconds": warm_curve[-1][2],
        "warm_train_seconds": warm.train_seconds,
        "warm_epoch_reaching_fresh_val": None if reached is None else reached[0] + 1,
        "warm_seconds_to_fresh_val": None if reached is None else reached[2],
        "time_share_to_fresh_val": None if reached is None else reached[2] / fresh_seconds,
        "fresh_curve": fresh_curve, "warm_curve": warm_curve, "overrides": overrides,
        "commit": git_commit(), "plantid_commit": git_commit("src"),
    }


def table(cells: list[dict]) -> str:
    """Markdown: per cell, the fresh run's val and time, and when the warm run reached it."""
    rows = []
    for c in cells:
        reach = "never" if c["warm_epoch_reaching_fresh_val"] is None else \
            f"epoch {c['warm_epoch_reaching_fresh_val']}, {c['warm_seconds_to_fresh_val']:.0f} s"
        rows.append([c["dataset"], str(c["seed"]), f"{c['first_photos']} + {c['all_photos'] - c['first_photos']}",
                     str(c["moved"]), f"{100 * c['fresh_val_acc']:.1f}", f"{c['fresh_seconds']:.0f}",
                     f"{100 * c['warm_val_acc']:.1f}", f"{c['warm_seconds']:.0f}", reach,
                     "–" if c["time_share_to_fresh_val"] is None else f"{c['time_share_to_fresh_val']:.0%}"])
    return markdown_table(["data set", "seed", "photos (first + added)", "moved", "fresh val %", "fresh s", "warm val %",
                           "warm s", "warm reaches fresh val", "share of fresh's time"], rows)


def main() -> None:
    """Run the missing cells one after the other and print the table."""
    ap = cell_parser(__doc__, work=REPO / "runs" / "bench-warm-start", out=RESULTS,
                     datasets=["an2dl2022-plants"], arm="warm-start")
    ap.add_argument("--first", type=float, default=0.7, help="share of each class's photos in the first folder")
    args = ap.parse_args()
    run_benchmark(args, KEYS, lambda name, seed: run_cell(name, seed, args.first, args.work, args.overrides), table)


if __name__ == "__main__":
    main()
