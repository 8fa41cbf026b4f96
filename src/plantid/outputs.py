"""Where plantid may write: never over a file it did not write, never into the photos it reads.

export and predict take an `--out` path from the user. A path that already holds something the
user made (a thesis folder, a photo, a checkpoint) is refused in one line instead of being
replaced, and nothing is written inside the photo folder a run trains on (a later scan would
count the outputs as photos) or onto one of the command's own inputs. Torch-free: the checks run
before any heavy import, so nothing is computed for an output that is then refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from plantid.errors import PlantidError

SNIFF_BYTES = 4096  # how much of an existing file is read to tell whether plantid wrote it


def resolved(path: str | os.PathLike) -> Path:
    """`path` made absolute with symlinks followed, without requiring it to exist."""
    return Path(os.path.realpath(os.path.abspath(path)))


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when `path` is `folder` or lies anywhere below it (symlinks followed)."""
    inner, outer = resolved(path), resolved(folder)
    return inner == outer or outer in inner.parents


def refuse_inside_data(out: str | os.PathLike, data_root: str | os.PathLike | None, option: str = "--out") -> None:
    """Refuse an output inside (or equal to) the photo folder: the next scan would read it as photos."""
    if data_root is not None and Path(data_root).is_dir() and is_inside(out, data_root):
        raise PlantidError(f"{option} {out}: lies inside the photo folder {data_root}; the next scan would count "
                           "what plantid writes there as photos; choose a folder outside it")


def refuse_onto_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], option: str = "--out") -> None:
    """Refuse an output path that is one of the command's own input files."""
    target = resolved(out)
    for source in inputs:
        if resolved(source) == target:
            raise PlantidError(f"{option} {out}: is one of the photos to predict; choose another file name")


def head(path: Path, size: int = SNIFF_BYTES) -> bytes:
    """The first `size` bytes of a file (b'' when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def json_object(path: Path, limit: int = 1 << 20) -> dict | None:
    """A small JSON file's top-level object, or None when it is missing, large, not JSON or not an object."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def refuse_foreign_file(out: str | os.PathLike, written_by_plantid: Callable[[Path], bool], what: str,
                        option: str = "--out") -> None:
    """Refuse an existing `out` that `written_by_plantid` does not recognise as this command's output.

    A missing path is fine; a folder, a device or a file the user made is refused, naming it.
    """
    out = Path(out)
    if not os.path.lexists(out):
        return
    if out.is_dir():
        raise PlantidError(f"{option} {out}: is a folder; give a file name for the {what}")
    if not out.is_file() or not written_by_plantid(out):
        raise PlantidError(f"{option} {out}: already exists and is not a {what} plantid wrote; plantid never "
                           "replaces a file it did not write: choose another name, or move that file away first")


def refuse_foreign_folder(folder: str | os.PathLike, own_names: set[str], written_by_plantid: Callable[[Path], bool],
                          what: str, option: str = "--out") -> None:
    """Refuse an existing `folder` unless it is empty or holds only this command's own files.

    Used before a folder is replaced as a whole: a folder holding anything else (the user's notes,
    a thesis, photos) would be lost, so it is refused instead, naming one file that is in the way.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not folder.is_dir():
        raise PlantidError(f"{option} {folder}: exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if name not in own_names and not (name.startswith(".") and name.endswith(".tmp"))]
    if foreign or not written_by_plantid(folder):
        shown = foreign[0] if foreign else entries[0]
        raise PlantidError(f"{option} {folder}: holds files plantid did not write ({shown}); plantid never deletes "
                           f"a folder it did not make: choose a new or empty folder for the {what}")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula (`=cmd|calc.jpg`, a file
    name chosen by someone else) gets a leading apostrophe, which spreadsheets hide, so opening
    the CSV never runs it."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text
