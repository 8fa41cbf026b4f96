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
