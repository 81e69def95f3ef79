"""``ZmqExecutor.versions()``: which versions each worker host runs, compared with the client's.

Hosts tell Python, zmqexecutor, cloudpickle, pyzmq and libzmq when they register; named
packages are asked of an idle worker process per host, with a timeout per call. A host of
another version is made by a ``sitecustomize.py`` on its PYTHONPATH that patches what
``zmqexecutor._protocol`` reports (as ``test_security.OTHER_VERSIONS`` does).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import crash_cases as cc
import pytest
import zmq
from conftest import (
    RESULT_TIMEOUT,
    TESTS_DIR,
    TOKEN_VARS,
    Gates,
    WorkerHost,
    host_logs,
    wait_until,
)

import zmqexecutor
from zmqexecutor import HostVersions, Versions
from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto

LOOPBACK = "tcp://127.0.0.1:*"
ABSENT = "zmqexecutor-test-no-such-distribution"
#: what a host patched by OTHER_VERSIONS reports
OTHER_ZMQEXECUTOR = "0.0.1"
OTHER_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}.99"  # same minor: not refused
OTHER_VERSIONS = (
    "import zmqexecutor._protocol as p\n"
    f"p.zmqexecutor_version = lambda: {OTHER_ZMQEXECUTOR!r}\n"
    f"p.python_full_version = lambda: {OTHER_PYTHON!r}\n"
)


def this_process() -> dict[str, str]:
    """The base versions of this process, found without zmqexecutor's help."""
    return {
        "python": platform.python_version(),
        "zmqexecutor": zmqexecutor.__version__,
        "cloudpickle": cloudpickle.__version__,
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
    }


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)


def wait_registered(ex: Any, count: int, *hosts: WorkerHost) -> None:
    """Wait until ``count`` worker processes are registered."""
    wait_until(
        lambda: len(ex.stats().workers) >= count,
        what=lambda: f"{count} registered worker processes\n{ex.stats()}{host_logs(*hosts)}",
    )


# ---------------------------------------------------------------------------- local host


def test_local_host_listed_with_this_process_versions(make_executor: Callable[..., Any]) -> None:
    """The local host is listed with the Python (patch level included), zmqexecutor,
    cloudpickle, pyzmq and libzmq versions of this process, and no mismatch."""
    ex = make_executor(max_workers=2)
    wait_registered(ex, 2)
    v = ex.versions()
    ours = this_process()
    assert isinstance(v, Versions) and all(isinstance(h, HostVersions) for h in v.hosts)
    assert v.client == ours
    assert len(v.hosts) == 1, v
    (host,) = v.hosts
    assert host.host == socket.gethostname()
    assert host.versions == ours
    assert host.mismatches == () and v.mismatched == []
    assert host.answered and not host.note
    table = str(v).splitlines()
    assert table[0].split() == ["host", *ours]
    assert table[2].split() == [socket.gethostname(), *ours.values()]
    assert "*" not in str(v)


def test_named_packages_installed_and_absent(make_executor: Callable[..., Any]) -> None:
    """A named package is reported with its installed version on the client and the host;
    one that is not installed anywhere is "not installed" on both, which is no mismatch."""
    ex = make_executor(max_workers=1)
    wait_registered(ex, 1)
    v = ex.versions(["numpy", ABSENT])
    numpy = importlib.metadata.version("numpy")
    assert v.packages == ("numpy", ABSENT)
    assert v.client["numpy"] == numpy and v.client[ABSENT] == "not installed"
    (host,) = v.hosts
    assert host.answered, host.note
    assert host.versions["numpy"] == numpy
    assert host.versions[ABSENT] == "not installed"
    assert host.mismatches == ()
    assert str(v).splitlines()[2].split()[-3:] == [numpy, "not", "installed"]


# ---------------------------------------------------------------------------- other hosts


@pytest.mark.timeout(90)
def test_host_with_other_versions_is_marked_and_warned_once(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A host whose zmqexecutor and Python patch versions differ from the client's (patched
    in by a sitecustomize) is marked in versions() and logged once at WARNING when it joins,
    although two of its worker processes register; the local host is neither."""
    caplog.set_level(logging.WARNING, logger="zmqexecutor")
    patch_dir = tmp_path / "patch"
    patch_dir.mkdir()
    (patch_dir / "sitecustomize.py").write_text(OTHER_VERSIONS)
    token = secrets.token_urlsafe(32)
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    other = worker_hosts(
        ex.address,
        token=token,
        processes=2,
        env={"PYTHONPATH": os.pathsep.join([str(patch_dir), str(TESTS_DIR)])},
    )
    wait_registered(ex, 3, other)
    assert len(ex.stats().workers) == 3

    v = ex.versions(["numpy"])
    ours = this_process()
    assert len(v.hosts) == 2, v
    (theirs,) = v.mismatched
    assert theirs.mismatches == ("python", "zmqexecutor"), v
    assert theirs.versions == {
        **ours,
        "python": OTHER_PYTHON,
        "zmqexecutor": OTHER_ZMQEXECUTOR,
        "numpy": importlib.metadata.version("numpy"),
    }
    (local,) = [h for h in v.hosts if h is not theirs]
    assert local.host_id == ex._dispatcher.local_host and local.mismatches == ()
    rows = {line.split()[0]: line for line in str(v).splitlines()}
    assert f"{OTHER_ZMQEXECUTOR}*" in str(v) and f"{OTHER_PYTHON}*" in str(v), str(v)
    assert "* differs from the client: 1 of 2 host(s)" in str(v), str(v)
    assert rows["client"].count("*") == 0

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and OTHER_ZMQEXECUTOR in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert ours["zmqexecutor"] in warnings[0] and OTHER_PYTHON in warnings[0], warnings[0]
    assert ours["python"] in warnings[0], warnings[0]


@pytest.mark.timeout(90)
def test_busy_host_reported_as_not_answering_within_timeout(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    gates: Gates,
) -> None:
    """A host whose only worker process runs a long task cannot name its packages: it is
    reported as not answering within the timeout (its base versions still listed), an idle
    host answers, and versions() returns after about the timeout."""
    token = secrets.token_urlsafe(32)
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    gate = gates("busy")
    busy = ex.submit(cc.block_until, str(gate.path), "done", str(gate.started))
    gate.wait_started()  # the local worker process runs it: it is the only one
    idle = worker_hosts(ex.address, token=token)
    wait_registered(ex, 2, idle)

    timeout = 1.0
    start = time.monotonic()
    v = ex.versions(["numpy"], timeout=timeout)
    elapsed = time.monotonic() - start
    assert timeout <= elapsed < timeout + 2.0, elapsed
    assert len(v.hosts) == 2, v
    (local,) = [h for h in v.hosts if h.host_id == ex._dispatcher.local_host]
    (other,) = [h for h in v.hosts if h is not local]
    assert not local.answered
    assert "did not answer within 1s" in local.note and "running a task" in local.note, local
    assert local.versions["numpy"] is None
    assert local.versions["python"] == platform.python_version()  # from its registration
    assert local.mismatches == ()  # unknown is not a mismatch
    assert other.answered, other.note
    assert other.versions["numpy"] == importlib.metadata.version("numpy")
    assert "did not answer within 1s" in str(v)

    gate.open()
    assert busy.result(timeout=RESULT_TIMEOUT) == "done"
    # the late answer of the busy process is dropped; the next question finds it idle
    v = ex.versions(["numpy"], timeout=RESULT_TIMEOUT)
    assert all(h.answered for h in v.hosts), v


# ---------------------------------------------------------------------------- bad input


BAD_PACKAGES: list[Any] = [
    "numpy",  # a string, not a list of names
    ["numpy==1.26"],
    ["numpy[extra]"],
    [""],
    ["two words"],
    ["-dash"],
    [3],
    ["x" * 129],
    [f"package{i}" for i in range(101)],
    None,
]


def test_bad_package_names_raise_value_error_at_the_call(
    make_executor: Callable[..., Any],
) -> None:
    """Anything but a list of at most 100 distribution names raises ValueError before any
    host is asked; the executor then answers a good question."""
    ex = make_executor(max_workers=1)
    for packages in BAD_PACKAGES:
        with pytest.raises(ValueError, match=r"distribution name|package names"):
            ex.versions(packages)
    with pytest.raises(ValueError, match="timeout"):
        ex.versions(["numpy"], timeout=-1)
    requests = ex._dispatcher.version_requests
    assert not requests.asked and not requests.handed
    wait_registered(ex, 1)
    assert ex.versions([f"package{i}" for i in range(100)]).hosts[0].answered


def test_protocol_checks_the_question_and_bounds_the_answer() -> None:
    """A worker process checks the names of an ASK_VERSIONS as the call does (a bad one is
    dropped as a protocol error); the executor takes from an answer only the packages it
    asked about, as bounded strings."""
    ask = msg.AskVersions(request=7, packages=("numpy",))
    assert msg.AskVersions.decode(ask.encode()) == ask
    for bad in (["numpy; rm -rf /"], [f"p{i}" for i in range(101)], "numpy"):
        with pytest.raises(proto.ProtocolError):
            msg.AskVersions.decode(ask.forge(packages=bad))
    reply = msg.VersionsReply(id="0" * 16, request=7, versions={})
    versions = {"numpy": "1" * 1000, "other": "9"}
    answer = msg.VersionsReply.decode(reply.forge(versions=versions))
    assert answer.of(("numpy", "absent")) == {"numpy": "1" * 64, "absent": None}
    for bad_versions in (["numpy"], {"pandas": 3}):
        with pytest.raises(proto.ProtocolError):
            msg.VersionsReply.decode(reply.forge(versions=bad_versions))
