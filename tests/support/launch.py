"""Start `plantid serve` in a subprocess on a loopback port, for tests and benchmarks.

Test support, not part of the installed package: tests import it as ``tests.support.launch``
(tests/conftest.py puts the repository root on sys.path) and benchmarks/bench_serve.py does the
same with its own sys.path entry.

    with running_server(run_dir, backend="onnx", timeout=90) as base_url:
        httpx.get(base_url + "/api/model")

The server runs as ``python -m plantid.cli serve RUN --host 127.0.0.1 --port PORT --backend B``
with the current interpreter, its output going to a log file. `running_server` waits (at most
`timeout` seconds) until ``/api/health`` answers 200, and always stops the process on the way out,
whether startup failed, the body raised or it finished. Only loopback traffic; no proxy is used.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["ServerStartError", "free_port", "running_server"]

HOST = "127.0.0.1"
POLL_S = 0.3  # pause between health checks
HEALTH_TIMEOUT_S = 2.0  # one health request
STOP_TIMEOUT_S = 15.0  # per wait after terminate / kill
LOG_TAIL_CHARS = 3000


class ServerStartError(RuntimeError):
    """`plantid serve` exited, or did not answer /api/health in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _healthy(opener: urllib.request.OpenerDirector, url: str) -> bool:
    try:
        with opener.open(url, timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, non-2xx, half-started
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


def _log_tail(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-LOG_TAIL_CHARS:]


@contextmanager
def running_server(
    run_dir: str | os.PathLike,
    port: int | None = None,
    backend: str = "torch",
    timeout: float = 60,
    log_path: str | os.PathLike | None = None,
    command: tuple[str, ...] = ("serve",),
) -> Iterator[str]:
    """Run `plantid serve run_dir` on 127.0.0.1:`port` (a free one by default); yield its base URL.

    `command` picks another page server with the same options: ``("review",)``, or ``("review",
    "--sorted", "sorted/")`` (``--backend`` goes to serve only).

    Raises `ServerStartError` (with the tail of the server's log) when the process exits or
    /api/health does not answer 200 within `timeout` seconds. The server's stdout and stderr go to
    `log_path` (default: an anonymous temporary file).
    """
    port = free_port() if port is None else port
    base_url = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "plantid.cli", command[0], str(run_dir), *command[1:],
           "--host", HOST, "--port", str(port)] + (["--backend", backend] if command[0] == "serve" else [])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with (open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()) as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "NO_COLOR": "1"})
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(opener, base_url + "/api/health"):
                if proc.poll() is not None:
                    raise ServerStartError(f"plantid serve exited with {proc.returncode}:\n{_log_tail(log)}")
                if time.monotonic() > deadline:
                    _stop(proc)
                    raise ServerStartError(
                        f"plantid serve did not answer /api/health within {timeout:g} s:\n{_log_tail(log)}"
                    )
                time.sleep(POLL_S)
            yield base_url
        finally:
            _stop(proc)
