"""`plantid apply`: carry a review's decisions out in the photo folder, with an undo log.

For each photo the corrections file (plantid.curate.corrections) has a decision for:

* relabel, photo inside FOLDER: moved to ``FOLDER/<new label>/<same sub-path>``;
* exclude, photo inside FOLDER: moved to ``FOLDER/_excluded/<old label>/<same sub-path>``, which
  `plantid scan` skips; nothing is ever deleted;
* relabel, photo outside FOLDER (an unlabelled photo a sort called unsure): copied into
  ``FOLDER/<label>/``, the original left where it is;
* keep (or a decision taken back): the photo goes back where it was, if an earlier apply moved it.

Apply brings the folder to the state the decisions describe, so running it twice does nothing the
second time, and a decision changed after an apply is carried out by the next one. Every move is
appended to ``RUN/applied.json`` (written atomically after each step) before the next one starts;
``--undo`` replays it backwards, checking each photo's content, and removes the folders apply
created, which gives back the folder byte for byte. A photo whose content changed since it was
reviewed is left alone, with a note.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from itertools import chain, count
from pathlib import Path

from plantid.curate.corrections import effective_decisions, file_sha256, read_decisions
from plantid.data.scan import EXCLUDED_FOLDER
from plantid.errors import PlantidError
from plantid.fileio import write_json_atomic
from plantid.runfolder import RunFolder

MOVE, COPY, REMOVE_COPY = "move", "copy", "remove-copy"


@dataclass(frozen=True)
class Operation:
    """One change to the photo folder, with what undoes it."""

    kind: str  # move (src -> dst) | copy (src copied to dst) | remove-copy (dst, an earlier copy of src, removed)
    src: str
    dst: str
    sha256: str  # the photo's content: undo checks it before touching a file
    photo: str  # the path the decision names (where the photo was when reviewed)

    def describe(self) -> str:
        """'move A -> B' for the dry-run listing and the terminal."""
        if self.kind == REMOVE_COPY:
            return f"remove the copy {self.dst} (of {self.src})"
        return f"{self.kind} {self.src} -> {self.dst}"


@dataclass
class ApplyLog:
    """applied.json: the folder the operations were made in, the operations in order, the folders created."""

    folder: str = ""
    operations: list[Operation] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    """What an apply (or an undo) did, or would do with dry_run, and the photos it left alone and why."""

    operations: list[Operation]
    notes: list[str]
    dry_run: bool


def read_log(run: str | os.PathLike) -> ApplyLog:
    """The run's applied.json (empty when nothing was applied yet)."""
    path = RunFolder(run).apply_log
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ApplyLog(folder=data["folder"], operations=[Operation(**op) for op in data["operations"]],
                        created_dirs=list(data["created_dirs"]))
    except FileNotFoundError:
        return ApplyLog()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlantidError(f"{path}: not an apply log ({exc}); it is written by `plantid apply`, do not edit it") from None


def _write_log(run: Path, log: ApplyLog) -> None:
    write_json_atomic(RunFolder(run).apply_log, {"folder": log.folder, "operations": [asdict(o) for o in log.operations],
                                                 "created_dirs": log.created_dirs})


def _check_folder(run: Path, folder: Path, log: ApplyLog) -> Path:
    if not folder.is_dir():
        raise PlantidError(f"{folder}: not a folder; pass the photo folder the run was trained on (--to FOLDER)")
    folder = folder.resolve()
    if log.operations and Path(log.folder) != folder:
        raise PlantidError(f"{run}: its decisions were applied to {log.folder}; undo them there first "
                           f"(`plantid apply {run} --to {log.folder} --undo`)")
    return folder


def _free(target: Path, sha: str, claimed: set[Path]) -> Path:
    """`target`, or name_<8 hex of the content> (then _2, _3, ...) beside it when a file already holds
    that name or an earlier operation of the same apply will (two photos called IMG_0001.jpg
    relabelled to one species); the name returned is added to `claimed`."""
    tagged = f"{target.stem}_{sha[:8]}"
    names = chain([target, target.with_name(tagged + target.suffix)],
                  (target.with_name(f"{tagged}_{n}{target.suffix}") for n in count(2)))
    name = next(n for n in names if n not in claimed and not os.path.lexists(n))
    claimed.add(name)
    return name


def _safe_label(label: str) -> str:
    if not label or label in (".", "..", EXCLUDED_FOLDER) or "/" in label or os.sep in label or "\0" in label:
        raise PlantidError(f"cannot relabel to '{label}': not usable as a class folder name")
    return label


def plan_apply(run: str | os.PathLike, folder: str | os.PathLike) -> tuple[list[Operation], list[str]]:
    """The operations that bring `folder` to what the run's decisions say, and notes on photos left alone."""
    run, log = Path(run), read_log(run)
    folder = _check_folder(run, Path(folder), log)
    moved_to: dict[str, str] = {}
    copied_to: dict[str, str] = {}
    for op in log.operations:
        if op.kind == MOVE:
            moved_to[op.photo] = op.dst
        elif op.kind == COPY:
            copied_to[op.photo] = op.dst
        else:
            copied_to.pop(op.photo, None)
    decisions = effective_decisions(read_decisions(run))
    operations: list[Operation] = []
    notes: list[str] = []
    claimed: set[Path] = set()  # targets of this plan's operations
    for photo in sorted(set(decisions) | set(moved_to) | set(copied_to)):
        decision = decisions.get(photo)
        action = decision.action if decision else "keep"
        label = _safe_label(decision.label) if action == "relabel" else ""
        reviewed_sha = decision.sha256 if decision else ""
        path = Path(photo)
        if path.is_relative_to(folder) and len(path.relative_to(folder).parts) >= 2:
            old_label, *rest = path.relative_to(folder).parts
            target = (folder / label / Path(*rest) if action == "relabel" else
                      folder / EXCLUDED_FOLDER / old_label / Path(*rest) if action == "exclude" else path)
            here = Path(moved_to.get(photo, photo))
            if here.parent == target.parent:  # already in the folder the decision wants, maybe renamed
                continue
            sha = file_sha256(here)
            if not sha:
                notes.append(f"{here}: missing; left alone")
                continue
            if reviewed_sha and sha != reviewed_sha and here == path:
                notes.append(f"{here}: changed since it was reviewed; left alone (review it again)")
                continue
            target = _free(target, sha, claimed)
            if here != target:
                operations.append(Operation(MOVE, str(here), str(target), sha, photo))
        else:  # a photo from outside the folder: only a relabel brings a copy of it in
            have = copied_to.get(photo)
            want = folder / label / path.name if action == "relabel" else None
            if have is not None and want is not None and (Path(have) == want or Path(have).parent == want.parent):
                continue
            if have is not None:
                operations.append(Operation(REMOVE_COPY, photo, have, file_sha256(have), photo))
            if want is not None:
                sha = file_sha256(path)
                if not sha:
                    notes.append(f"{path}: missing; not copied")
                elif reviewed_sha and sha != reviewed_sha:
                    notes.append(f"{path}: changed since it was reviewed; not copied (review it again)")
                else:
                    operations.append(Operation(COPY, photo, str(_free(want, sha, claimed)), sha, photo))
    return operations, notes


def apply_decisions(run: str | os.PathLike, folder: str | os.PathLike, dry_run: bool = False) -> ApplyResult:
    """Carry out `plan_apply`'s operations (or only list them with dry_run), logging each one as it is done."""
    run = Path(run)
    operations, notes = plan_apply(run, folder)
    if dry_run or not operations:
        return ApplyResult(operations, notes, dry_run)
    log = read_log(run)
    log.folder = str(Path(folder).resolve())
    for op in operations:
        dst = Path(op.dst)
        if op.kind in (MOVE, COPY):
            log.created_dirs += _make_parents(dst.parent)
            if os.path.lexists(dst):
                raise PlantidError(f"{dst}: appeared while applying; nothing overwritten. Run apply again")
            try:
                os.rename(op.src, dst) if op.kind == MOVE else shutil.copy2(op.src, dst)
            except OSError as exc:
                _write_log(run, log)
                raise PlantidError(f"{op.src}: cannot {op.kind} it ({exc.strerror or exc}); the steps done so far are "
                                   f"in {RunFolder(run).apply_log} (undo with --undo)") from None
        elif file_sha256(dst) == op.sha256:
            dst.unlink()
        log.operations.append(op)
        _write_log(run, log)
    return ApplyResult(operations, notes, dry_run)


def _make_parents(folder: Path) -> list[str]:
    """Create `folder` and its missing parents; the ones created, outermost first (for undo to remove)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return [str(p) for p in reversed(missing)]


def undo_apply(run: str | os.PathLike, folder: str | os.PathLike, dry_run: bool = False) -> ApplyResult:
    """Replay applied.json backwards: every photo back where it was, copies removed, created folders removed.

    Each step checks the file it touches still holds the content it moved; one that does not stops
    the undo there (the rest stays in the log, nothing is overwritten).
    """
    run, log = Path(run), read_log(run)
    _check_folder(run, Path(folder), log)
    undone = list(reversed(log.operations))
    if dry_run:
        return ApplyResult([Operation(MOVE, o.dst, o.src, o.sha256, o.photo) if o.kind == MOVE else
                            Operation(REMOVE_COPY, o.src, o.dst, o.sha256, o.photo) if o.kind == COPY else
                            Operation(COPY, o.src, o.dst, o.sha256, o.photo) for o in undone], [], True)
    done = []
    for op in undone:
        src, dst = Path(op.src), Path(op.dst)
        if op.kind in (MOVE, COPY) and file_sha256(dst) != op.sha256:
            _write_log(run, log)
            raise PlantidError(f"{dst}: no longer the photo apply put there; undo stopped, nothing overwritten "
                               f"({len(log.operations)} step(s) left in {RunFolder(run).apply_log})")
        if op.kind == MOVE:
            if os.path.lexists(src):
                _write_log(run, log)
                raise PlantidError(f"{src}: a file is already there; undo stopped, nothing overwritten")
            src.parent.mkdir(parents=True, exist_ok=True)
            os.rename(dst, src)
            done.append(Operation(MOVE, op.dst, op.src, op.sha256, op.photo))
        elif op.kind == COPY:
            dst.unlink()
            done.append(Operation(REMOVE_COPY, op.src, op.dst, op.sha256, op.photo))
        else:
            shutil.copy2(src, dst)
            done.append(Operation(COPY, op.src, op.dst, op.sha256, op.photo))
        log.operations.pop()
        _write_log(run, log)
    for created in reversed(log.created_dirs):
        try:
            Path(created).rmdir()
        except OSError:
            pass  # not empty (the user put something there) or already gone: left as it is
    log.created_dirs = []
    _write_log(run, log)
    return ApplyResult(done, [], False)
