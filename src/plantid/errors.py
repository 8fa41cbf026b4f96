"""The one exception type users see: a message that names the problem and the fix."""


class PlantidError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with code 2.

    Raise it for bad input (missing folder, corrupt checkpoint, unknown config key) so users
    get a clear sentence naming the file and the fix instead of a traceback.
    """
