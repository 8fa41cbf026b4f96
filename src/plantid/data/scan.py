"""Scan a photo folder: find the classes, fully decode every file, report what is unusable.

Layout accepted (never modified):

* ``root/<class>/**/<photo>``: each immediate subfolder of ``root`` is a class; photos in nested
  sub-folders belong to their top class folder.
* ``root/{train,val,test}/<class>/**/<photo>`` (``validation`` is read as ``val``): an already split
  dataset; the classes are the union over the splits and each entry remembers its given split.

Every file with an image extension is decoded with `plantid.data.images.decode_image`, so a file
that would crash training later (empty, truncated, not really an image, decompression bomb,
unreadable) is listed in ``report.bad`` with the reason instead. Hidden files and OS litter
(dot-files, ``Thumbs.db``, ``desktop.ini``, ``__MACOSX``/``@eaDir`` folders) and the ``_excluded``
folder of photos a review set aside (`plantid apply`) are skipped silently. Files with another extension
(``notes.txt``), files lying directly in ``root`` or a split folder, broken symlinks and symlinked
folders already visited (loops) are listed in ``report.bad`` too, with a reason, and excluded.

Duplicates: byte-identical files (same sha256) are listed in ``report.duplicate_groups``; near
duplicates (the same photo resized, re-encoded, brightened or slightly re-cropped) are found from a
perceptual hash of the pixels already decoded (`plantid.data.near_duplicates`, default distance
``NEAR_DUPLICATE_DISTANCE`` bits) and listed in ``report.near_duplicate_groups``. The split keeps
every group of either kind on one side.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantid.data.images import MAX_FILE_BYTES, BadImageError, decode_image, is_hidden, is_image_name
from plantid.data.near_duplicates import NEAR_DUPLICATE_DISTANCE, group_near_duplicates, perceptual_hash
from plantid.errors import PlantidError
from plantid.fileio import write_json_atomic

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
LITTER_FOLDERS = frozenset({"__MACOSX", "@eaDir"})  # zip resource forks, NAS thumbnails: never classes
# Where `plantid apply` puts photos a review excluded: inside the folder (never deleted), never a class.
EXCLUDED_FOLDER = "_excluded"


def _skip(path: Path) -> bool:
    """Hidden files/folders, OS litter and the excluded photos' folder, skipped silently."""
    return is_hidden(path) or path.name in LITTER_FOLDERS or path.name == EXCLUDED_FOLDER


def default_workers() -> int:
    """Threads for decoding: PIL releases the GIL while decoding and resizing."""
    return max(4, min(32, (os.cpu_count() or 1) * 4))


@dataclass
class ScanEntry:
    """One usable photo."""

    path: str  # absolute path (under the resolved root; symlinked files keep the link path)
    relpath: str  # POSIX path relative to root
    label: str
    sha256: str
    width: int  # after EXIF orientation
    height: int
    mode: str  # PIL mode as stored in the file (RGB, L, P, RGBA, CMYK, I;16 ...)
    notes: list[str] = field(default_factory=list)
    given_split: str | None = None  # 'train' | 'val' | 'test' for an already split root
    phash: str = ""  # 64-bit perceptual hash, 16 hex digits ("" in scan.json files written before it existed)
    mean_rgb: list[int] = field(default_factory=list)  # mean colour [r, g, b], the near-duplicate colour gate


@dataclass
class BadFile:
    """A file (or folder) that was excluded, and why."""

    path: str
    reason: str


@dataclass
class ScanReport:
    """What `plantid scan` found in an image folder: readable photos, unreadable files, and groups of
    identical or near-identical photos (the groups `plantid split` keeps on one side)."""

    root: Path
    classes: list[str]
    entries: list[ScanEntry]
    bad: list[BadFile]
    duplicate_groups: list[list[str]]  # relpaths of byte-identical files, one list per content
    conflicts: list[list[str]]  # duplicate groups whose files sit in different classes
    # relpaths of photos within `near_duplicate_distance` phash bits of each other (groups holding at
    # least two different files; purely byte-identical groups are in `duplicate_groups` only)
    near_duplicate_groups: list[list[str]] = field(default_factory=list)
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE

    @property
    def presplit(self) -> bool:
        """True when the root was already split into train/val/test folders."""
        return any(e.given_split is not None for e in self.entries)

    def class_counts(self) -> dict[str, int]:
        """Number of usable photos per class, in class order."""
        counts = Counter(e.label for e in self.entries)
        return {c: counts.get(c, 0) for c in self.classes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ScanReport":
        """Inverse of `to_json` (e.g. to split from a saved scan.json without rescanning)."""
        try:
            return cls(
                root=Path(data["root"]),
                classes=list(data["classes"]),
                entries=[ScanEntry(**e) for e in data["entries"]],
                bad=[BadFile(**b) for b in data["bad"]],
                duplicate_groups=[list(g) for g in data["duplicate_groups"]],
                conflicts=[list(g) for g in data["conflicts"]],
                near_duplicate_groups=[list(g) for g in data.get("near_duplicate_groups", [])],
                near_duplicate_distance=int(data.get("near_duplicate_distance", NEAR_DUPLICATE_DISTANCE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlantidError(f"not a plantid scan report ({exc}); re-run `plantid scan`") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "classes": list(self.classes),
            "class_counts": self.class_counts(),
            "num_images": len(self.entries),
            "num_bad": len(self.bad),
            "presplit": self.presplit,
            "entries": [asdict(e) for e in self.entries],
            "bad": [asdict(b) for b in self.bad],
            "duplicate_groups": [list(g) for g in self.duplicate_groups],
            "conflicts": [list(g) for g in self.conflicts],
            "near_duplicate_distance": self.near_duplicate_distance,
            "near_duplicate_groups": [list(g) for g in self.near_duplicate_groups],
        }


@dataclass
class _Candidate:
    path: Path
    relpath: str
    label: str
    given_split: str | None


def _scandir_sorted(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _list_subdirs(folder: Path) -> list[os.DirEntry]:
    return [e for e in _scandir_sorted(folder) if not _skip(Path(e.name)) and _is_dir(e)]


def _first_visit(path: Path, visited: set[str], bad: list[BadFile]) -> bool:
    """Record folder `path` as visited; False (and a `bad` entry) if it was visited already (symlink loop)."""
    real = os.path.realpath(path)
    if real in visited:
        bad.append(BadFile(str(path), "symlink to a folder already scanned (loop or duplicate); skipped"))
        return False
    visited.add(real)
    return True


def _walk_class(
    class_dir: Path,
    root: Path,
    label: str,
    given_split: str | None,
    visited: set[str],
    out: list[_Candidate],
    bad: list[BadFile],
) -> None:
    """Collect every file under `class_dir` (recursively), following symlinks without looping."""
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        try:
            items = _scandir_sorted(folder)
        except OSError as exc:
            bad.append(BadFile(str(folder), f"cannot list folder ({exc.strerror or exc})"))
            continue
        subdirs: list[Path] = []
        for item in items:
            path = folder / item.name
            if _skip(path):
                continue
            if _is_dir(item):
                if _first_visit(path, visited, bad):
                    subdirs.append(path)
                continue
            try:
                regular = item.is_file(follow_symlinks=True)
            except OSError:
                regular = False
            if not regular:
                reason = "broken symlink" if item.is_symlink() else "not a regular file"
                bad.append(BadFile(str(path), reason))
            elif not _is_utf8(path):
                bad.append(BadFile(printable_path(path), "file name is not valid UTF-8 (the manifest, "
                                   "scan.json and the report could not name it); rename the file"))
            elif not is_image_name(path):
                bad.append(BadFile(str(path), f"not an image file extension ({path.suffix or 'none'}); ignored"))
            else:
                out.append(_Candidate(path, _relpath(path, root), label, given_split))
        stack.extend(reversed(subdirs))


def _is_utf8(path: Path) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: Path) -> str:
    """The path with any byte that is not UTF-8 shown as \\xNN, safe to print and to write as JSON."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _collect(root: Path) -> tuple[list[str], list[_Candidate], list[BadFile]]:
    """Find class folders (plain or already split) and the candidate photo files."""
    try:
        top = _scandir_sorted(root)
    except OSError as exc:
        raise PlantidError(f"{root}: cannot list folder ({exc.strerror or exc}); check its permissions") from None
    top_dirs = [e for e in top if not _skip(Path(e.name)) and _is_dir(e)]
    top_files = [e for e in top if not _skip(Path(e.name)) and not _is_dir(e)]

    split_dirs = [e for e in top_dirs if e.name.lower() in SPLIT_FOLDERS]
    presplit = False
    for e in split_dirs:
        try:
            if _list_subdirs(root / e.name):
                presplit = True
                break
        except OSError:
            continue
    bad: list[BadFile] = []
    candidates: list[_Candidate] = []
    visited = {os.path.realpath(root)}
    loose_reason = "not inside a class folder; move it into its class folder"

    if presplit:
        others = [e.name for e in top_dirs if e.name.lower() not in SPLIT_FOLDERS]
        if others:
            raise PlantidError(
                f"{root}: mixes split folders ({', '.join(e.name for e in split_dirs)}) with other folders "
                f"({', '.join(others)}); use either class folders only or train/val/test folders only"
            )
        seen_splits: dict[str, str] = {}
        for e in split_dirs:
            split = SPLIT_FOLDERS[e.name.lower()]
            if split in seen_splits:
                raise PlantidError(
                    f"{root}: both '{seen_splits[split]}' and '{e.name}' are {split} folders; merge them into one"
                )
            seen_splits[split] = e.name
        for f in top_files:
            bad.append(BadFile(str(root / f.name), loose_reason))
        classes: set[str] = set()
        for e in split_dirs:
            split_dir = root / e.name
            if not _first_visit(split_dir, visited, bad):
                continue
            split = SPLIT_FOLDERS[e.name.lower()]
            for item in _scandir_sorted(split_dir):
                path = split_dir / item.name
                if _skip(path):
                    continue
                if not _is_dir(item):
                    bad.append(BadFile(str(path), loose_reason))
                    continue
                if _first_visit(path, visited, bad):
                    classes.add(item.name)
                    _walk_class(path, root, item.name, split, visited, candidates, bad)
        return sorted(classes), candidates, bad

    for f in top_files:
        bad.append(BadFile(str(root / f.name), loose_reason))
    classes_list: list[str] = []
    for e in top_dirs:
        path = root / e.name
        if _first_visit(path, visited, bad):
            classes_list.append(e.name)
            _walk_class(path, root, e.name, None, visited, candidates, bad)
    return sorted(classes_list), candidates, bad


def _inspect(cand: _Candidate) -> ScanEntry | BadFile:
    """Read, hash and fully decode one file; the perceptual hash is taken from the decoded pixels."""
    try:
        size = cand.path.stat().st_size
        if size > MAX_FILE_BYTES:
            return BadFile(str(cand.path), f"file too large to be a photo ({size} bytes)")
        data = cand.path.read_bytes()
    except OSError as exc:
        return BadFile(str(cand.path), f"unreadable ({exc.strerror or exc})")
    try:
        decoded = decode_image(data)
    except BadImageError as exc:
        return BadFile(str(cand.path), exc.reason)
    h, w = decoded.pixels.shape[:2]
    phash, mean_rgb = perceptual_hash(decoded.pixels)
    return ScanEntry(
        path=str(cand.path),
        relpath=cand.relpath,
        label=cand.label,
        sha256=hashlib.sha256(data).hexdigest(),
        width=int(w),
        height=int(h),
        mode=decoded.original_mode,
        notes=list(decoded.notes),
        given_split=cand.given_split,
        phash=phash,
        mean_rgb=mean_rgb,
    )


def _run_threaded(func, items: list, *, progress: bool, description: str) -> list:
    """Map `func` over `items` with a thread pool, optionally with a rich progress bar; keeps order."""
    if not items:
        return []
    workers = min(default_workers(), len(items))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plantid") as pool:
        results = pool.map(func, items, chunksize=1)
        if not progress:
            return list(results)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        out = []
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        ) as bar:
            task = bar.add_task(description, total=len(items))
            for r in results:
                out.append(r)
                bar.advance(task)
        return out


def scan_folder(
    root: Path, *, progress: bool = False, near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE
) -> ScanReport:
    """Scan an image folder (one subfolder per class, or train/val/test/<class>) without modifying it.

    ``near_duplicate_distance`` is the largest perceptual-hash distance (bits of 64) at which two
    photos count as the same photo (see `plantid.data.near_duplicates`); negative turns it off.
    Raises PlantidError when the folder is missing, is not a folder, has no class folders, has a
    class without a single usable photo, or has only one class.
    """
    check_near_duplicate_distance(near_duplicate_distance)
    root = Path(root).expanduser()
    if not root.exists():
        raise PlantidError(f"{root}: folder not found; pass the folder that holds one subfolder per class")
    if not root.is_dir():
        raise PlantidError(f"{root}: not a folder; pass the folder that holds one subfolder per class")
    root = root.resolve()
    classes, candidates, bad = _collect(root)
    if not classes:
        raise PlantidError(
            f"{root}: no class folders found; put the photos of each class in its own subfolder (e.g. {root}/rose/1.jpg)"
        )

    results = _run_threaded(_inspect, candidates, progress=progress, description="Scanning photos")
    entries = [r for r in results if isinstance(r, ScanEntry)]
    bad.extend(r for r in results if isinstance(r, BadFile))
    entries.sort(key=lambda e: (e.label, e.relpath))
    bad.sort(key=lambda b: b.path)

    counts = Counter(e.label for e in entries)
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        c = empty[0]
        rejected = [b for b in bad if _belongs_to(b.path, root, c)]
        detail = f" ({len(rejected)} file(s) rejected, e.g. {Path(rejected[0].path).name}: {rejected[0].reason})" if rejected else ""
        raise PlantidError(
            f"{root}: class '{c}' has no usable photos{detail}; add photos to it or remove the folder"
        )
    if len(classes) < 2:
        raise PlantidError(
            f"{root}: only one class ('{classes[0]}') found; a classifier needs at least two class subfolders"
        )

    by_hash: dict[str, list[ScanEntry]] = defaultdict(list)
    for e in entries:
        by_hash[e.sha256].append(e)
    groups = sorted(sorted(x.relpath for x in g) for g in by_hash.values() if len(g) > 1)
    conflicts = sorted(
        sorted(x.relpath for x in g) for g in by_hash.values() if len(g) > 1 and len({x.label for x in g}) > 1
    )
    return ScanReport(
        root=root,
        classes=classes,
        entries=entries,
        bad=bad,
        duplicate_groups=groups,
        conflicts=conflicts,
        near_duplicate_groups=find_near_duplicate_groups(entries, near_duplicate_distance),
        near_duplicate_distance=near_duplicate_distance,
    )


def check_near_duplicate_distance(distance: int) -> None:
    """PlantidError unless `distance` is a usable phash distance (negative = off, at most 64 bits)."""
    if distance > 64:
        raise PlantidError(
            f"near-duplicate distance {distance} is over 64, the hash's length, so every photo would match; "
            f"use 0..64 (default {NEAR_DUPLICATE_DISTANCE}) or a negative value to turn it off"
        )


def find_near_duplicate_groups(entries: list[ScanEntry], max_distance: int) -> list[list[str]]:
    """Relpaths grouped by perceptual-hash distance, leaving out groups whose files are all byte-identical.

    Byte-identical copies of a photo already form a `duplicate_groups` entry; repeating them here
    would count them twice. A group that mixes identical copies with a near copy is kept whole.
    """
    hashed = [e for e in entries if e.phash and len(e.mean_rgb) == 3]  # older scan.json files have neither
    groups = group_near_duplicates([e.phash for e in hashed], max_distance, [e.mean_rgb for e in hashed])
    return sorted(
        sorted(hashed[i].relpath for i in g) for g in groups if len({hashed[i].sha256 for i in g}) > 1
    )


def _belongs_to(path: str, root: Path, label: str) -> bool:
    parts = Path(path).relative_to(root).parts if Path(path).is_relative_to(root) else ()
    if len(parts) >= 2 and parts[0].lower() in SPLIT_FOLDERS and parts[1] == label:
        return True
    return bool(parts) and parts[0] == label


def write_scan_json(report: ScanReport, path: Path) -> Path:
    """Write the report as JSON atomically; PlantidError when the location is not writable."""
    path = Path(path)
    try:
        return write_json_atomic(path, report.to_json())
    except OSError as exc:
        raise PlantidError(
            f"{path}: cannot write the scan report ({exc.strerror or exc}); choose a writable output location"
        ) from None


def read_scan_json(path: Path) -> ScanReport:
    """Load a scan.json written by `write_scan_json`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlantidError(f"{path}: scan report not found; run `plantid scan` first") from None
    except (OSError, ValueError) as exc:
        raise PlantidError(f"{path}: cannot read the scan report ({exc}); re-run `plantid scan`") from None
    if not isinstance(data, dict):
        raise PlantidError(f"{path}: not a plantid scan report; re-run `plantid scan`")
    try:
        return ScanReport.from_json(data)
    except PlantidError as exc:
        raise PlantidError(f"{path}: {exc}") from None


def _fmt_size_range(entries: list[ScanEntry]) -> str:
    if not entries:
        return "-"
    sizes = sorted({(e.width, e.height) for e in entries}, key=lambda s: (s[0] * s[1], s))
    lo, hi = sizes[0], sizes[-1]
    return f"{lo[0]}x{lo[1]}" if lo == hi else f"{lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}"


def print_scan_table(report: ScanReport, console=None, *, max_rows: int = 30) -> None:
    """Print the per-class table, the rejected files with reasons, and duplicates/conflicts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    by_class: dict[str, list[ScanEntry]] = defaultdict(list)
    for e in report.entries:
        by_class[e.label].append(e)
    table = Table(title=f"Scan of {escape(str(report.root))}")
    table.add_column("Class")
    table.add_column("Images", justify="right")
    if report.presplit:
        for s in ("train", "val", "test"):
            table.add_column(s, justify="right")
    table.add_column("Size (WxH)")
    table.add_column("Colour modes")
    table.add_column("Converted", justify="right")
    total = len(report.entries)
    for c in report.classes:
        items = by_class.get(c, [])
        modes = Counter(e.mode for e in items)
        row = [escape(c), str(len(items))]
        if report.presplit:
            sc = Counter(e.given_split for e in items)
            row += [str(sc.get(s, 0)) for s in ("train", "val", "test")]
        row += [
            _fmt_size_range(items),
            ", ".join(f"{m} {n}" for m, n in sorted(modes.items())),
            str(sum(1 for e in items if e.notes)),
        ]
        table.add_row(*row)
    table.add_section()
    footer = ["[bold]total[/bold]", f"[bold]{total}[/bold]"]
    if report.presplit:
        sc = Counter(e.given_split for e in report.entries)
        footer += [str(sc.get(s, 0)) for s in ("train", "val", "test")]
    footer += [_fmt_size_range(report.entries), "", str(sum(1 for e in report.entries if e.notes))]
    table.add_row(*footer)
    console.print(table)

    if report.bad:
        bad = Table(title=f"{len(report.bad)} file(s) excluded", title_style="bold yellow")
        bad.add_column("File")
        bad.add_column("Reason")
        for b in report.bad[:max_rows]:
            shown = _rel_or_abs(b.path, report.root)
            bad.add_row(escape(shown), escape(b.reason))
        if len(report.bad) > max_rows:
            bad.add_row(f"... and {len(report.bad) - max_rows} more", "see scan.json")
        console.print(bad)
    else:
        console.print("[green]No unusable files.[/green]")

    if report.duplicate_groups:
        n_files = sum(len(g) for g in report.duplicate_groups)
        console.print(
            f"[yellow]{len(report.duplicate_groups)} group(s) of byte-identical files ({n_files} files); "
            "the split keeps each group on one side.[/yellow]"
        )
        for g in report.duplicate_groups[: max_rows // 3]:
            console.print("  " + escape(", ".join(g)))
    if report.near_duplicate_groups:
        n_files = sum(len(g) for g in report.near_duplicate_groups)
        labels = {e.relpath: e.label for e in report.entries}
        mixed = sum(1 for g in report.near_duplicate_groups if len({labels.get(p) for p in g}) > 1)
        mixed_text = f", {mixed} of them across classes (check those labels)" if mixed else ""
        console.print(
            f"[yellow]{len(report.near_duplicate_groups)} group(s) of near-duplicate photos ({n_files} files, "
            f"perceptual-hash distance <= {report.near_duplicate_distance}){mixed_text}; "
            "the split keeps each group on one side.[/yellow]"
        )
        for g in report.near_duplicate_groups[: max_rows // 3]:
            console.print("  " + escape(", ".join(g)))
        if len(report.near_duplicate_groups) > max_rows // 3:
            console.print(f"  ... and {len(report.near_duplicate_groups) - max_rows // 3} more group(s), see scan.json")
    elif report.near_duplicate_distance >= 0 and any(e.phash for e in report.entries):
        console.print(f"No near-duplicate photos (perceptual-hash distance <= {report.near_duplicate_distance}).")
    if report.conflicts:
        console.print(
            f"[bold red]{len(report.conflicts)} label conflict(s): identical files in different classes "
            "(fix or remove them):[/bold red]"
        )
        for g in report.conflicts[:max_rows]:
            console.print("  " + escape(", ".join(g)))


def _rel_or_abs(path: str, root: Path) -> str:
    p = Path(path)
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else path
