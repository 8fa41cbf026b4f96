"""Running the real `plantid` command in a child process, and reading its one-line errors."""

from __future__ import annotations

import subprocess
import sys

# The CLI as a user runs it, from this interpreter's environment (no reliance on PATH).
PLANTID = [sys.executable, "-m", "plantid.cli"]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command: exit status 2 and no traceback, else the test fails."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def run_plantid(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `plantid ARGS` in a child process as a user would, capturing its text output."""
    import os

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", **kwargs.pop("env", {})}
    return subprocess.run([*PLANTID, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def limit_file_size(limit: int):
    """preexec_fn: files above `limit` bytes fail to write (EFBIG), as on a full disk."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
