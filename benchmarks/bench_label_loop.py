"""The review loop on deliberately wrong labels: how much of the accuracy lost to them comes back?

For each shared data set and outer seed S, the inner and outside folders of the outside benchmark
(`bench_outside.outer_split`: the outside folder is never trained on, nor audited). Then, as a
user would run it:

1. clean: `plantid train --data inner/`, scored on the outside folder;
2. flipped: a copy of the inner folder (symlinks) with a seeded `--flip` share of its photos moved
   into another class folder, trained and scored the same way;
3. corrected: `plantid audit` on the flipped run, one review pass that accepts the audit's
   suggested class for its first 2 x flip of the audited photos (the corrections file the review
   page writes, `plantid.curate.corrections`), `plantid apply RUN --to flipped/`, and a fresh
   `plantid train` on the corrected folder, scored the same way.

Recovered share = (corrected - flipped) / (clean - flipped), on the outside photos with the
default views. Every cell is written to the JSON when it is done; a finished step is not run twice.

    .venv/bin/python benchmarks/bench_label_loop.py --datasets an2dl2022-plants plantvillage39-leaves --seed 0
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

from plantid.curate.corrections import append_decision, read_decisions
from plantid.runfolder import RunFolder

from bench_outside import outer_split, run_plantid
from cells import (DATASETS, PHOTO_SUFFIXES, REPO, cell_parser, git_commit, markdown_table, plantid_cmd, run_benchmark,
                   run_logged)

RESULTS = REPO / "benchmarks" / "results" / "label_loop.json"
KEYS = ("clean_acc_views", "flipped_acc_views", "corrected_acc_views", "recovered_share")


def flipped_copy(inner: Path, out: Path, flip: float, seed: int) -> dict[str, str]:
    """A symlink copy of `inner` at `out` with a seeded `flip` share of the photos in a wrong class
    folder (made once). Returns {path of each moved link: its true class}."""
    rng = random.Random(seed)
    photos = sorted(p for p in inner.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    classes = sorted(p.name for p in inner.iterdir() if p.is_dir())
    moved = set(rng.sample(range(len(photos)), round(flip * len(photos))))
    flips: dict[str, str] = {}
    done = out.parent / f"{out.name}.flips.csv"
    if done.is_file():
        with done.open(encoding="utf-8", newline="") as fh:
            return {row["path"]: row["true"] for row in csv.DictReader(fh)}
    shutil.rmtree(out, ignore_errors=True)  # a copy cut short is made again
    for i, photo in enumerate(photos):
        true = photo.relative_to(inner).parts[0]
        given = rng.choice([c for c in classes if c != true]) if i in moved else true
        link = out / given / photo.name
        if link.exists() or link.is_symlink():  # the same file name in the other class: keep both
            link = link.with_name(f"{true}-{photo.name}")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(photo.resolve())
        if i in moved:
            flips[str(link)] = true
    with done.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true"])
        writer.writerows(sorted(flips.items()))
    return flips


def accept_audit(run: Path, share: float) -> list[dict[str, str]]:
    """Run `plantid audit` and record one review pass that relabels the first `share` of the audited
    photos to the audit's suggested class; the audit rows it accepted. A run that already holds
    decisions keeps them (the step is not repeated)."""
    if not RunFolder(run).audit_csv.is_file():
        run_logged(plantid_cmd("audit", str(run)), run.parent / f"{run.name}.log")
    with RunFolder(run).audit_csv.open(encoding="utf-8", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["rank"]))
    top = [r for r in rows[:round(share * len(rows))] if r["suggested"] != r["given"]]
    if not read_decisions(run):
        for row in top:
            append_decision(run, row["path"], "relabel", label=row["suggested"], given=row["given"], source="audit")
    return top


def run_cell(dataset: str, seed: int, flip: float, work: Path, overrides: list[str]) -> dict:
    """Clean, flipped and corrected runs of one data set and outer seed, scored on its outside folder."""
    cell_dir = work / dataset / f"seed{seed}"
    inner, outside = outer_split(DATASETS / dataset, seed, cell_dir)
    photos = cell_dir / "photos-flipped"
    flips = flipped_copy(inner, photos, flip, seed)
    scores = {"clean": run_plantid(inner, outside, cell_dir, "clean", overrides)}
    scores["flipped"] = run_plantid(photos, outside, cell_dir, "flipped", overrides)
    accepted = accept_audit(cell_dir / "flipped", 2 * flip)
    run_logged(plantid_cmd("apply", str(cell_dir / "flipped"), "--to", str(photos)), cell_dir / "apply.log")
    scores["corrected"] = run_plantid(photos, outside, cell_dir, "corrected", overrides)

    fixed = sum(r["path"] in flips and flips[r["path"]] == r["suggested"] for r in accepted)
    moved_wrong = sum(r["path"] in flips and flips[r["path"]] != r["suggested"] for r in accepted)
    broken = sum(r["path"] not in flips for r in accepted)
    acc = {stage: s["outside_acc_views"] or s["outside_acc"] for stage, s in scores.items()}
    lost = acc["clean"] - acc["flipped"]
    return {
        "dataset": dataset, "seed": seed, "method": "loop", "flip": flip, "photos": sum(1 for _ in photos.rglob("*") if _.is_symlink()),
        "flipped": len(flips), "accepted": len(accepted), "flips_fixed": fixed, "flips_moved_to_another_wrong_class": moved_wrong,
        "right_labels_changed": broken,
        **{f"{stage}_acc": s["outside_acc"] for stage, s in scores.items()},
        **{f"{stage}_acc_views": s["outside_acc_views"] for stage, s in scores.items()},
        **{f"{stage}_seconds": s["wall_seconds"] for stage, s in scores.items()},
        "recovered_share": (acc["corrected"] - acc["flipped"]) / lost if lost > 0 else None,
        "n_outside": scores["clean"]["n_outside"], "overrides": overrides,
        "commit": git_commit(), "plantid_commit": git_commit("src"),
    }


def table(cells: list[dict]) -> str:
    """Markdown: per cell, outside accuracy (default views) clean / flipped / corrected and the share recovered."""
    rows = []
    for c in cells:
        pct = {k: 100 * (c[f"{k}_acc_views"] or c[f"{k}_acc"]) for k in ("clean", "flipped", "corrected")}
        rows.append([c["dataset"], str(c["seed"]), str(c["photos"]), str(c["flipped"]), str(c["accepted"]),
                     str(c["flips_fixed"]), str(c["right_labels_changed"]), f"{pct['clean']:.1f}",
                     f"{pct['flipped']:.1f}", f"{pct['corrected']:.1f}",
                     "–" if c["recovered_share"] is None else f"{c['recovered_share']:.0%}"])
    return markdown_table(["data set", "seed", "photos", "flipped", "accepted", "flips fixed", "right labels changed",
                           "clean %", "flipped %", "corrected %", "recovered"], rows)


def main() -> None:
    """Run the missing cells one after the other and print the table."""
    ap = cell_parser(__doc__, work=REPO / "runs" / "bench-label-loop", out=RESULTS,
                     datasets=["an2dl2022-plants", "plantvillage39-leaves"], arm="loop")
    ap.add_argument("--flip", type=float, default=0.05, help="share of the inner photos given a wrong class")
    args = ap.parse_args()
    run_benchmark(args, KEYS, lambda name, seed: run_cell(name, seed, args.flip, args.work, args.overrides), table)


if __name__ == "__main__":
    main()
