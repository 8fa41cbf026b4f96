"""A disk cache of decoded, resized photos: one uint8 array of shape (N, S, S, 3) per manifest and size.

Decoding JPEGs every epoch is the bottleneck on small machines; the cache decodes each photo once
with `plantid.data.images.load_image` (the same preprocessing used by prediction and serving) and
memory-maps the result, so batches are a cheap slice of a file that the OS keeps in its page cache.

Files in the cache folder, per key:

* ``plantid-<key>.u8``: raw pixels, C order, no header;
* ``plantid-<key>.json``: sidecar with the format version, key, shape, byte count and CRC-32 of the
  pixels, written after the pixel file.

The key is the sha256 of the format version, Pillow's version, the image size and, in order, every
photo's path, byte size and modification time, so changing the manifest, a photo or the size
gives a new cache. Both files are written under temporary names and renamed into place; on load
the sidecar must match and the pixel file must have the expected size and CRC, otherwise the
cache is rebuilt (a stale, truncated or corrupt cache is never trusted). Builds are serialized
with a lock file so concurrent processes (e.g. DDP ranks) do not build the same cache twice.

The folder is bounded: after each build, the least recently used caches are deleted until the
pixel files fit in ``$PLANTID_CACHE_MAX_GB`` (default 10 GB); a reused cache counts as used, and
a cache another process is building is never touched. Removing the cache folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from plantid.data.images import BadImageError, load_image
from plantid.data.scan import default_workers
from plantid.errors import PlantidError
from plantid.fileio import write_json_atomic

FORMAT_VERSION = 1
_CHUNK = 64 * 1024 * 1024
DEFAULT_MAX_GB = 10.0  # a few data sets at two sizes; every run of the same photos reuses its cache


def default_cache_dir() -> Path:
    """$PLANTID_CACHE if set, else ~/.cache/plantid."""
    env = os.environ.get("PLANTID_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "plantid"


def resolve_cache_dir(configured: str | os.PathLike | None) -> Path:
    """The cache folder a run's `data.cache_dir` names (user-expanded), else `default_cache_dir()`:
    how evaluation, trust fitting and the audit find the pixels training cached."""
    return Path(configured).expanduser() if configured is not None else default_cache_dir()


def cache_limit_bytes() -> int:
    """How many bytes of pixel files the cache folder may hold: $PLANTID_CACHE_MAX_GB, else 10 GB."""
    raw = os.environ.get("PLANTID_CACHE_MAX_GB", "")
    try:
        gigabytes = float(raw) if raw.strip() else DEFAULT_MAX_GB
    except ValueError:
        raise PlantidError(
            f"PLANTID_CACHE_MAX_GB={raw!r} is not a number; set it to the gigabytes the image cache may use, e.g. 10"
        ) from None
    return max(0, int(gigabytes * 1e9))


def prune_cache(cache_dir: Path, limit_bytes: int, keep: Path) -> list[Path]:
    """Delete the least recently used caches until the pixel files in `cache_dir` fit in `limit_bytes`.

    Recency is the sidecar's modification time (a reuse touches it). `keep`, the cache just built or
    opened, is never deleted, nor is a cache whose lock another process holds. Returns the deleted
    pixel files.
    """
    entries = []
    for data in cache_dir.glob("plantid-*.u8"):
        meta = data.with_suffix(".json")
        try:
            entries.append((meta.stat().st_mtime if meta.exists() else 0.0, data.stat().st_size, data))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    deleted = []
    for _, size, data in sorted(entries):
        if total <= limit_bytes:
            break
        if data == keep:
            continue
        with _locked(data.with_suffix(".lock"), wait=False) as got:
            if not got:
                continue
            for path in (data.with_suffix(".json"), data):
                with contextlib.suppress(OSError):
                    path.unlink()
        total -= size
        deleted.append(data)
    return deleted


def cache_key(paths: Sequence[str], image_size: int) -> str:
    """The cache identity: format, Pillow version, size and every photo's path, size and mtime."""
    h = hashlib.sha256()
    h.update(f"plantid-cache v{FORMAT_VERSION}\0pillow {Image.__version__}\0size {image_size}\0n {len(paths)}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise PlantidError(
                f"{p}: cannot read this photo ({exc.strerror or exc}); it changed since the scan, "
                "re-run `plantid scan` and `plantid split`"
            ) from None
        h.update(os.fsencode(p))
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_paths(key: str, cache_dir: Path) -> tuple[Path, Path]:
    """(pixel file, sidecar) for a cache key."""
    stem = f"plantid-{key[:40]}"
    return cache_dir / f"{stem}.u8", cache_dir / f"{stem}.json"


def _crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


@contextlib.contextmanager
def _locked(lock_path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file's exclusive lock for the block; yields whether it is held. With `wait`
    false, a lock another process holds (or a lock file that cannot be opened) yields False at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield True
        return
    try:
        fh = open(lock_path, "a+b")
    except OSError:
        if wait:
            raise
        yield False
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if wait:
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _open_valid(data_path: Path, meta_path: Path, key: str, shape: tuple[int, ...], verify: bool) -> np.memmap | None:
    """Open the cache read-only if its sidecar, size and checksum all match; None otherwise."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        nbytes = int(np.prod(shape))
        if (
            meta.get("format") != FORMAT_VERSION
            or meta.get("key") != key
            or tuple(meta.get("shape", ())) != shape
            or meta.get("nbytes") != nbytes
            or data_path.stat().st_size != nbytes
        ):
            return None
        if verify and _crc32_file(data_path) != meta.get("crc32"):
            return None
        return np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _check_space(cache_dir: Path, nbytes: int) -> None:
    try:
        free = shutil.disk_usage(cache_dir).free
    except OSError:
        return
    if free < nbytes + 64 * 1024 * 1024:
        raise PlantidError(
            f"{cache_dir}: not enough free disk space for the image cache (needs {nbytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free); set data.cache_dir=... or $PLANTID_CACHE to a bigger disk, or use a smaller image size"
        )


def build_cache(
    paths: list[str], image_size: int, cache_dir: Path, *, progress: bool = False, verify: bool = True
) -> np.ndarray:
    """Decode and resize every photo once; return a read-only uint8 memmap of shape (N, S, S, 3).

    Row i holds ``load_image(paths[i], image_size)``. A valid cache with the same key is reused
    without decoding anything (``verify`` checks its CRC-32 first). A photo that fails to decode
    raises PlantidError naming it and asking to re-run `plantid scan`.
    """
    size = int(image_size)
    if size < 1:
        raise PlantidError(f"image size must be a positive number of pixels, got {image_size}")
    paths = [str(p) for p in paths]
    shape = (len(paths), size, size, 3)
    if not paths:
        empty = np.zeros(shape, dtype=np.uint8)
        empty.setflags(write=False)
        return empty
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise PlantidError(
            f"{cache_dir}: cannot write the image cache there ({exc.strerror or exc}); "
            "set data.cache_dir=... or $PLANTID_CACHE to a writable folder"
        ) from None

    key = cache_key(paths, size)
    data_path, meta_path = cache_paths(key, cache_dir)
    lock_path = data_path.with_suffix(".lock")
    with _locked(lock_path):
        # Temporary files of a build of this key that was killed (the lock says none is running):
        # never read, but as large as the cache itself.
        for leftover in (*cache_dir.glob(f".{data_path.name}.*.tmp"), *cache_dir.glob(f".{meta_path.name}.*.tmp")):
            leftover.unlink(missing_ok=True)
        cached = _open_valid(data_path, meta_path, key, shape, verify)
        if cached is not None:
            with contextlib.suppress(OSError):
                os.utime(meta_path)  # used now: the last to be pruned
            return cached
        for stale in (meta_path, data_path):
            stale.unlink(missing_ok=True)
        nbytes = int(np.prod(shape))
        _check_space(cache_dir, nbytes)
        crc = _write_pixels(paths, size, shape, data_path, progress)
        write_json_atomic(
            meta_path,
            {
                "format": FORMAT_VERSION,
                "key": key,
                "shape": list(shape),
                "dtype": "uint8",
                "nbytes": nbytes,
                "crc32": crc,
                "image_size": size,
                "count": len(paths),
                "first_path": paths[0],
            },
        )
    prune_cache(cache_dir, cache_limit_bytes(), keep=data_path)
    return np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)


def _write_pixels(paths: list[str], size: int, shape: tuple[int, ...], data_path: Path, progress: bool) -> int:
    """Fill a temporary pixel file with a thread pool, rename it onto `data_path`, return its CRC-32."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{data_path.name}.", suffix=".tmp", dir=data_path.parent)
    tmp = Path(tmp_name)
    try:
        os.ftruncate(fd, int(np.prod(shape)))
        os.close(fd)
        fd = -1
        out = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)

        def fill(i: int) -> None:
            try:
                out[i] = load_image(paths[i], size)
            except BadImageError as exc:
                raise PlantidError(
                    f"{paths[i]}: {exc.reason}; the file changed since it was scanned, "
                    "re-run `plantid scan` and `plantid split`"
                ) from None

        workers = min(default_workers(), len(paths))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plantid-cache") as pool:
            results = pool.map(fill, range(len(paths)))
            try:
                if progress:
                    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                    with Progress(
                        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        transient=True,
                    ) as bar:
                        task = bar.add_task(f"Caching {size}px images", total=len(paths))
                        for _ in results:
                            bar.advance(task)
                else:
                    for _ in results:
                        pass
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        out.flush()
        flat = out.reshape(-1)
        crc = 0
        for start in range(0, flat.size, _CHUNK):
            crc = zlib.crc32(flat[start : start + _CHUNK], crc)
        del flat
        del out
        os.replace(tmp, data_path)
        return crc
    except OSError as exc:
        raise PlantidError(
            f"{data_path.parent}: cannot write the image cache ({exc.strerror or exc}); "
            "set data.cache_dir=... or $PLANTID_CACHE to a writable folder with free space"
        ) from None
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
