"""The one exception type users see: a message that names the problem and the fix."""


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
