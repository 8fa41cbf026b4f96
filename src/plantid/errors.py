"""The one exception type users see: a message that names the problem and the fix."""

import errno
import os


class PlantidError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with code 2.

    Raise it for bad input (missing folder, corrupt checkpoint, unknown config key) so users
    get a clear sentence naming the file and the fix instead of a traceback.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none.

    Enough to name a low-level failure (torch, onnx, YAML) inside a one-line PlantidError.
    """
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def disk_error(exc: OSError, folder: str | os.PathLike | None = None) -> PlantidError:
    """A full disk, a read-only or forbidden folder met while writing, as one line naming the file (or
    the folder being written, when the operating system did not say which file) and the fix."""
    where = exc.filename or folder
    name = f"{where}: " if where else ""
    place = folder if folder is not None else (os.path.dirname(str(exc.filename)) or ".")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = f"free disk space on the drive of {place}"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"make {place} writable (or choose another folder)"
    else:
        fix = f"check {place}"
    return PlantidError(f"{name}{exc.strerror or exc}; {fix}, then run the same command again "
                        "(nothing was left half-written)")
