"""The dispatcher side opens what it closes: the context, the sockets, the ZAP authenticator,
the private ipc directory and the local worker host (``_endpoints.py``). A constructor that
fails to bind leaves none of them behind; a shutdown removes them all.

The autouse leak check (conftest ``no_leaks``) adds what these tests do not assert
themselves: no fd of the context, no authenticator or supervisor thread, no worker process.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RESULT_TIMEOUT

from zmqexecutor import ZmqExecutor
from zmqexecutor._security import new_token
from zmqexecutor.errors import ConfigurationError


@pytest.fixture
def tempdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private temporary directory that the executor makes its ipc directory in: short
    (an ipc:// path has a length limit) and seen by no other test running at the time."""
    d = Path(tempfile.mkdtemp(prefix="zx-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that another program holds (listening) for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_workers": 2}, id="local and listen"),
        pytest.param({"workers": ["tcp://127.0.0.1:9"]}, id="workers and listen"),
    ],
)
def test_a_failed_bind_leaves_nothing_behind(
    tempdir: Path, taken_port: int, kwargs: dict[str, object]
) -> None:
    """The sink cannot bind (its port is taken) after the ipc directory, the authenticator
    and the local sink exist: the constructor raises ConfigurationError with the reason,
    and closes everything it opened (the leak check covers fds and threads)."""
    threads_before = set(threading.enumerate())
    listen = f"tcp://127.0.0.1:{taken_port}"
    with pytest.raises(ConfigurationError, match="cannot set up the executor's sockets"):
        ZmqExecutor(listen=listen, token=new_token(), **kwargs)  # type: ignore[arg-type]
    assert list(tempdir.iterdir()) == [], "the ipc directory was left behind"
    left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert left == [], f"threads left right after the constructor raised: {left}"


def test_shutdown_removes_the_ipc_directory(tempdir: Path) -> None:
    """The local sink lives in a private 0700 directory that exists while the executor
    runs and is gone once shutdown() returns."""
    ex = ZmqExecutor(max_workers=1)
    try:
        assert ex.submit(abs, -3).result(timeout=RESULT_TIMEOUT) == 3
        (directory,) = tempdir.iterdir()
        assert (directory / "sink").exists()
        assert directory.stat().st_mode & 0o777 == 0o700
    finally:
        ex.shutdown(wait=True)
    assert list(tempdir.iterdir()) == []


def test_repr_shows_the_dispatchers_summary() -> None:
    """repr() asks the dispatcher for sizes only and names the state from the flags."""
    ex = ZmqExecutor(max_workers=1)
    try:
        assert ex.submit(abs, -3).result(timeout=RESULT_TIMEOUT) == 3
        assert repr(ex) == "<ZmqExecutor local running: 1 worker(s) ready, 0 pending, 0 sent>"
    finally:
        ex.shutdown(wait=True)
    assert repr(ex).startswith("<ZmqExecutor local shut down: ")
