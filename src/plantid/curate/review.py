"""What a review shows: the photos a run has reason to doubt, gathered from the files it already wrote.

* the audit's suspects (``RUN/audit.csv`` rows flagged as likely label issues, `plantid audit`);
* the val and test errors (the most confident mistakes in ``eval_val.json`` and ``eval.json``,
  `plantid evaluate`);
* the unsure photos of sorted folders (``sorted.csv`` rows filed under unsure, `plantid sort`).

Nothing here loads a model, so the review page starts in a second. A photo listed by several
sources appears once, with every reason.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from plantid.curate.corrections import Decision, effective_decisions, read_decisions
from plantid.curate.sort import UNSURE, read_sorted_csv
from plantid.errors import PlantidError
from plantid.records import read_evaluation, read_or_warn
from plantid.runfolder import RunFolder


@dataclass
class ReviewItem:
    """One photo to look at: why, its label, the model's suggestion, and the decision in force."""

    id: int
    path: str
    sources: list[str]
    given: str  # '' for an unlabelled photo
    suggested: str
    probability: float | None
    decision: Decision | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        """The item as the review page reads it."""
        d = self.decision
        return {"id": self.id, "name": Path(self.path).name, "path": self.path, "sources": self.sources,
                "given": self.given, "suggested": self.suggested, "probability": self.probability,
                "decision": None if d is None else {"action": d.action, "label": d.label, "time": d.time}}


def _audit_rows(run: Path) -> list[tuple[str, str, str, str, float | None]]:
    path = RunFolder(run).audit_csv
    if not path.is_file():
        return []
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return [(r["path"], "audit", r["given"], r["suggested"], float(r["suggested_prob"]))
                    for r in csv.DictReader(fh) if r.get("flagged") == "1"]
    except (OSError, KeyError, ValueError) as exc:
        raise PlantidError(f"{path}: not an audit.csv ({exc}); run `plantid audit {run}` again") from None


def _error_rows(run: Path) -> list[tuple[str, str, str, str, float | None]]:
    rows = []
    for split in ("val", "test"):
        evaluation = read_or_warn(read_evaluation, run, split)
        if evaluation is not None:
            rows += [(w.path, f"{split} error", w.true, w.pred, w.confidence) for w in evaluation.worst]
    return rows


def _unsure_rows(folders: list[Path]) -> list[tuple[str, str, str, str, float | None]]:
    rows = []
    for folder in folders:
        rows += [(r["path"], "unsure", "", r["species"], float(r["probability"]) if r["probability"] else None)
                 for r in read_sorted_csv(folder) if r["decision"] == UNSURE]
    return rows


def review_items(run: str | Path, sorted_folders: list[Path] | None = None) -> list[ReviewItem]:
    """The photos to review, audit suspects first, then val and test errors, then unsure photos, each once,
    with the run's decision in force for each."""
    run = Path(run)
    items: dict[str, ReviewItem] = {}
    for path, source, given, suggested, probability in (_audit_rows(run) + _error_rows(run)
                                                       + _unsure_rows(list(sorted_folders or []))):
        if path in items:
            if source not in items[path].sources:
                items[path].sources.append(source)
            continue
        items[path] = ReviewItem(id=len(items), path=path, sources=[source], given=given, suggested=suggested,
                                 probability=probability)
    decisions = effective_decisions(read_decisions(run))
    for item in items.values():
        item.decision = decisions.get(item.path)
    return list(items.values())
