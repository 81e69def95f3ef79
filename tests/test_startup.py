"""A worker process starts as a fresh interpreter that imports only its own side of the package.

Start-up time is a worker's imports (issue 11, part 4): the executor's side (dispatcher,
scheduler, supervisor) and heavy standard modules (importlib.metadata, pathlib, hashlib) would
double it. Each check runs in a fresh interpreter: this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import RESULT_TIMEOUT

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
