"""ship_modules: a helper module (or package) that only the client has runs on a remote host.

The helper module and package are written to a temporary directory that only this test process
has on ``sys.path``. The worker host is a CLI host (``python -m zmqexecutor worker``) started
with a clean environment (no PYTHONPATH) in an empty working directory, so it cannot import
them, as a real remote host could not.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest
from conftest import MARK_ENV, RESULT_TIMEOUT, WorkerHost

from zmqexecutor import ConfigurationError, TaskDeserializationError, ZmqExecutor

LOOPBACK = "tcp://127.0.0.1:*"

HELPER = """
SCALE = 3


class Box:
    def __init__(self, value):
        self.value = value


def triple(x):
    return SCALE * x


def boxed(x):
    return Box(triple(x))
"""

PACKAGE = {
    "__init__.py": "from .sub import quad\n",
    "util.py": "def double(x):\n    return 2 * x\n",
    "sub.py": "from .util import double\n\n\ndef quad(x):\n    return double(double(x))\n",
}


class Shipped:
    """A helper module and a package with submodules, importable by this process only."""

    def __init__(self, directory: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.helper_name, self.package_name = f"zmqx_helper_{tag}", f"zmqx_pkg_{tag}"
        (directory / f"{self.helper_name}.py").write_text(textwrap.dedent(HELPER))
        package_dir = directory / self.package_name
        package_dir.mkdir()
        for name, text in PACKAGE.items():
            (package_dir / name).write_text(text)
        self.directory = str(directory)
        sys.path.insert(0, self.directory)
        self.helper: Any = importlib.import_module(self.helper_name)
        self.package: Any = importlib.import_module(self.package_name)
        self.sub: Any = importlib.import_module(f"{self.package_name}.sub")

    def remove(self) -> None:
        sys.path.remove(self.directory)
        for name in list(sys.modules):
            if name.startswith((self.helper_name, self.package_name)):
                del sys.modules[name]
        for name in cloudpickle.list_registry_pickle_by_value():
            if name in (self.helper_name, self.package_name):
                # it needs a module object, but only reads its name
                cloudpickle.unregister_pickle_by_value(ModuleType(name))


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[Shipped]:
    d = tmp_path / "client-only"
    d.mkdir()
    modules = Shipped(d)
    yield modules
    modules.remove()


@pytest.fixture
def bare_host(tmp_path: Path) -> Iterator[Callable[[str], WorkerHost]]:
    """Factory of one-process CLI hosts that know nothing of the client's modules."""
    started: list[WorkerHost] = []

    def start(address: str) -> WorkerHost:
        cwd = tmp_path / f"host-cwd-{len(started)}"
        cwd.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            MARK_ENV: os.environ[MARK_ENV],  # the leak check finds the host's processes by it
        }
        args = [address, "--processes", "1", "--insecure"]
        host = WorkerHost(args, tmp_path / f"host-{len(started)}.log", env, cwd=cwd)
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


def _all_text(exc: BaseException) -> str:
    """What a user sees of a task's error: its message, notes and remote traceback."""
    notes = "\n".join(getattr(exc, "__notes__", []))
    return f"{exc}\n{notes}\n{exc.__cause__}"


def test_missing_module_names_it_and_the_remedy(
    make_executor: Callable[..., ZmqExecutor],
    bare_host: Callable[[str], WorkerHost],
    shipped: Shipped,
) -> None:
    ex = make_executor(listen=LOOPBACK, insecure=True)
    host = bare_host(ex.address)
    cases = [
        (shipped.helper.triple, (2,), shipped.helper_name),  # unpickling the task fails
        (shipped.sub.quad, (1,), shipped.package_name),
    ]
    for fn, args, name in cases:
        error = ex.submit(fn, *args).exception(timeout=RESULT_TIMEOUT)
        assert isinstance(error, TaskDeserializationError), host.log()
        assert f"No module named '{name}'" in str(error)
        assert f"ship_modules=['{name}']" in str(error)

    # the task itself imports the module, and raises
    error = ex.submit(importlib.import_module, shipped.helper_name).exception(RESULT_TIMEOUT)
    assert type(error) is ModuleNotFoundError
    assert error.name == shipped.helper_name
    assert f"ship_modules=['{shipped.helper_name}']" in _all_text(error)

    # a module this process cannot import either: no such advice
    error = ex.submit(importlib.import_module, "zmqx_nowhere").exception(RESULT_TIMEOUT)
    assert type(error) is ModuleNotFoundError
    assert "ship_modules" not in _all_text(error)


def test_ship_modules_runs_tasks_on_a_host_without_them(
    make_executor: Callable[..., ZmqExecutor],
    bare_host: Callable[[str], WorkerHost],
    shipped: Shipped,
) -> None:
    ex = make_executor(
        listen=LOOPBACK, insecure=True, ship_modules=[shipped.helper_name, shipped.package]
    )
    host = bare_host(ex.address)
    # the host really lacks them
    find = ex.submit(importlib.util.find_spec, shipped.helper_name)
    assert find.result(timeout=RESULT_TIMEOUT) is None, host.log()

    assert ex.submit(shipped.helper.triple, 2).result(timeout=RESULT_TIMEOUT) == 6
    assert ex.submit(shipped.sub.quad, 3).result(timeout=RESULT_TIMEOUT) == 12  # submodules
    assert list(ex.map(shipped.helper.triple, range(5), chunksize=2)) == [0, 3, 6, 9, 12]
    box = ex.submit(shipped.helper.boxed, 1).result(timeout=RESULT_TIMEOUT)
    assert isinstance(box, shipped.helper.Box) and box.value == 3  # the class comes back


def test_ship_modules_that_cannot_be_imported(shipped: Shipped) -> None:
    with pytest.raises(ConfigurationError, match="'zmqx_nowhere'"):
        ZmqExecutor(max_workers=1, ship_modules=[shipped.helper_name, "zmqx_nowhere"])
    assert shipped.helper_name not in cloudpickle.list_registry_pickle_by_value()  # none
    with pytest.raises(ConfigurationError, match="42 is not a module"):
        ZmqExecutor(max_workers=1, ship_modules=[42])  # type: ignore[list-item]
