"""The corrections file: what a review decided about each photo, append-only and timestamped.

`RUN/corrections.jsonl` holds one JSON object a line:

    {"time": "2026-12-07T05:01:02.123+00:00", "path": "/photos/rose/3.jpg", "action": "relabel",
     "label": "tulip", "given": "rose", "sha256": "...", "source": "audit"}

``action`` is ``keep`` (the label is right), ``relabel`` (to ``label``), ``exclude`` (not a plant,
unusable, or none of the species: set aside) or ``undo`` (takes back that photo's latest decision).
Nothing is ever rewritten, so the file is the history of the review; `effective_decisions` folds it
into the one decision per photo that `plantid apply` carries out. A line cut short by a crash is
skipped when read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from plantid.errors import PlantidError
from plantid.runfolder import RunFolder
from plantid.runlock import run_lock

log = logging.getLogger("plantid")

ACTIONS = ("keep", "relabel", "exclude")
UNDO = "undo"


@dataclass(frozen=True)
class Decision:
    """One line of the corrections file."""

    time: str
    path: str
    action: str  # keep | relabel | exclude | undo
    label: str = ""  # the new class, for relabel
    given: str = ""  # the photo's label when it was reviewed ('' for an unlabelled photo)
    sha256: str = ""  # the photo's content when it was reviewed: apply refuses a photo changed since
    source: str = ""  # why it was shown: audit, val error, test error, unsure


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes ('' when it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def append_decision(run: str | os.PathLike, path: str, action: str, label: str = "", given: str = "",
                    source: str = "") -> Decision:
    """Append one decision (or an undo) for the photo at `path` to the run's corrections file.

    One line written with a single append, flushed to disk: an earlier line is never touched. Refused
    in one line while another plantid command holds the run's lock (plantid.runlock).
    """
    if action not in (*ACTIONS, UNDO):
        raise PlantidError(f"unknown review action '{action}': use one of {', '.join((*ACTIONS, UNDO))}")
    if action == "relabel" and not label.strip():
        raise PlantidError("a relabel needs the new class name")
    decision = Decision(time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), path=str(path),
                        action=action, label=label if action == "relabel" else "", given=given,
                        sha256=file_sha256(path) if action != UNDO else "", source=source)
    target = RunFolder(run).corrections
    line = json.dumps(asdict(decision), ensure_ascii=False) + "\n"
    try:
        # under the run's lock: never while `plantid apply` (or any writer) works on the run
        with run_lock(run, "review"), open(target, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise PlantidError(f"{target}: cannot record the decision ({exc.strerror or exc}); "
                           "check the run folder's permissions") from None
    return decision


def read_decisions(run: str | os.PathLike) -> list[Decision]:
    """Every line of the run's corrections file, oldest first (none when there is no file yet)."""
    path = RunFolder(run).corrections
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise PlantidError(f"{path}: cannot read the corrections file ({exc}); it is written by `plantid review`") from None
    decisions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            decisions.append(Decision(**{k: str(v) for k, v in data.items()}))
        except (ValueError, TypeError):
            log.warning("%s:%d: not a decision (cut short?); skipped", path, number)
    return decisions


def effective_decisions(decisions: list[Decision]) -> dict[str, Decision]:
    """The decision in force per photo path: its latest one, an undo taking back the one before it."""
    stacks: dict[str, list[Decision]] = {}
    for d in decisions:
        stack = stacks.setdefault(d.path, [])
        if d.action == UNDO:
            if stack:
                stack.pop()
        else:
            stack.append(d)
    return {path: stack[-1] for path, stack in stacks.items() if stack}
