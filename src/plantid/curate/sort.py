"""`plantid sort`: file a folder of unlabelled photos by species, leaving the originals untouched.

Each photo is predicted once by the run (calibrated probabilities and the unknown-photo score
when the run has trust files) and placed, as a link (default) or a copy, into

* ``OUT/<species>/`` when the run names the species: the photo looks like a known species and its
  calibrated probability reaches the run's answer level (chosen on val, plantid.infer.answers), or
  ``sure`` when given;
* ``OUT/unsure/`` when it looks like a known species but the model is less sure than that;
* ``OUT/unknown/`` when its unknown-photo score is above the run's threshold (it looks like none
  of the species: another plant, not a plant, a bad photo).

``OUT/sorted.csv`` lists every photo with the decision and why (unreadable files too, placed
nowhere). The folder is built under a temporary name beside OUT and renamed into place, so OUT
is either complete or absent. `plantid review RUN --sorted OUT` shows the unsure photos.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from plantid.errors import PlantidError
from plantid.fileio import give_usual_mode, link_or_copy
from plantid.infer.cli_predict import expand_inputs
from plantid.infer.predictor import Predictor

UNSURE = "unsure"
UNKNOWN = "unknown"
UNREADABLE = "unreadable"
SORTED_CSV = "sorted.csv"
CSV_HEADER = ["path", "decision", "placed", "species", "probability", "second", "second_probability",
              "ood_score", "note"]


@dataclass(frozen=True)
class SortDecision:
    """Where one photo went and why."""

    path: str  # the original, never changed
    decision: str  # a species, 'unsure', 'unknown' or 'unreadable'
    placed: str  # the link or copy under OUT ('' when unreadable)
    species: str = ""  # the most likely species
    probability: float | None = None
    second: str = ""
    second_probability: float | None = None
    ood_score: float | None = None
    note: str = ""


@dataclass
class SortResult:
    """The decisions, the folder written and the run's caveat (no trust files), if any."""

    decisions: list[SortDecision]
    out: Path
    csv_path: Path
    note: str | None = None

    def counts(self) -> Counter[str]:
        """Photos per decision."""
        return Counter(d.decision for d in self.decisions)


def decide(prediction: Prediction, sure: float | None) -> str:
    """The folder of one prediction: 'unknown' above the threshold, the species when sure enough (the
    run's own answer, or probability >= `sure` when given), else 'unsure'."""
    if prediction.unknown:
        return UNKNOWN
    species, probability = prediction.top[0]
    if sure is None:
        return UNSURE if prediction.answer is not None and prediction.answer.kind == "unsure" else species
    return species if probability >= sure else UNSURE


def sort_photos(run: Path, source: Path, out: Path, *, copy: bool = False, sure: float | None = None,
                backend: str = "torch") -> SortResult:
    """Predict every photo under `source` with `run` and file it under `out` (see the module docstring).

    Refuses an `out` that already exists (a second sort never mixes with the first) or lies inside
    `source`, and a run with a class named like one of the special folders.
    """
    source, out = Path(source), Path(out)
    if sure is not None and not 0.0 < sure <= 1.0:
        raise PlantidError(f"--sure {sure}: give a probability in (0, 1], e.g. --sure 0.8")
    if not source.is_dir():
        raise PlantidError(f"{source}: not a folder; pass the folder of unlabelled photos")
    if os.path.lexists(out):
        raise PlantidError(f"{out}: already exists; choose a new --out folder (sorting never writes into an old one)")
    if out.resolve().is_relative_to(source.resolve()):
        raise PlantidError(f"--out {out}: lies inside {source}; choose a folder outside the photos being sorted")
    photos = expand_inputs([str(source)])
    predictor = Predictor.from_run(run, backend=backend)
    clash = {UNSURE, UNKNOWN} & set(predictor.classes)
    if clash:
        raise PlantidError(f"{run}: has a class named '{sorted(clash)[0]}', which is also a sort folder; "
                           "rename that class folder and train again")
    predictions = predictor.predict(photos, top_k=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        decisions = _place_all(photos, predictions, building, out, copy=copy, sure=sure)
        (building / SORTED_CSV).write_text(sorted_csv(decisions), encoding="utf-8")
        give_usual_mode(building)
        os.replace(building, out)
    except OSError as exc:
        raise PlantidError(f"{out}: cannot write the sorted folder ({exc.strerror or exc}); "
                           "choose a writable --out") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return SortResult(decisions=decisions, out=out, csv_path=out / SORTED_CSV, note=predictor.note)


def _place_all(photos: list[Path], predictions, building: Path, out: Path, *, copy: bool,
               sure: float | None) -> list[SortDecision]:
    taken: set[tuple[str, str]] = set()
    decisions = []
    for photo, pred in zip(photos, predictions):
        if not pred.ok:
            decisions.append(SortDecision(str(photo), UNREADABLE, "", note=pred.error or ""))
            continue
        folder = decide(pred, sure)
        name = _free_name(photo, folder, taken)
        (building / folder).mkdir(exist_ok=True)
        link_or_copy(photo, building / folder / name, "copy" if copy else "link")
        second = pred.top[1] if len(pred.top) > 1 else ("", None)
        decisions.append(SortDecision(
            path=str(photo), decision=folder, placed=str(out / folder / name), species=pred.top[0][0],
            probability=pred.top[0][1], second=second[0], second_probability=second[1], ood_score=pred.ood_score,
            note="" if pred.unknown is not None else "no trust files: uncalibrated, never unknown"))
    return decisions


def _free_name(photo: Path, folder: str, taken: set[tuple[str, str]]) -> str:
    """The photo's file name, or name_<8 hex of its path> when another photo already took it in `folder`."""
    name = photo.name
    if (folder, name.casefold()) in taken:
        name = f"{photo.stem}_{hashlib.sha256(str(photo).encode()).hexdigest()[:8]}{photo.suffix}"
    taken.add((folder, name.casefold()))
    return name


def _number(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def sorted_csv(decisions: list[SortDecision]) -> str:
    """sorted.csv's text: one row per photo, in the order they were found."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for d in decisions:
        writer.writerow([d.path, d.decision, d.placed, d.species, _number(d.probability), d.second,
                         _number(d.second_probability), _number(d.ood_score), d.note])
    return buf.getvalue()


def read_sorted_csv(folder: Path) -> list[dict[str, str]]:
    """The rows of a sorted folder's sorted.csv (PlantidError naming the file when it is not one)."""
    path = Path(folder) / SORTED_CSV
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != CSV_HEADER:
                raise PlantidError(f"{path}: not a sorted.csv written by `plantid sort`; pass the --out folder of "
                                   "`plantid sort`")
            return list(reader)
    except (OSError, UnicodeDecodeError):
        raise PlantidError(f"{path}: cannot read it; pass the --out folder of `plantid sort`") from None
