"""Atomic file writing: a crash never leaves a half-written file that is later trusted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def give_usual_mode(path: str | os.PathLike) -> Path:
    """Give a file 0666, a folder 0777, less the umask: what open() or mkdir() would have given.

    mkstemp and mkdtemp, which the atomic writers use for their temporary names, create 0600
    files and 0700 folders, so outputs renamed into place would otherwise be private.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)
    return Path(path)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    Writers produce the whole file under the temporary name, so readers only ever see either
    the previous complete file or the new complete one. On error the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        give_usual_mode(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def all_or_none() -> Iterator[Callable[[str | os.PathLike], Path]]:
    """Write several files as one: yields `stage(target) -> temporary path beside target`.

    Every staged file is renamed onto its target only after the block has written all of them, so
    a failure half-way (a full disk after the figures, before the JSON) leaves the previous set of
    files, never a figure without the JSON it belongs to. On error the temporary files are removed.
    """
    staged: list[tuple[Path, Path]] = []

    def stage(target: str | os.PathLike) -> Path:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        staged.append((Path(tmp), target))
        return Path(tmp)

    try:
        yield stage
        for tmp, target in staged:
            give_usual_mode(tmp)
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write `text` to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON to `target` atomically and return the path."""
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks: how exports and trust files record which
    model or checkpoint they belong to."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "link") -> str:
    """Place `src` at `dst` without touching `src`: 'link' tries a symlink (absolute target), then a
    hard link, then copies; 'copy' copies (with metadata). Returns how it was placed: symlink,
    hardlink or copy. Why the fallbacks: some filesystems (FAT, some network shares) refuse links."""
    if mode == "link":
        try:
            os.symlink(os.path.abspath(src), dst)
            return "symlink"
        except OSError:
            pass
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"
