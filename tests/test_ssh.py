"""The SSH launcher (zmqexecutor.ssh.launch_ssh) against a real OpenSSH server.

Each test that needs one starts its own ``sshd -D -e`` on a free loopback port, with a
throwaway host key and client key in tmp_path and an authorized_keys file for the user running
the tests (root in CI). The "remote" worker hosts are therefore children of that sshd, not of
the test's ssh client -- the tests check exactly that with the /proc parent chain. The ssh
client forwards this test's ZMQEXECUTOR_TEST_MARK (SetEnv / AcceptEnv), so the leak check in
conftest.py also catches remote processes that outlive their session.

Skipped only when the OpenSSH server or client is missing (apt-get install openssh-server
openssh-client; .ci/run installs both).
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crash_cases
import pytest
from conftest import (
    MARK_ENV,
    RESULT_TIMEOUT,
    TESTS_DIR,
    descendants,
    free_tcp_port,
    rendezvous_pids,
    wait_until,
)

from zmqexecutor import ZmqExecutor
from zmqexecutor._security import write_token_file
from zmqexecutor.errors import ConfigurationError, WorkerLostError
from zmqexecutor.ssh import SSHLaunchError, SSHWorkers, launch_ssh, remote_command

pytestmark = pytest.mark.timeout(90)

SSHD_START_TIMEOUT = 15.0
STOP_TIMEOUT = 30.0
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/sbin/sshd", "/usr/local/sbin/sshd")
# The remote Python: this interpreter (it has zmqexecutor), with tests/ importable so tasks
# from crash_cases run there. Also exercises `python=` being a shell fragment, not a path.
REMOTE_PYTHON = f"env PYTHONPATH={shlex.quote(str(TESTS_DIR))} {shlex.quote(sys.executable)}"


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((c for c in SSHD_CANDIDATES if os.access(c, os.X_OK)), None)


def sshd_unavailable() -> str | None:
    if find_sshd() is None:
        return "OpenSSH server not installed (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install openssh-client)"
    return None


# ---------------------------------------------------------------------------- /proc helpers


def ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return int(data[data.rfind(")") + 2 :].split()[1])


def ancestors(pid: int) -> list[int]:
    """``pid``'s parent, grandparent, ... up to init."""
    chain = []
    parent = ppid(pid)
    while parent and parent not in chain:
        chain.append(parent)
        parent = ppid(parent)
    return chain


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return False
    return data[data.rfind(")") + 2] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


# ---------------------------------------------------------------------------- the sshd


class Sshd:
    """A throwaway OpenSSH server on 127.0.0.1:port, and the options to reach it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700)
        self.port = free_tcp_port()
        self.user = getpass.getuser()
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        for key in (self.host_key, self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "zmqexecutor-test",
                 "-f", str(key)],
                check=True, timeout=30,
            )  # fmt: skip
        authorized = self.dir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            "PidFile none\n"
            f"AuthorizedKeysFile {authorized}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            f"AcceptEnv {MARK_ENV}\n"
            "LogLevel VERBOSE\n"
        )
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def ssh_options(self, key: Path | None = None) -> list[str]:
        return [
            "-F", "/dev/null",  # ignore ~/.ssh/config
            "-p", str(self.port),
            "-i", str(key or self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", f"SetEnv={MARK_ENV}={os.environ.get(MARK_ENV, '')}",
        ]  # fmt: skip

    def start(self) -> None:
        sshd = find_sshd()
        assert sshd is not None
        if os.geteuid() == 0:
            # Debian's sshd refuses to start without its privilege-separation directory.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        wait_until(
            lambda: "Server listening" in self.log.read_text() or self.proc.poll() is not None,  # type: ignore[union-attr]
            SSHD_START_TIMEOUT,
            "sshd to listen",
        )
        assert self.proc.poll() is None, f"sshd did not start:\n{self.log.read_text()}"

    def stop(self) -> None:
        if self.proc is None:
            return
        leftovers = descendants(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Safety net after a failed test: sessions still open would outlive the server.
        # (A passing test has none: it checks that every remote process is gone.)
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # Captured by pytest: shown only when the test failed.
        print(f"--- sshd log ---\n{self.log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    server = Sshd(tmp_path / "sshd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write_token_file(tmp_path / "token")


@pytest.fixture
def listening_executor(make_executor: Callable[..., ZmqExecutor], token_file: Path) -> ZmqExecutor:
    return make_executor(listen="tcp://127.0.0.1:*", token_file=str(token_file))


def launch(sshd: Sshd, executor: ZmqExecutor, token_file: Path, **kw: Any) -> SSHWorkers:
    kw.setdefault("processes", 2)
    kw.setdefault("output", io.StringIO())
    return launch_ssh(
        [sshd.destination],
        executor.address,
        token_file=token_file,
        python=REMOTE_PYTHON,
        ssh_options=sshd.ssh_options(),
        **kw,
    )


def session_pids(workers: SSHWorkers) -> set[int]:
    """Every remote pid of the workers' sessions: wrappers, worker hosts, worker processes."""
    pids: set[int] = set()
    for w in workers:
        assert w.remote_pid is not None and w.wrapper_pid is not None
        pids |= {w.wrapper_pid, w.remote_pid} | descendants(w.remote_pid)
    return pids


def assert_all_gone(pids: set[int]) -> None:
    wait_until(
        lambda: not any(alive(p) for p in pids),
        STOP_TIMEOUT,
        lambda: (
            "remote processes to exit: "
            + "; ".join(f"{p}: {' '.join(cmdline(p))}" for p in pids if alive(p))
        ),
    )


# ---------------------------------------------------------------------------- tests


def test_map_runs_on_workers_started_over_ssh(
    sshd: Sshd, listening_executor: ZmqExecutor, token_file: Path, tmp_path: Path
) -> None:
    ex = listening_executor
    token = token_file.read_text().strip()
    output = io.StringIO()
    workers = launch(sshd, ex, token_file, output=output)
    with workers:
        (w,) = workers
        assert w.remote_pid is not None and w.remote_version is not None
        # Two tasks that wait for each other: both worker processes are up and serving.
        pids = rendezvous_pids(ex, 2, tmp_path)
        assert len(pids) == 2
        assert set(ex.map(lambda _: os.getpid(), range(20))) <= pids
        for pid in pids:
            chain = ancestors(pid)
            # task process -> worker host -> wrapper -> ... -> sshd session -> our sshd
            assert chain[0] == w.remote_pid, chain
            assert w.wrapper_pid in chain, chain
            assert sshd.proc is not None and sshd.proc.pid in chain, chain
            assert w.process.pid not in chain, "a worker is a child of the local ssh client"
            # ...and the test process is an ancestor only through sshd
            assert chain[chain.index(sshd.proc.pid) + 1] == os.getpid(), chain
        # The token is on no command line, local or remote; the remote worker reads it
        # from a private temporary file.
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                assert token not in " ".join(cmdline(int(entry))), cmdline(int(entry))
        argv = cmdline(w.remote_pid)
        remote_token = Path(argv[argv.index("--token-file") + 1])
        assert remote_token.read_text().strip() == token
        assert stat.S_IMODE(remote_token.stat().st_mode) == 0o600
        assert stat.S_IMODE(remote_token.parent.stat().st_mode) == 0o700
        remote = session_pids(workers)
        codes = workers.stop(STOP_TIMEOUT)
    assert codes == {sshd.destination: 0}
    assert w.remote_returncode == 0
    assert_all_gone(remote)
    assert not remote_token.parent.exists(), "the remote token file outlived the session"
    assert "worker host" in output.getvalue()  # the remote log reached `output`


def test_stop_lets_the_running_task_finish(
    sshd: Sshd, listening_executor: ZmqExecutor, token_file: Path, gates: Any
) -> None:
    ex = listening_executor
    output = io.StringIO()
    workers = launch(sshd, ex, token_file, processes=1, output=output)
    gate = gates("drain")
    fut = ex.submit(crash_cases.block_until, str(gate.path), "done", str(gate.started))
    gate.wait_started()
    remote = session_pids(workers)
    stopper = threading.Thread(target=workers.stop, args=(STOP_TIMEOUT,))
    stopper.start()
    try:
        # The worker host got SIGTERM while its task runs...
        wait_until(
            lambda: "SIGTERM: finishing running tasks" in output.getvalue(),
            RESULT_TIMEOUT,
            lambda: f"the worker host to log SIGTERM; output:\n{output.getvalue()}",
        )
        assert stopper.is_alive()
        assert not fut.done()
    finally:
        gate.open()  # ...and the task finishes before it exits.
        stopper.join(STOP_TIMEOUT + 10)
    assert not stopper.is_alive()
    assert fut.result(timeout=RESULT_TIMEOUT) == "done"
    assert workers.returncodes == {sshd.destination: 0}
    assert_all_gone(remote)


def test_stop_kills_what_outlives_the_timeout(
    sshd: Sshd, make_executor: Callable[..., ZmqExecutor], token_file: Path, gates: Any
) -> None:
    # Short heartbeats, so that the executor soon notices the killed host.
    beats = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}
    ex = make_executor(listen="tcp://127.0.0.1:*", token_file=str(token_file), **beats)
    flags = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "2"]
    workers = launch(sshd, ex, token_file, processes=1, extra_args=flags)
    gate = gates("never")  # opened only at teardown: the task outlives stop()'s timeout
    fut = ex.submit(crash_cases.block_until, str(gate.path), None, str(gate.started))
    gate.wait_started()
    remote = session_pids(workers)
    assert len(remote) == 3  # wrapper, worker host, worker process (running the task)
    codes = workers.stop(timeout=1.0)
    # TERM, then after 1 s KILL to the worker host's process group: the wrapper reports it
    assert codes == {sshd.destination: 128 + signal.SIGKILL}
    assert_all_gone(remote)
    with pytest.raises(WorkerLostError):
        fut.result(timeout=RESULT_TIMEOUT)


def test_workers_exit_when_the_launcher_goes_away(
    sshd: Sshd, listening_executor: ZmqExecutor, token_file: Path
) -> None:
    """The launcher dies (its ssh client's stdin reaches end of file), the ssh client itself
    is killed (the connection closes), or the remote wrapper is killed: in every case the
    remote worker host exits."""
    ex = listening_executor
    with contextlib.ExitStack() as stack:
        workers = launch(sshd, ex, token_file, processes=1)
        stack.callback(workers.stop, STOP_TIMEOUT)
        more = launch(sshd, ex, token_file, processes=1)
        stack.callback(more.stop, STOP_TIMEOUT)
        # A token file already "on the host": a killed wrapper cannot delete a temporary one.
        third = launch(sshd, ex, token_file, processes=1, remote_token_file=str(token_file))
        stack.callback(third.stop, STOP_TIMEOUT)
        remote = session_pids(workers) | session_pids(more) | session_pids(third)
        (w,) = workers
        (m,) = more
        (t,) = third
        assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024
        w.close_stdin()  # as if the launching process had died
        m.process.kill()  # the ssh client is killed
        assert t.wrapper_pid is not None
        os.kill(t.wrapper_pid, signal.SIGKILL)  # the remote wrapper is killed
        assert w.process.wait(STOP_TIMEOUT) == 0  # the remote worker drained and exited 0
        assert_all_gone(remote)
        assert t.process.wait(STOP_TIMEOUT) == 255  # ssh: the remote command was killed
    assert w.remote_returncode == 0
    assert m.returncode == -signal.SIGKILL


def test_ssh_failure_is_reported(sshd: Sshd, token_file: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True, timeout=30
    )
    with pytest.raises(SSHLaunchError, match=r"(?s)ssh failed.*255.*Permission denied") as info:
        launch_ssh(
            [sshd.destination],
            "tcp://127.0.0.1:9",
            token_file=token_file,
            python=REMOTE_PYTHON,
            ssh_options=sshd.ssh_options(key=stranger),
            output=io.StringIO(),
        )
    assert info.value.host == sshd.destination


def test_missing_zmqexecutor_on_the_host_is_reported(sshd: Sshd, token_file: Path) -> None:
    with pytest.raises(SSHLaunchError, match="cannot import zmqexecutor"):
        launch_ssh(
            sshd.destination,
            "tcp://127.0.0.1:9",
            token_file=token_file,
            python=f"{shlex.quote(sys.executable)} -S",  # no site-packages: no zmqexecutor
            ssh_options=sshd.ssh_options(),
            output=io.StringIO(),
        )


# ---------------------------------------------------------------------------- no sshd needed


def test_remote_command_round_trips_through_the_shell() -> None:
    cmd = remote_command(
        "tcp://head:5555",
        python="~/venv/bin/python",
        processes=3,
        extra_args=["--log-level", "DEBUG"],
    )
    argv = shlex.split(cmd)
    assert argv[0] == "~/venv/bin/python"  # inserted as is: the remote shell expands ~
    assert argv[1] == "-c"
    compile(argv[2], "<remote wrapper>", "exec")
    assert argv[3:] == ["-", "tcp://head:5555", "--processes", "3", "--log-level", "DEBUG"]
    cmd = remote_command("tcp://head:5555", remote_token_file="~/.zmqexecutor/token")
    assert shlex.split(cmd)[3:] == ["~/.zmqexecutor/token", "tcp://head:5555"]


def test_bad_arguments_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZMQEXECUTOR_TOKEN", raising=False)
    monkeypatch.delenv("ZMQEXECUTOR_TOKEN_FILE", raising=False)
    token = write_token_file(tmp_path / "token")
    with pytest.raises(ValueError, match="not an address remote workers can connect to"):
        launch_ssh(["h"], "tcp://0.0.0.0:5555", token_file=token)
    with pytest.raises(ValueError, match="at least one host"):
        launch_ssh([], "tcp://head:5555", token_file=token)
    with pytest.raises(ConfigurationError, match="needs the executor's token"):
        launch_ssh(["h"], "tcp://head:5555")
    with pytest.raises(ValueError, match="not extra_args"):
        launch_ssh(["h"], "tcp://head:5555", token_file=token, extra_args=["--token", "x"])
    with pytest.raises(ValueError, match="processes"):
        launch_ssh(["h"], "tcp://head:5555", token_file=token, processes=0)
    token.chmod(0o644)
    with pytest.raises(ConfigurationError, match="can be read by other users"):
        launch_ssh(["h"], "tcp://head:5555", token_file=token)
    with pytest.raises(ConfigurationError, match="ssh client"):
        launch_ssh(["h"], "tcp://head:5555", token="t", ssh=str(tmp_path / "no-such-ssh"))
