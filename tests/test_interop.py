"""ZmqExecutor with the tools around concurrent.futures: joblib (and scikit-learn through it),
asyncio, and functions defined interactively (a notebook cell, pickled by value).

Task callables live at module level (workers import this module by name): keep its top level
free of heavy imports; joblib and scikit-learn are imported inside the tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, Gates

from zmqexecutor import ZmqExecutor

# ---------------------------------------------------------------------------- task callables


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def set_env(name: str, value: str) -> None:
    os.environ[name] = value


def get_env(name: str) -> str | None:
    return os.environ.get(name)


def pid_scorer(estimator: Any, X: Any, y: Any) -> float:
    """A scikit-learn scorer whose "score" is the pid of the process that computed it."""
    return float(os.getpid())


def worker_pids(ex: ZmqExecutor) -> set[int]:
    return {w.pid for w in ex.stats().workers}


@pytest.fixture
def joblib_backend() -> Any:
    """joblib, with the zmqexecutor backend registered."""
    import joblib

    from zmqexecutor.joblib_backend import register

    register()
    return joblib


# ---------------------------------------------------------------------------- joblib


@pytest.mark.timeout(90)
def test_joblib_parallel_runs_on_worker_processes(
    joblib_backend: Any, make_executor: Callable[..., ZmqExecutor], tmp_path: Path
) -> None:
    joblib = joblib_backend
    from joblib import Parallel, delayed

    ex = make_executor(max_workers=2)
    with joblib.parallel_config(backend="zmqexecutor", executor=ex):
        out = Parallel(n_jobs=2)(delayed(square_and_pid)(i) for i in range(50))
        # two batches that wait for each other: both workers run at once
        d = tmp_path / "rv"
        d.mkdir()
        met = Parallel(n_jobs=2, batch_size=1)(
            delayed(cc.rendezvous)(str(d), i, 2) for i in range(2)
        )
    assert [value for value, _ in out] == [i * i for i in range(50)]
    pids = {pid for _, pid in out} | set(met)
    assert os.getpid() not in pids
    assert pids <= worker_pids(ex)
    assert len(set(met)) == 2
    # the backend borrowed the executor: it is still running
    assert ex.submit(abs, -1).result(timeout=RESULT_TIMEOUT) == 1


@pytest.mark.timeout(90)
def test_joblib_generator_output_and_n_jobs_none(
    joblib_backend: Any, make_executor: Callable[..., ZmqExecutor]
) -> None:
    joblib = joblib_backend
    from joblib import Parallel, delayed

    ex = make_executor(max_workers=2)
    with joblib.parallel_config(backend="zmqexecutor", executor=ex):
        # n_jobs unset: all worker slots (the backend's default_n_jobs is -1)
        gen = Parallel(return_as="generator")(delayed(square_and_pid)(i) for i in range(20))
        assert [v for v, _ in gen] == [i * i for i in range(20)]
        unordered = Parallel(n_jobs=2, return_as="generator_unordered")(
            delayed(square_and_pid)(i) for i in range(20)
        )
        assert sorted(v for v, _ in unordered) == [i * i for i in range(20)]
        # n_jobs=1 runs in this process, as with every joblib backend
        here = Parallel(n_jobs=1)(delayed(square_and_pid)(i) for i in range(3))
        assert {pid for _, pid in here} == {os.getpid()}


@pytest.mark.timeout(90)
def test_joblib_n_jobs_minus_one_counts_local_workers_before_they_connect(
    joblib_backend: Any, make_executor: Callable[..., ZmqExecutor]
) -> None:
    """n_jobs=-1 on an executor just made, whose local workers have not registered yet, is
    its max_workers, not this machine's core count (the guess for workers still unknown)."""
    joblib = joblib_backend
    from joblib import Parallel, delayed

    cores = os.cpu_count() or 1
    n = 3 if cores == 2 else 2  # differs from the core count; both more than 1
    ex = make_executor(max_workers=n)
    assert ex.max_workers == n
    # Read at once: the workers are fresh interpreters, still starting (stats() lists none).
    with joblib.parallel_config(backend="zmqexecutor", executor=ex):
        assert joblib.effective_n_jobs(-1) == n  # what scikit-learn asks to split its work
        assert joblib.effective_n_jobs(-2) == max(n - 1, 2)
        out = Parallel(n_jobs=-1)(delayed(square_and_pid)(i) for i in range(n))
        assert [v for v, _ in out] == [i * i for i in range(n)]
        assert joblib.effective_n_jobs(-1) == n  # and once they have connected
    remote_only = make_executor(listen="tcp://127.0.0.1:*", insecure=True)
    assert remote_only.max_workers == 0


@pytest.mark.timeout(90)
def test_joblib_task_exception_propagates_and_backend_stays_usable(
    joblib_backend: Any, make_executor: Callable[..., ZmqExecutor]
) -> None:
    joblib = joblib_backend
    from joblib import Parallel, delayed

    ex = make_executor(max_workers=2)
    with joblib.parallel_config(backend="zmqexecutor", executor=ex, n_jobs=2):
        with pytest.raises(ValueError, match="bad item 7"):
            Parallel()(delayed(fail_on)(i, 7) for i in range(40))
        # the same backend instance runs the next call
        assert Parallel()(delayed(fail_on)(i, -1) for i in range(10)) == list(range(10))


@pytest.mark.timeout(90)
def test_joblib_backend_owns_executor_built_from_kwargs(joblib_backend: Any) -> None:
    """Without executor=, the backend makes one (n_jobs local workers), reuses it across
    Parallel calls, and it goes away with the backend (the leak check sees its workers exit)."""
    joblib = joblib_backend
    from joblib import Parallel, delayed

    from zmqexecutor.joblib_backend import ZmqExecutorBackend

    with joblib.parallel_config(backend="zmqexecutor", n_jobs=2):
        backend = joblib.parallel.get_active_backend()[0]
        assert isinstance(backend, ZmqExecutorBackend)
        assert backend.executor is None  # created by the first Parallel call
        first = Parallel()(delayed(square_and_pid)(i) for i in range(10))
        executor = backend.executor
        assert executor is not None
        second = Parallel()(delayed(square_and_pid)(i) for i in range(10))
        assert backend.executor is executor
        pids = {pid for _, pid in first + second}
        assert os.getpid() not in pids
        assert len(worker_pids(executor)) == 2  # max_workers came from n_jobs
        assert pids <= worker_pids(executor)
        backend_ref = weakref.ref(backend)
        executor_ref = weakref.ref(executor)
        del backend, executor
    gc.collect()
    assert backend_ref() is None
    assert executor_ref() is None


@pytest.mark.timeout(90)
def test_joblib_backend_forwards_executor_kwargs(joblib_backend: Any) -> None:
    """listen= (like workers=) means remote workers: local ones only with max_workers=."""
    joblib = joblib_backend
    from joblib import Parallel, delayed

    with joblib.parallel_config(
        backend="zmqexecutor",
        n_jobs=4,
        max_workers=1,
        listen="tcp://127.0.0.1:*",
        insecure=True,
        initializer=set_env,
        initargs=("ZMQEXECUTOR_INTEROP", "initialized"),
    ):
        backend = joblib.parallel.get_active_backend()[0]
        try:
            out = Parallel()(delayed(get_env)("ZMQEXECUTOR_INTEROP") for _ in range(8))
            assert out == ["initialized"] * 8
            executor = backend.executor
            assert executor.address.startswith("tcp://127.0.0.1:")
            assert len(worker_pids(executor)) == 1
        finally:
            backend.shutdown()
        assert backend.executor is None


@pytest.mark.timeout(90)
def test_joblib_backend_explicit_shutdown(joblib_backend: Any) -> None:
    from joblib import Parallel, delayed

    from zmqexecutor.joblib_backend import ZmqExecutorBackend

    backend = ZmqExecutorBackend(max_workers=1)
    try:
        out = Parallel(backend=backend, n_jobs=2)(delayed(abs)(-i) for i in range(5))
        assert out == list(range(5))
        assert backend.executor is not None
    finally:
        backend.shutdown()
    assert backend.executor is None


def test_joblib_backend_argument_errors(joblib_backend: Any) -> None:
    from zmqexecutor.joblib_backend import ZmqExecutorBackend

    with pytest.raises(TypeError, match="max_worker"):
        ZmqExecutorBackend(max_worker=2)  # a typo is caught before any Parallel call
    with pytest.raises(TypeError, match="not both"):
        ZmqExecutorBackend(executor=object(), max_workers=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a ZmqExecutor"):
        ZmqExecutorBackend(executor=object())  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_importing_zmqexecutor_does_not_import_joblib() -> None:
    code = "import sys, zmqexecutor, zmqexecutor.cli; assert 'joblib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=50)


@pytest.mark.timeout(60)
def test_joblib_backend_without_joblib_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["joblib"] = None  # as if joblib were not installed
        try:
            import zmqexecutor.joblib_backend
        except ImportError as e:
            print(e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    assert "pip install 'zmqexecutor[joblib]'" in proc.stdout


# ---------------------------------------------------------------------------- scikit-learn


@pytest.mark.timeout(180)
def test_sklearn_cross_val_score_runs_on_workers(
    joblib_backend: Any, make_executor: Callable[..., ZmqExecutor]
) -> None:
    joblib = joblib_backend
    from sklearn.datasets import load_iris
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(max_depth=2, random_state=0)
    expected = cross_val_score(model, X, y, cv=5, n_jobs=1)

    ex = make_executor(max_workers=2)
    with joblib.parallel_config(backend="zmqexecutor", executor=ex):
        scores = cross_val_score(model, X, y, cv=5, n_jobs=2)
        pids = cross_val_score(model, X, y, cv=5, n_jobs=2, scoring=pid_scorer)
    assert list(scores) == list(expected)
    assert {int(p) for p in pids} <= worker_pids(ex)
    assert os.getpid() not in {int(p) for p in pids}


@pytest.mark.timeout(180)
def test_sklearn_grid_search_under_backend(
    joblib_backend: Any, make_executor: Callable[..., ZmqExecutor]
) -> None:
    joblib = joblib_backend
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    grid = {"max_depth": [1, 2, 3], "criterion": ["gini", "entropy"]}
    reference = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3, n_jobs=1)
    reference.fit(X, y)

    ex = make_executor(max_workers=2)
    done_before = ex.stats().done
    search = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3, n_jobs=2)
    with joblib.parallel_config(backend="zmqexecutor", executor=ex):
        search.fit(X, y)
    assert search.best_params_ == reference.best_params_
    assert list(search.cv_results_["mean_test_score"]) == list(
        reference.cv_results_["mean_test_score"]
    )
    assert ex.stats().done > done_before  # the fits ran as tasks on the workers


# ---------------------------------------------------------------------------- asyncio


@pytest.mark.timeout(60)
def test_asyncio_gather_runs_tasks_concurrently_on_workers(
    ex2: ZmqExecutor, tmp_path: Path
) -> None:
    async def main() -> tuple[list[Any], list[int], list[int]]:
        loop = asyncio.get_running_loop()
        squares = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(ex2, square_and_pid, i) for i in range(20))),
            RESULT_TIMEOUT,
        )
        # two tasks that wait for each other finish only if both run at once
        d = tmp_path / "rv"
        d.mkdir()
        met = await asyncio.wait_for(
            asyncio.gather(
                asyncio.wrap_future(ex2.submit(cc.rendezvous, str(d), 0, 2)),
                loop.run_in_executor(ex2, cc.rendezvous, str(d), 1, 2),
            ),
            RESULT_TIMEOUT,
        )
        mixed = await asyncio.wait_for(
            asyncio.gather(
                *(asyncio.wrap_future(ex2.submit(pow, 2, i)) for i in range(5)),
                *(loop.run_in_executor(ex2, pow, 3, i) for i in range(5)),
            ),
            RESULT_TIMEOUT,
        )
        return squares, met, mixed

    squares, met, mixed = asyncio.run(main())
    assert [v for v, _ in squares] == [i * i for i in range(20)]
    assert os.getpid() not in {pid for _, pid in squares}
    assert len(set(met)) == 2 and os.getpid() not in met
    assert mixed == [2**i for i in range(5)] + [3**i for i in range(5)]


#: how long a task waits at a gate that a coroutine must open: short, so that a loop that
#: never ran the coroutine fails the test quickly
ASYNC_GATE_TIMEOUT = 10.0


@pytest.mark.timeout(60)
def test_asyncio_loop_stays_responsive_and_errors_propagate(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()

    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        blocked = asyncio.wrap_future(
            ex2.submit(
                cc.block_until, str(gate.path), "opened", str(gate.started), ASYNC_GATE_TIMEOUT
            )
        )
        seen: list[bool] = []  # blocked.done() at each tick

        async def ticker() -> None:
            """Ticks while the remote task blocks, then opens its gate: the task can only
            finish if the loop kept running other coroutines while it was awaited."""
            while not gate.started.exists():
                await asyncio.sleep(0.005)
            for _ in range(5):
                seen.append(blocked.done())
                await asyncio.sleep(0.01)
            gate.open()

        ticking = asyncio.create_task(ticker())
        try:
            value = await asyncio.wait_for(blocked, RESULT_TIMEOUT)
        except TimeoutError as e:
            pytest.fail(f"the loop did not run the ticker while the task was awaited: {e!r}")
        assert value == "opened"
        await ticking
        with pytest.raises(ValueError, match="bad item 3") as info:
            await asyncio.wait_for(loop.run_in_executor(ex2, fail_on, 3, 3), RESULT_TIMEOUT)
        assert "Traceback" in str(info.value.__cause__)  # the remote traceback came along
        return seen

    assert asyncio.run(main()) == [False] * 5, "ticks did not all happen while the task blocked"


@pytest.mark.timeout(60)
def test_asyncio_cancel_reaches_a_queued_task(
    make_executor: Callable[..., ZmqExecutor], gates: Gates, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    gate = gates()
    marker = tmp_path / "cancelled-task-ran"

    async def main() -> cf.Future[Any]:
        busy = ex.submit(cc.block_until, str(gate.path), "busy", str(gate.started))
        while not gate.started.exists():
            await asyncio.sleep(0.005)
        queued = ex.submit(cc.touch, str(marker), "ran")  # waits: the only worker is busy
        wrapped = asyncio.wrap_future(queued)
        while ex.stats().pending != 1:  # it is in the executor's queue, not yet sent
            await asyncio.sleep(0.005)
        wrapped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wrapped
        gate.open()
        assert await asyncio.wait_for(asyncio.wrap_future(busy), RESULT_TIMEOUT) == "busy"
        # (the wrapper passes the cancel on in a callback, which has run by now)
        assert queued.cancelled(), f"the asyncio cancel did not reach the task: {queued!r}"
        # One worker runs tasks in the order sent: had the cancelled task been sent, it would
        # have run before this one.
        after = asyncio.wrap_future(ex.submit(abs, -5))
        assert await asyncio.wait_for(after, RESULT_TIMEOUT) == 5
        return queued

    queued = asyncio.run(main())
    assert queued.cancelled()
    assert not marker.exists(), "the cancelled task ran"


# ---------------------------------------------------------------------------- notebook cells

# What a Jupyter cell amounts to: source compiled and run in the namespace of a module named
# __main__, which the workers cannot import. cloudpickle pickles such functions by value,
# with the globals they use.
NOTEBOOK_CELL = """
import math
import os
from dataclasses import dataclass

SCALE = 3


@dataclass
class Point:
    x: int
    y: int


def helper(n):
    return math.isqrt(n) * SCALE


def cell_function(n):
    return helper(n), Point(n, -n), os.getpid()


make_offset = lambda k: (lambda n: n + k)
"""


def run_cell(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<ipython-input-1>", "exec"), namespace)
    return namespace


@pytest.mark.timeout(60)
def test_notebook_cell_function_runs_remotely(ex2: ZmqExecutor) -> None:
    cell = run_cell(NOTEBOOK_CELL)
    fn = cell["cell_function"]
    assert fn.__module__ == "__main__"
    assert fn.__globals__ is cell  # not this module's globals: only pickling by value works

    value, point, pid = ex2.submit(fn, 50).result(timeout=RESULT_TIMEOUT)
    assert value == 21
    assert pid != os.getpid()
    assert pid in worker_pids(ex2)
    # the worker's copy of the cell's class comes back as the class itself
    assert isinstance(point, cell["Point"])
    assert point == cell["Point"](50, -50)

    assert list(ex2.map(fn, [4, 9], chunksize=2))[1][0] == 9
    assert ex2.submit(cell["make_offset"](10), 1).result(timeout=RESULT_TIMEOUT) == 11

    # a cell re-run defines a new function object: the new definition is what runs
    redefined = run_cell(NOTEBOOK_CELL.replace("SCALE = 3", "SCALE = 5"))
    assert ex2.submit(redefined["cell_function"], 50).result(timeout=RESULT_TIMEOUT)[0] == 35


@pytest.mark.timeout(60)
def test_notebook_global_changed_in_a_later_cell(ex2: ZmqExecutor) -> None:
    cell = run_cell(NOTEBOOK_CELL)
    fn = cell["cell_function"]
    assert ex2.submit(fn, 50).result(timeout=RESULT_TIMEOUT)[0] == 21
    cell["SCALE"] = 5  # the next cell: SCALE = 5, then resubmits the same function
    assert fn(50)[0] == 35  # locally it sees the new value
    assert ex2.submit(fn, 50).result(timeout=RESULT_TIMEOUT)[0] == 35
