"""A worker process's start: a fresh interpreter that imports only its own side of the
package, and that a shutdown during its start does not hold up.

Start-up time is a worker's imports (issue 11, part 4): the executor's side (dispatcher,
scheduler, supervisor) and heavy standard modules (importlib.metadata, pathlib, hashlib) would
double it. The import checks run in a fresh interpreter: this one has imported everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import zmq
from conftest import RESULT_TIMEOUT, wait_until

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto
from zmqexecutor._defaults import WORKER_EXIT_TIMEOUT
from zmqexecutor._status import State, create, read_status
from zmqexecutor._worker_process import WorkerProcess

#: what a local worker process must not import before its first task (lazily when needed)
NOT_AT_START = (
    "zmqexecutor.executor",
    "zmqexecutor._dispatcher",
    "zmqexecutor._scheduler",
    "zmqexecutor._supervisor",
    "zmqexecutor._stats",
    "zmqexecutor.worker",
    "importlib.metadata",
    "pathlib",
    "hashlib",
    "ipaddress",
)


def fresh_modules(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints a JSON object, which is returned."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_worker_process_imports_only_its_side() -> None:
    """The worker process's module pulls in none of the executor's side, nor the standard
    modules only the executor, a token file or a version query need."""
    found = fresh_modules(
        "import json, sys\n"
        "from zmqexecutor._worker_process import child_main\n"
        "print(json.dumps({'modules': sorted(sys.modules)}))\n"
    )
    modules = found["modules"]
    assert isinstance(modules, list)
    assert [name for name in NOT_AT_START if name in modules] == []


def test_public_names_resolve_on_first_use() -> None:
    """``import zmqexecutor`` stays light, and every public name still resolves: by attribute,
    by ``from zmqexecutor import *`` and in ``dir()``."""
    found = fresh_modules(
        "import json, sys\n"
        "import zmqexecutor\n"
        "light = 'zmqexecutor.executor' not in sys.modules\n"
        "from zmqexecutor import *\n"
        "import zmqexecutor.executor, zmqexecutor._stats, zmqexecutor.worker\n"
        "same = (ZmqExecutor is zmqexecutor.executor.ZmqExecutor\n"
        "        and ExecutorView is zmqexecutor.executor.ExecutorView\n"
        "        and ExecutorStats is zmqexecutor._stats.ExecutorStats\n"
        "        and run_worker is zmqexecutor.worker.run_worker)\n"
        "missing = [n for n in zmqexecutor.__all__ if not hasattr(zmqexecutor, n)]\n"
        "undir = sorted(set(zmqexecutor.__all__) - set(dir(zmqexecutor)))\n"
        "try:\n"
        "    zmqexecutor.NoSuchName\n"
        "    raised = ''\n"
        "except AttributeError as e:\n"
        "    raised = str(e)\n"
        "print(json.dumps({'light': light, 'same': same, 'missing': missing, 'undir': undir,\n"
        "                  'raised': raised}))\n"
    )
    assert found == {
        "light": True,
        "same": True,
        "missing": [],
        "undir": [],
        "raised": "module 'zmqexecutor' has no attribute 'NoSuchName'",
    }


@pytest.mark.timeout(30)
def test_worker_welcomed_as_the_executor_leaves_exits_when_stopped(tmp_path: Path) -> None:
    """An executor that shuts down right after WELCOMEing a worker process (its sink closed
    before the READY) must not leave that process blocked in sending READY: stopped, it
    exits cleanly at once (it used to wait for SIGKILL, holding up shutdown() 5 s).

    The worker process runs in a thread here, as in benchmarks/scale.py; ``draining`` is
    what its SIGTERM handler sets."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.linger = 0
    sink.bind(f"ipc://{tmp_path}/sink")
    status = str(tmp_path / "status")
    create(status, proto.NO_SESSION)
    worker = WorkerProcess(
        {
            "worker_id": uuid.uuid4().hex[:16],
            "host_id": uuid.uuid4().hex[:16],
            "sink": f"ipc://{tmp_path}/sink",
            "inbox": f"ipc://{tmp_path}/inbox",
            "status": status,
            "parent_pid": os.getppid(),
            "log_level": "WARNING",
            "secure": False,
        }
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    inbox = ctx.socket(zmq.PUSH)
    inbox.linger = 0
    try:
        assert sink.poll(int(RESULT_TIMEOUT * 1000)), "no HELLO from the worker process"
        hello = msg.Hello.decode(sink.recv_multipart())
        sink.close()  # the executor shuts down ...
        wait_until(lambda: worker.executor_dropped, what="the worker to see the sink close")
        inbox.connect(hello.inbox)
        welcome = msg.Welcome(
            max_tasks_per_child=None,
            task_timeout=None,
            heartbeat_interval=1.0,
            max_message_size=2**20,
        )
        inbox.send_multipart(welcome.encode(os.urandom(8)))
        wait_until(lambda: read_status(status).state == State.READY, what="the WELCOME")
        worker.draining = True  # ... and stops its worker processes (SIGTERM)
        worker._wakeup_w.send(b"x")
        thread.join(WORKER_EXIT_TIMEOUT)  # the supervisor's SIGKILL would come then
        assert not thread.is_alive(), "the worker process is stuck sending READY"
        assert codes == [0]
        assert read_status(status).state == State.CLEAN_EXIT
    finally:
        worker.draining = True  # whatever failed: the worker's thread leaves, if it can
        with contextlib.suppress(OSError):
            worker._wakeup_w.send(b"x")
        thread.join(WORKER_EXIT_TIMEOUT)
        inbox.close()
        sink.close()
        if not thread.is_alive():
            ctx.term()
