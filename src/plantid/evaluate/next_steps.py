"""What to do next about each weak class: the evidence a run already holds, turned into advice.

For every weak class of an evaluation (plantid.evaluate.report.weak_classes) it gathers

* its confusions: the classes its photos are taken for, and the classes taken for it (the
  evaluation's confusion matrix);
* its training photos against the median class (the run's split.csv);
* the audit's suspects in it: flagged photos labelled as it, or suggested to be it (audit.csv);
* photos that look alike across classes: byte-identical or near-duplicate groups of the scan
  whose members sit in this class and another (scan.json);

and says what would most likely help, most telling evidence first: check labels when the audit
flags photos in it, sort out look-alikes across classes, add photos when it has clearly fewer
than the others, else add photos that tell it from the class it is taken for.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from plantid.data.split import read_manifest
from plantid.errors import PlantidError
from plantid.runfolder import RunFolder

FEW_PHOTOS_SHARE = 0.6  # fewer training photos than this share of the median class: add photos
TOP_CONFUSIONS = 2


@dataclass
class ClassAdvice:
    """The evidence about one weak class and the suggestions drawn from it."""

    name: str
    f1: float
    taken_for: list[tuple[str, int]]  # (other class, photos of this class predicted as it)
    mistaken_for_it: list[tuple[str, int]]  # (other class, its photos predicted as this one)
    train_photos: int | None
    median_train_photos: float | None
    audit_given: int  # flagged photos labelled as this class
    audit_suggested: int  # flagged photos of other classes the audit thinks are this one
    look_alikes: list[list[str]] = field(default_factory=list)  # groups spanning this class and another
    suggestions: list[str] = field(default_factory=list)


def _confusions(result: dict, index: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    classes, matrix = result["classes"], result["confusion"]
    row = [(classes[j], int(n)) for j, n in enumerate(matrix[index]) if j != index and n]
    col = [(classes[i], int(matrix[i][index])) for i in range(len(classes)) if i != index and matrix[i][index]]
    top = lambda pairs: sorted(pairs, key=lambda p: (-p[1], p[0]))[:TOP_CONFUSIONS]  # noqa: E731
    return top(row), top(col)


def _train_counts(run: Path) -> dict[str, int]:
    try:
        return read_manifest(RunFolder(run).manifest).class_counts("train")
    except PlantidError:
        return {}


def _audit_flags(run: Path) -> tuple[Counter[str], Counter[str]]:
    given: Counter[str] = Counter()
    suggested: Counter[str] = Counter()
    path = RunFolder(run).audit_csv
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("flagged") == "1":
                    given[row["given"]] += 1
                    suggested[row["suggested"]] += 1
    return given, suggested


def _cross_class_groups(run: Path) -> list[list[str]]:
    """Groups of identical or near-identical photos whose members sit in different class folders."""
    try:
        scan = json.loads(RunFolder(run).scan.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(scan, dict) or scan.get("presplit"):
        return []
    groups = list(scan.get("duplicate_groups") or []) + list(scan.get("near_duplicate_groups") or [])
    return [g for g in groups if len({p.split("/", 1)[0] for p in g}) > 1]


def advise(run: str | Path, result: dict, weak: set[str]) -> list[ClassAdvice]:
    """Advice for each class in `weak`, weakest first, from the run's files and the evaluation `result`."""
    run = Path(run)
    counts = _train_counts(run)
    median = statistics.median(counts.values()) if counts else None
    flagged_given, flagged_suggested = _audit_flags(run)
    cross = _cross_class_groups(run)
    f1 = {r["class"]: float(r["f1"]) for r in result["per_class"]}
    advice = []
    for name in sorted(weak, key=lambda c: (f1.get(c, 0.0), c)):
        taken_for, mistaken = _confusions(result, result["classes"].index(name))
        item = ClassAdvice(name=name, f1=f1.get(name, 0.0), taken_for=taken_for, mistaken_for_it=mistaken,
                           train_photos=counts.get(name), median_train_photos=median,
                           audit_given=flagged_given.get(name, 0), audit_suggested=flagged_suggested.get(name, 0),
                           look_alikes=[g for g in cross if any(p.split("/", 1)[0] == name for p in g)])
        item.suggestions = _suggest(item)
        advice.append(item)
    return advice


def _suggest(item: ClassAdvice) -> list[str]:
    out = []
    if item.audit_given:
        out.append(f"Check the labels of the {item.audit_given} photo(s) the audit flags in {item.name} "
                   f"(plantid review RUN, then plantid apply RUN --to FOLDER).")
    if item.look_alikes:
        n = sum(len(g) for g in item.look_alikes)
        out.append(f"These {n} photos look alike across classes ({len(item.look_alikes)} group(s)): keep each "
                   f"in one class or exclude them: " + "; ".join(", ".join(g) for g in item.look_alikes[:3]) + ".")
    if (item.train_photos is not None and item.median_train_photos
            and item.train_photos < FEW_PHOTOS_SHARE * item.median_train_photos):
        out.append(f"Add photos of {item.name}: it has {item.train_photos} training photos against a median of "
                   f"{item.median_train_photos:g} per class.")
    if item.taken_for and not out:
        other = item.taken_for[0][0]
        out.append(f"Add photos of {item.name} that show how it differs from {other} (it is most often taken "
                   f"for {other}); the error grid shows which photos go wrong.")
    if not out:
        out.append(f"Add photos of {item.name}, and look through its errors in the error grid.")
    return out
