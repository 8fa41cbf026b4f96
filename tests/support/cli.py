"""Running `plantid` as a user does, and reading its one-line errors.

`run_plantid` starts the real command in a child process: for tests where the process is the point
(its exit status and stderr as a shell sees them, a kill, a server, what a fresh interpreter
imports). `invoke` runs the same command in this process through typer's CliRunner and answers in
the same shape, without the seconds a child spends importing torch again: for everything else.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from plantid.cli import app
from plantid.errors import PlantidError

# The CLI as a user runs it, from this interpreter's environment (no reliance on PATH).
PLANTID = [sys.executable, "-m", "plantid.cli"]
# Warnings off (a library's deprecation notes are not plantid's output), tables wide enough to read.
QUIET_WIDE = {"PYTHONWARNINGS": "ignore", "COLUMNS": "200"}


def run_plantid(*args: str | Path, timeout: float = 300, env: dict[str, str] | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    """`plantid ARGS` in a child process; `env` adds to this process's environment."""
    return subprocess.run([*PLANTID, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **QUIET_WIDE, **(env or {})}, **kwargs)


def invoke(*args: str | Path) -> subprocess.CompletedProcess:
    """`plantid ARGS` in this process, answered like `run_plantid`: a refusal (PlantidError) is exit
    status 2 with its one line on stderr, as `plantid.cli.main` prints it; any other exception is
    raised, as it would be a traceback."""
    logger = logging.getLogger("plantid")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:  # a command sets up plantid's logging for its process; the next test gets it back as it was
        result = CliRunner().invoke(app, [str(a) for a in args], env=QUIET_WIDE)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    code, stderr = result.exit_code, result.stderr
    if isinstance(result.exception, PlantidError):
        code, stderr = 2, stderr + f"error: {result.exception}\n"
    elif result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["plantid", *map(str, args)], code, result.stdout, stderr)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command: exit status 2 and no traceback, else the test fails."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def limit_file_size(limit: int):
    """preexec_fn: files above `limit` bytes fail to write (EFBIG), as on a full disk."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
