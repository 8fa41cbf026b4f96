"""Deterministic, stratified, duplicate-aware train/val/test split, saved as a CSV manifest.

The manifest (``split.csv``) is the contract between scanning and training: one row per photo
with columns ``path,label,split,sha256``. Rows are sorted by split (train, val, test), then label,
then path, so the same scan and seed always give a byte-identical file, whatever the directory
listing order or Python's hash randomization.

How the split is chosen (when the folder is not already split):

* per class, the targets are ``round(n * test)`` test and ``round(n * val)`` val images (the rest
  is train, at least one image), so each class is within one image of its target proportions;
* byte-identical files (same sha256) form one unit that always lands on a single split, even when
  the copies sit in different classes (a label conflict), so no photo leaks from train to test;
* so do the scan's near-duplicate groups (the same photo resized, re-encoded or re-cropped): a
  group and every byte-identical copy of its members are merged into one unit;
* units are ordered by ``sha256(seed, content hash)`` (the smallest content hash of a merged unit),
  larger units first, and each goes to the split whose remaining quota (summed over its files'
  classes) is largest. Without near duplicates this is exactly the split of earlier versions.

A split that grows (`grow_split`): given the previous manifest of the same folder, every photo it
listed keeps its split (matched by content hash, so a photo moved to another class folder keeps
its side; by path when the manifest has no hash), photos gone from the folder drop out, and only
new photos are assigned, by the same quotas counted over the whole folder. A new photo that is a
copy or near duplicate of a listed one follows its group (into train when the group already
spans splits), so no new photo can carry a train photo's content into val or test, and no photo
that was in train is ever moved: before/after accuracies stay comparable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from plantid.data.scan import ScanEntry, ScanReport
from plantid.errors import PlantidError
from plantid.fileio import link_or_copy, write_text_atomic

SPLITS = ("train", "val", "test")
HEADER = ["path", "label", "split", "sha256"]


@dataclass(frozen=True)
class ManifestRow:
    """One photo of split.csv: where it is, its class, its split and its content hash."""

    path: str  # absolute path of the photo
    label: str
    split: str  # 'train' | 'val' | 'test'
    sha256: str


def _rank(seed: int, sha: str) -> str:
    return hashlib.sha256(f"plantid-split\0{seed}\0{sha}".encode()).hexdigest()


def _targets(n: int, val: float, test: float) -> dict[str, int]:
    n_test = int(n * test + 0.5)
    n_val = int(n * val + 0.5)
    while n_test + n_val >= n and (n_test or n_val):  # keep at least one training image
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def make_split(report: ScanReport, val: float = 0.15, test: float = 0.15, seed: int = 0) -> list[ManifestRow]:
    """Split the scanned photos; an already split root keeps its given splits (val/test ignored)."""
    make_split_checks(report, val, test)
    if report.presplit:
        rows = [ManifestRow(e.path, e.label, e.given_split or "train", e.sha256) for e in report.entries]
        return _sorted_rows(rows)

    units = _units(report)
    counts = Counter(e.label for e in report.entries)
    deficit = {label: _targets(n, val, test) for label, n in counts.items()}

    order = sorted(units, key=lambda sha: (-len(units[sha]), _rank(seed, sha)))
    rows: list[ManifestRow] = []
    for sha in order:
        members = units[sha]
        score = {s: sum(deficit[e.label][s] for e in members) for s in SPLITS}
        best = max(SPLITS, key=lambda s: score[s])  # ties: first in SPLITS order
        for e in members:
            deficit[e.label][best] -= 1
            rows.append(ManifestRow(e.path, e.label, best, e.sha256))
    return _sorted_rows(rows)


@dataclass(frozen=True)
class Growth:
    """How `grow_split` changed a manifest: photos kept where they were, new ones by split, removed ones."""

    kept: int
    relabelled: int  # kept photos whose class folder changed (same content, new label)
    added: dict[str, int]  # new photos per split
    removed: int
    spanning_groups: int  # groups of copies/near duplicates already on more than one side (left as they were)


def grow_split(report: ScanReport, previous: Manifest, val: float = 0.15, test: float = 0.15,
               seed: int = 0) -> tuple[list[ManifestRow], Growth]:
    """Extend `previous` (a manifest of the same folder) to the folder as scanned now, moving no listed photo.

    Why: a split that reshuffles when photos are added mixes former train photos into test, so the
    model before and after cannot be compared and the new test score is inflated. Listed photos
    keep their split (by sha256, else by path), removed ones drop out, and new photos are assigned
    per class by the quotas of `make_split` over the whole folder, new groups of copies or near
    duplicates as one unit, new members of a known group to the group's split. An already split
    root keeps its given splits, as in `make_split`.
    """
    if report.presplit:
        return make_split(report, val=val, test=test, seed=seed), Growth(0, 0, {}, 0, 0)
    make_split_checks(report, val, test)
    by_sha: dict[str, str] = {}
    for r in previous.rows:
        if r.sha256:  # a copy listed on two sides (a hand-made manifest) counts as train: never leak it
            by_sha[r.sha256] = min(by_sha.get(r.sha256, r.split), r.split, key=SPLITS.index)
    by_path = {r.path: r.split for r in previous.rows}

    def listed_split(e: ScanEntry) -> str | None:
        return by_sha.get(e.sha256) or by_path.get(e.path)

    units = _units(report)
    counts = Counter(e.label for e in report.entries)
    deficit = {label: _targets(n, val, test) for label, n in counts.items()}
    rows: list[ManifestRow] = []
    fresh: dict[str, list[ScanEntry]] = {}
    spanning = 0
    for key, members in units.items():
        known = {s for e in members if (s := listed_split(e)) is not None}
        if not known:
            fresh[key] = members
            continue
        spanning += len(known) > 1
        group_split = min(known, key=SPLITS.index)
        for e in members:
            split = listed_split(e) or group_split
            deficit[e.label][split] -= 1
            rows.append(ManifestRow(e.path, e.label, split, e.sha256))
    for key in sorted(fresh, key=lambda k: (-len(fresh[k]), _rank(seed, k))):
        members = fresh[key]
        score = {s: sum(deficit[e.label][s] for e in members) for s in SPLITS}
        best = max(SPLITS, key=lambda s: score[s])
        for e in members:
            deficit[e.label][best] -= 1
            rows.append(ManifestRow(e.path, e.label, best, e.sha256))
    return _sorted_rows(rows), _growth(previous, rows, spanning)


def _growth(previous: Manifest, rows: list[ManifestRow], spanning: int) -> Growth:
    """Count what growing did: a listed photo is kept when its path or its content is still there."""
    now_paths = {r.path for r in rows}
    now_label = {r.sha256: r.label for r in rows if r.sha256}
    kept = [r for r in previous.rows if r.path in now_paths or (r.sha256 and r.sha256 in now_label)]
    old_paths = {r.path for r in kept}
    old_shas = {r.sha256 for r in kept if r.sha256}
    relabelled = sum(1 for r in kept if r.sha256 and now_label.get(r.sha256, r.label) != r.label)
    added = Counter(r.split for r in rows if r.path not in old_paths and not (r.sha256 and r.sha256 in old_shas))
    return Growth(kept=len(kept), relabelled=relabelled, added={s: added.get(s, 0) for s in SPLITS},
                  removed=len(previous.rows) - len(kept), spanning_groups=spanning)


def split_or_grow(report: ScanReport, existing: Path | None, val: float = 0.15, test: float = 0.15,
                  seed: int = 0) -> tuple[list[ManifestRow], Growth | None]:
    """`grow_split` from the manifest at `existing` when that file exists, else a fresh `make_split`.

    The one rule `plantid split --out DIR` and `plantid train --data FOLDER` share: a split.csv
    already in the output folder is grown, never reshuffled.
    """
    if existing is not None and Path(existing).is_file():
        return grow_split(report, read_manifest(existing), val=val, test=test, seed=seed)
    return make_split(report, val=val, test=test, seed=seed), None


def describe_growth(growth: Growth) -> str:
    """One line for the terminal: what stayed, what was added where, what dropped out."""
    added = ", ".join(f"{s} {n}" for s, n in growth.added.items() if n) or "none"
    line = (f"grew the existing split: {growth.kept} photo(s) kept their split"
            + (f" ({growth.relabelled} under a new label)" if growth.relabelled else "")
            + f", new photos added: {added}, {growth.removed} removed photo(s) dropped out")
    if growth.spanning_groups:
        line += (f"; {growth.spanning_groups} group(s) of copies/near duplicates already sat on more than one side "
                 "and were left there")
    return line


def make_split_checks(report: ScanReport, val: float, test: float) -> None:
    """PlantidError for fractions that cannot split, or a scan with no usable photos."""
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise PlantidError(
            f"bad split fractions val={val} test={test}: each must be in [0, 1) and val + test below 1"
        )
    if not report.entries:
        raise PlantidError(f"{report.root}: no usable photos to split; run `plantid scan` to see why")


def _units(report: ScanReport) -> dict[str, list[ScanEntry]]:
    """Photos that must share a split, keyed by their smallest sha256: identical files + near-duplicate groups."""
    by_sha: dict[str, list[ScanEntry]] = defaultdict(list)
    for e in report.entries:
        by_sha[e.sha256].append(e)
    sha_of = {e.relpath: e.sha256 for e in report.entries}
    parent = {sha: sha for sha in by_sha}

    def find(sha: str) -> str:
        while parent[sha] != sha:
            parent[sha] = parent[parent[sha]]
            sha = parent[sha]
        return sha

    for group in report.near_duplicate_groups:
        roots = sorted({find(sha_of[p]) for p in group if p in sha_of})
        for r in roots[1:]:
            parent[r] = roots[0]
    units: dict[str, list[ScanEntry]] = defaultdict(list)
    for sha, members in by_sha.items():
        units[find(sha)].extend(members)
    return units


def _sorted_rows(rows: Iterable[ManifestRow]) -> list[ManifestRow]:
    return sorted(rows, key=lambda r: (SPLITS.index(r.split), r.label, r.path))


def manifest_text(rows: Iterable[ManifestRow]) -> str:
    """The CSV text of a manifest (header + rows, '\\n' line endings)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for r in rows:
        writer.writerow([r.path, r.label, r.split, r.sha256])
    return buf.getvalue()


def write_manifest(rows: Iterable[ManifestRow], path: Path) -> Path:
    """Write the manifest CSV atomically; PlantidError when the location is not writable."""
    path = Path(path)
    text = manifest_text(rows)
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        raise PlantidError(
            f"{path}: cannot write the split manifest ({exc.strerror or exc}); choose a writable output location"
        ) from None


@dataclass
class Manifest:
    """split.csv in memory: every photo's row and the class list that fixes the class indices."""

    path: Path
    rows: list[ManifestRow]
    classes: list[str]  # sorted labels over all splits; class index = position in this list
    _digest: str = field(repr=False, default="")

    def rows_for(self, split: str) -> list[ManifestRow]:
        if split not in SPLITS:
            raise PlantidError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        return [r for r in self.rows if r.split == split]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Images per class (all splits when `split` is None), in class order, zeros included."""
        rows = self.rows if split is None else self.rows_for(split)
        counts = Counter(r.label for r in rows)
        return {c: counts.get(c, 0) for c in self.classes}

    def split_sizes(self) -> dict[str, int]:
        counts = Counter(r.split for r in self.rows)
        return {s: counts.get(s, 0) for s in SPLITS}

    def digest(self) -> str:
        """sha256 of the manifest file's bytes (recorded in runs to tie a model to its data)."""
        return self._digest


def read_manifest(path: Path) -> Manifest:
    """Read and validate a split.csv. Relative photo paths are resolved against the manifest's folder."""
    path = Path(path).expanduser()
    fix = "create it with `plantid split`"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PlantidError(f"{path}: manifest not found; {fix}") from None
    except IsADirectoryError:
        raise PlantidError(f"{path}: is a folder, not a split.csv manifest; {fix}") from None
    except OSError as exc:
        raise PlantidError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PlantidError(f"{path}: manifest is not UTF-8 text; {fix}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != HEADER:
            raise PlantidError(
                f"{path}: not a plantid manifest (header must be '{','.join(HEADER)}', got "
                f"'{','.join(header or [])[:80]}'); {fix}"
            )
        base = path.resolve().parent
        rows: list[ManifestRow] = []
        seen: set[str] = set()
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(not x.strip() for x in rec):
                continue
            if len(rec) != 4:
                raise PlantidError(f"{path}:{lineno}: expected 4 columns ({','.join(HEADER)}), got {len(rec)}")
            p, label, split, sha = rec
            if not p or not label.strip():
                raise PlantidError(f"{path}:{lineno}: empty path or label")
            if split not in SPLITS:
                raise PlantidError(f"{path}:{lineno}: unknown split '{split}' (use train, val or test)")
            if sha and (len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha.lower())):
                raise PlantidError(f"{path}:{lineno}: sha256 '{sha[:20]}' is not 64 hex digits (or leave it empty)")
            full = p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
            if full in seen:
                raise PlantidError(f"{path}:{lineno}: photo listed twice ({full})")
            seen.add(full)
            rows.append(ManifestRow(full, label, split, sha.lower()))
    except csv.Error as exc:
        raise PlantidError(f"{path}: malformed CSV ({exc}); {fix}") from None
    if not rows:
        raise PlantidError(f"{path}: manifest lists no photos; {fix}")
    classes = sorted({r.label for r in rows})
    if len(classes) < 2:
        raise PlantidError(f"{path}: manifest has a single class ('{classes[0]}'); a classifier needs at least two")
    return Manifest(path=path, rows=rows, classes=classes, _digest=hashlib.sha256(data).hexdigest())


def _safe_component(name: str, what: str) -> str:
    if not name or name in (".", "..") or "/" in name or (os.sep in name) or "\0" in name:
        raise PlantidError(f"{what} '{name}' cannot be used as a folder/file name")
    return name


def materialize(rows: Iterable[ManifestRow], out_dir: Path, mode: Literal["copy", "link"] = "copy") -> Path:
    """Write ``out_dir/<split>/<label>/<file>`` for every row (e.g. to hand the split to other tools).

    ``mode='copy'`` copies the files; ``mode='link'`` creates symlinks (absolute targets) to the
    originals, falling back to a hard link and then to a copy where symlinks are not permitted.
    Two photos with the same file name in one class folder are disambiguated deterministically
    by appending the first 8 hex digits of their sha256 (and a counter if needed), rows being
    processed in (split, label, path) order. ``out_dir`` may exist (e.g. it holds split.csv) but
    must not already contain the split folders; the tree is built in a temporary folder inside
    ``out_dir`` and each split folder is renamed into place only once everything was written.
    """
    if mode not in ("copy", "link"):
        raise PlantidError(f"unknown materialize mode '{mode}': use 'copy' or 'link'")
    out_dir = Path(out_dir).expanduser().absolute()
    rows = _sorted_rows(rows)
    if out_dir.exists() and not out_dir.is_dir():
        raise PlantidError(f"{out_dir}: exists and is not a folder; choose another output folder")
    splits = sorted({r.split for r in rows}, key=SPLITS.index)
    for s in splits:
        if os.path.lexists(out_dir / s):
            raise PlantidError(f"{out_dir / s}: already exists; choose a new output folder or delete it first")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".materialize-", suffix=".tmp", dir=out_dir))
    except OSError as exc:
        raise PlantidError(
            f"{out_dir}: cannot create the output folder ({exc.strerror or exc}); choose a writable location"
        ) from None
    try:
        used: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in rows:
            src = Path(r.path)
            if not src.is_file():
                raise PlantidError(f"{src}: listed in the manifest but missing; re-run `plantid scan` and `plantid split`")
            label = _safe_component(r.label, "label")
            folder = tmp / r.split / label
            folder.mkdir(parents=True, exist_ok=True)
            name = src.name
            taken = used[(r.split, label)]
            if name.casefold() in taken:
                tag = (r.sha256 or hashlib.sha256(r.path.encode()).hexdigest())[:8]
                base = f"{src.stem}_{tag}"
                name, k = f"{base}{src.suffix}", 1
                while name.casefold() in taken:
                    name, k = f"{base}_{k}{src.suffix}", k + 1
            taken.add(name.casefold())
            link_or_copy(src, folder / name, mode)
        for s in splits:
            os.replace(tmp / s, out_dir / s)
    except PlantidError:
        raise
    except OSError as exc:
        raise PlantidError(f"{out_dir}: cannot write the split folders ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
