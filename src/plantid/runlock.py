"""One writer per run folder: a lock (filelock) held by every command that writes into a run.

Two commands writing into one run at once (two `plantid train --out RUN` started together, an
export during a report) would leave a run whose files come from different commands. The lock is
taken before anything is written; a second command is refused in one line naming the holder's
process id. The lock is an OS lock (flock), so a killed holder leaves no stale lock behind.
Taking it is also the first write into the folder, so a read-only or full folder is refused here,
in one line, before any work is done. The processes Lightning starts for the other devices of
a multi-device run are the same command: they share the first one's lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from plantid.errors import PlantidError, disk_error

LOCK_FILE = ".plantid.lock"  # the flock'ed file (filelock truncates it on every try, so it holds nothing)
HOLDER_FILE = ".plantid.lock.pid"  # the process id of the command holding the lock


def started_for_another_device() -> bool:
    """Whether Lightning started this process for another device of a multi-device run (its
    launcher sets LOCAL_RANK above 0 and runs the same command line again): the first process
    holds the run's lock and prepared its folder, so this one shares both."""
    return os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0")


def holder_pid(run_dir: str | os.PathLike) -> str:
    """The process id written by the command holding `run_dir`'s lock ('unknown' while it starts)."""
    try:
        pid = (Path(run_dir) / HOLDER_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return pid if pid.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold `run_dir`'s lock while the block runs; refuse at once if another command holds it.

    Creates the folder when missing (a fresh training) and removes it again when the block fails
    and left nothing but the lock in it, so a refused start leaves no empty run folder.
    """
    run_dir = Path(run_dir)
    if started_for_another_device():
        yield run_dir
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise PlantidError(f"{run_dir}: exists and is not a folder; choose another run folder")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run_dir / LOCK_FILE, timeout=0)
        lock.acquire()
    except Timeout:
        raise PlantidError(f"{run_dir}: in use by another plantid command (process {holder_pid(run_dir)}); "
                           f"wait for it to finish, then run `plantid {command}` again") from None
    except OSError as exc:
        raise disk_error(exc, run_dir) from None
    holder = run_dir / HOLDER_FILE
    try:
        try:
            holder.write_text(f"{os.getpid()}\n", encoding="ascii")
        except OSError:
            pass  # the pid is only for the refusal's message; the lock itself is held
        try:
            yield run_dir
        except OSError as exc:  # a full disk or read-only folder half-way: one line naming the run
            raise disk_error(exc, run_dir) from None
    finally:
        holder.unlink(missing_ok=True)
        left_empty = created and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}
        if left_empty:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
        lock.release()
        if left_empty:
            run_dir.rmdir()
