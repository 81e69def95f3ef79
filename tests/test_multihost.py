"""Multi-host integration: an executor and two worker hosts, each in its own network namespace.

The executor runs inside the "exec" namespace as a subprocess (EXECUTOR_SCRIPT below): it waits
until probe tasks have run on both worker hosts -- workers may join at any time, so the test
waits on that condition instead of on a clock -- then maps over 200 items and prints a JSON
report. Every task returns the id of the network namespace it ran in, so the test can tell which
host ran it. All output goes to log files in tmp_path, shown when an assertion fails.

    mode 2: ZmqExecutor(listen=...) in exec         <- zmqexecutor worker tcp://exec:5555
    mode 3: ZmqExecutor(workers=[h1, h2]) in exec   -> zmqexecutor worker --listen tcp://0.0.0.0:5556
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from netns import (
    Host,
    NetnsLab,
    netns_lab_fixture,  # noqa: F401  (registers the `netns_lab` fixture)
    wait_until,
)

from zmqexecutor._security import write_token_file

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

N_ITEMS = 200
JOIN_TIMEOUT = 40.0  # both worker hosts have run a probe task
MAP_TIMEOUT = 30.0  # the map itself
EXECUTOR_TIMEOUT = 85.0  # the whole executor script, start to exit
WORKER_EXIT_TIMEOUT = 15.0  # SIGTERM to exit
REPORT_MARK = "ZMQX-REPORT "

EXECUTOR_SCRIPT = '''\
"""Runs inside the exec namespace: wait for every worker host, map, print a JSON report."""
import concurrent.futures
import faulthandler
import json
import logging
import os
import signal
import sys
import time
import traceback

from zmqexecutor import ZmqExecutor

# The test sends SIGUSR1 when this script overstays: every thread's stack lands in the log.
faulthandler.register(signal.SIGUSR1, all_threads=True)
logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
)

PROBES_PER_ROUND = 16
log = logging.getLogger("run_executor")


def where(x):
    time.sleep(0.005)  # a little work per task, so the map spreads over every slot
    return x * x, os.readlink("/proc/self/ns/net")


def main():
    cfg = json.loads(sys.argv[1])
    expected = set(cfg["worker_netns"])
    report = {"probe_seen": [], "results": None, "error": None}
    ex = ZmqExecutor(**cfg["executor"])
    try:
        # Workers join whenever they are ready: probe until every host has run a task.
        seen = set()
        deadline = time.monotonic() + cfg["join_timeout"]
        while not expected <= seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"after {cfg['join_timeout']}s probe tasks ran only in {sorted(seen)},"
                    f" expected {sorted(expected)}"
                )
            probes = [ex.submit(where, -1) for _ in range(PROBES_PER_ROUND)]
            done, _ = concurrent.futures.wait(probes, timeout=remaining)
            seen.update(fut.result()[1] for fut in done)
        report["probe_seen"] = sorted(seen)
        log.info("probes ran on every worker host: %s", report["probe_seen"])
        report["results"] = list(ex.map(where, range(cfg["n"]), timeout=cfg["map_timeout"]))
        log.info("map of %d items done; shutting down", cfg["n"])
    except BaseException:
        report["error"] = traceback.format_exc()
        log.error("failed; shutting down without waiting")
        ex.shutdown(wait=False, cancel_futures=True)
    else:
        ex.shutdown(wait=True)
    log.info("shutdown returned")
    print(cfg["report_mark"] + json.dumps(report), flush=True)
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _tail(path: Path, limit: int = 12000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "<no log>"
    return text[-limit:]


class Cluster:
    """The processes of one test and their logs."""

    def __init__(self, lab: NetnsLab, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.logs: dict[str, Path] = {}
        self.workers: list[tuple[Host, subprocess.Popen[Any]]] = []
        self.executor_log = tmp_path / "executor.log"

    def _start(self, host: Host, label: str, args: list[str]) -> subprocess.Popen[Any]:
        log = self.tmp_path / f"{label}.log"
        self.logs[label] = log
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            return host.python(*args, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp_path)

    def start_worker(self, host: Host, *args: str) -> subprocess.Popen[Any]:
        proc = self._start(host, f"worker-{host.name}", ["-m", "zmqexecutor", "worker", *args])
        self.workers.append((host, proc))
        return proc

    def start_executor(
        self, host: Host, executor_kwargs: dict[str, Any], worker_netns: set[str]
    ) -> subprocess.Popen[Any]:
        script = self.tmp_path / "run_executor.py"
        script.write_text(EXECUTOR_SCRIPT)
        cfg = {
            "executor": executor_kwargs,
            "worker_netns": sorted(worker_netns),
            "n": N_ITEMS,
            "join_timeout": JOIN_TIMEOUT,
            "map_timeout": MAP_TIMEOUT,
            "report_mark": REPORT_MARK,
        }
        self.executor_log = self.tmp_path / f"executor-{host.name}.log"
        return self._start(host, f"executor-{host.name}", [str(script), json.dumps(cfg)])

    def all_logs(self) -> str:
        return "\n".join(f"----- {label} -----\n{_tail(p)}" for label, p in self.logs.items())

    def wait_executor(self, executor: subprocess.Popen[Any]) -> dict[str, Any]:
        """Wait for the executor script to exit, failing early if a worker dies first."""
        deadline = time.monotonic() + EXECUTOR_TIMEOUT
        while True:
            try:
                executor.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            for host, proc in self.workers:
                if proc.poll() is not None:
                    pytest.fail(
                        f"worker on {host.name} exited early with code {proc.returncode}\n"
                        + self.all_logs()
                    )
            if time.monotonic() > deadline:
                executor.send_signal(signal.SIGUSR1)  # faulthandler: dump every thread's stack
                with contextlib.suppress(TimeoutError):
                    wait_until(
                        lambda: "most recent call first" in self.executor_log.read_text(),
                        5.0,
                        "the executor's stack dump",
                    )
                pytest.fail(
                    f"executor still running after {EXECUTOR_TIMEOUT}s (stacks below)\n"
                    + self.all_logs()
                )
        lines = [
            ln for ln in self.executor_log.read_text().splitlines() if ln.startswith(REPORT_MARK)
        ]
        if not lines:
            pytest.fail(
                f"executor exited with code {executor.returncode} and no report\n" + self.all_logs()
            )
        report: dict[str, Any] = json.loads(lines[-1][len(REPORT_MARK) :])
        if report["error"] or executor.returncode != 0:
            pytest.fail(
                f"executor failed (exit code {executor.returncode}):\n{report['error']}\n"
                + self.all_logs()
            )
        return report

    def stop_workers(self) -> None:
        """SIGTERM every worker; each must exit 0 and leave no process in its namespace."""
        for _, proc in self.workers:
            proc.send_signal(signal.SIGTERM)
        for host, proc in self.workers:
            try:
                code = proc.wait(timeout=WORKER_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"worker on {host.name} still running {WORKER_EXIT_TIMEOUT}s after SIGTERM\n"
                    + self.all_logs()
                )
            assert code == 0, f"worker on {host.name} exited {code}\n{self.all_logs()}"
            wait_until(
                lambda host=host: not host.pids(),
                WORKER_EXIT_TIMEOUT,
                f"the worker's processes on {host.name} to exit",
            )


def check_report(report: dict[str, Any], worker_netns: set[str]) -> None:
    assert set(report["probe_seen"]) == worker_netns
    results = report["results"]
    assert [value for value, _ in results] == [x * x for x in range(N_ITEMS)]
    # Both worker hosts ran part of the map, and nothing ran anywhere else (not in exec).
    assert {netns for _, netns in results} == worker_netns


def test_mode2_workers_join_listening_executor(netns_lab: NetnsLab, tmp_path: Path) -> None:
    exec_host = netns_lab.add_host("exec")  # 10.250.0.1
    hosts = [netns_lab.add_host("w1"), netns_lab.add_host("w2")]
    worker_netns = {h.netns_id() for h in hosts}
    assert len(worker_netns) == 2
    endpoint = f"tcp://{exec_host.ip}:5555"
    cluster = Cluster(netns_lab, tmp_path)
    token = str(write_token_file(tmp_path / "secret" / "token"))

    executor = cluster.start_executor(
        exec_host, {"listen": endpoint, "token_file": token}, worker_netns
    )
    for host in hosts:
        cluster.start_worker(host, endpoint, "--processes", "2", "--token-file", token)

    check_report(cluster.wait_executor(executor), worker_netns)
    cluster.stop_workers()


def test_mode3_executor_connects_to_listening_workers(netns_lab: NetnsLab, tmp_path: Path) -> None:
    exec_host = netns_lab.add_host("exec")  # 10.250.0.1
    hosts = [netns_lab.add_host("w1"), netns_lab.add_host("w2")]  # .2, .3
    worker_netns = {h.netns_id() for h in hosts}
    assert len(worker_netns) == 2
    cluster = Cluster(netns_lab, tmp_path)
    token = str(write_token_file(tmp_path / "secret" / "token"))

    for host in hosts:
        cluster.start_worker(
            host, "--listen", "tcp://0.0.0.0:5556", "--processes", "1", "--token-file", token
        )
    executor = cluster.start_executor(
        exec_host,
        {"workers": [f"tcp://{h.ip}:5556" for h in hosts], "token_file": token},
        worker_netns,
    )

    check_report(cluster.wait_executor(executor), worker_netns)
    cluster.stop_workers()
