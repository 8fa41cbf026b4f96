"""`tests/support/launch.py`: the subprocess server helper shared by the browser test and bench_serve."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.launch import ServerStartError, free_port, running_server


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_a_server_that_exits_raises_with_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    with pytest.raises(ServerStartError, match="exited with") as excinfo:
        with running_server(tmp_path / "no-such-run", timeout=60, log_path=log_path):
            pytest.fail("the body must not run when the server did not start")
    assert "no-such-run" in str(excinfo.value)
    assert log_path.read_text(errors="replace").strip()
