"""Start worker hosts over SSH, and stop them again.

::

    from zmqexecutor import ZmqExecutor
    from zmqexecutor.ssh import launch_ssh

    with ZmqExecutor(listen="tcp://0.0.0.0:5555", token_file="~/.zmqexecutor/token") as ex:
        with launch_ssh(["hostA", "alice@hostB"], ex.address,
                        token_file="~/.zmqexecutor/token", processes=8):
            print(sum(ex.map(abs, range(1000))))

Each host gets one ``ssh HOST PYTHON -c WRAPPER ...`` session (the system OpenSSH client, a
subprocess; ``-T``, ``BatchMode=yes``: a missing key fails at once instead of prompting).
On the remote side a small Python wrapper does this; its source is the module
``zmqexecutor/_ssh_remote.py``, sent whole on the command line (so the host needs nothing
installed beyond zmqexecutor itself, and the wrapper uses no more of the remote zmqexecutor
than ``python -m zmqexecutor worker``: see that module for what it must keep):

1. checks that ``PYTHON`` can import zmqexecutor (otherwise exits 3 with a message);
2. reads the token from the first line of its stdin and writes it, with umask 077, to a file
   in a fresh 0700 temporary directory (or uses ``remote_token_file``, a file already on the
   host); the token never appears on a command line, local or remote;
3. starts ``PYTHON -m zmqexecutor worker EXECUTOR_ADDRESS [--processes N] [EXTRA_ARGS]
   --token-file FILE`` in its own session (process group) and reports ``STARTED`` with the
   worker host's pid on stdout;
4. then reads control lines on its stdin, which is the ssh channel:

   - ``TERM``: SIGTERM to the worker host, which lets running tasks finish, then exits 0;
   - ``KILL``: SIGKILL to the worker host's whole process group (its worker processes too);
   - end of file (the local ssh client, or the process that launched it, is gone, or the
     connection was closed): SIGTERM, as for ``TERM``.  SIGHUP, SIGINT and SIGTERM sent to
     the wrapper itself are forwarded as SIGTERM too.

   The worker host is also started with the parent-death signal set to SIGTERM
   (``PR_SET_PDEATHSIG``), so it drains and exits even if the wrapper is killed outright.

5. when the worker host exits, kills anything left in its process group, deletes the
   temporary token directory, reports ``EXITED CODE`` and exits with the worker's code (a
   signal N becomes 128+N), which ssh passes back as its own exit status.

Why stdin and not signals: without a terminal, sshd does not signal the remote command when
the connection closes, and a ``kill`` over a second ssh connection needs a second login that
can fail. The ssh channel's stdin reaches end of file whenever the session ends for any
reason, so even a launcher killed with SIGKILL leaves no worker behind: its ssh client sees
end of file on its own stdin, forwards it, and the worker drains and exits.

:meth:`SSHWorkers.stop` sends ``TERM``, waits up to ``timeout`` for the sessions to end, then
sends ``KILL`` and closes the channel, waits a little more, and finally kills the local ssh
clients. Everything the remote side writes to stderr (the worker's log) is copied to
``output`` (default: this process's stderr), each line prefixed with ``[host]``. The worker
hosts run with ``--no-echo-output``: their tasks' output reaches the executor's terminal
once, forwarded by the executor (``forward_output``), not a second time through ssh.

Limits: a wrapper killed with SIGKILL cannot delete its temporary token file (private, in
a 0700 directory under the remote ``$TMPDIR`` or /tmp); use ``remote_token_file`` where that
matters. The remote login shell must be POSIX-like (sh, bash, dash, zsh: the command is quoted
with :func:`shlex.quote`). If the network between this machine and a host fails silently,
the local ssh client gives up after about a minute (``ServerAliveInterval=15``,
``ServerAliveCountMax=4``), but the remote sshd may keep the session, and so the worker host,
until its own TCP timeouts fire; the worker host then keeps waiting for an executor.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from types import TracebackType
from typing import TextIO

from ._net import is_wildcard, parse_endpoint
from ._security import resolve_token
from ._ssh_remote import EXITED as _EXITED
from ._ssh_remote import STARTED as _STARTED
from ._ssh_remote import TOKEN_FROM_STDIN as _TOKEN_FROM_STDIN
from .errors import ConfigurationError, ZmqExecutorError

__all__ = ["SSHLaunchError", "SSHWorker", "SSHWorkers", "launch_ssh"]

log = logging.getLogger("zmqexecutor.ssh")

#: options put after the caller's ``ssh_options`` (ssh uses the first value it gets for an
#: option, so the caller's own ``-o BatchMode=no`` etc. win)
DEFAULT_SSH_OPTIONS: tuple[str, ...] = (
    "-T",
    "-o",
    "BatchMode=yes",
    "-o",
    "ServerAliveInterval=15",
    "-o",
    "ServerAliveCountMax=4",
)
#: how long stop() waits after KILL before killing the local ssh clients (seconds)
KILL_GRACE = 5.0
#: lines of each host's output kept for error messages
OUTPUT_KEPT = 200


class SSHLaunchError(ZmqExecutorError, RuntimeError):
    """A worker host could not be started over ssh (ssh failed, zmqexecutor missing...)."""

    def __init__(self, host: str, message: str, output: Sequence[str] = ()) -> None:
        self.host = host
        self.output = list(output)
        tail = "".join(f"\n    {line}" for line in self.output[-20:])
        super().__init__(f"ssh {host}: {message}" + (f"; its output:{tail}" if tail else ""))


class SSHWorker:
    """One ssh session running one worker host.

    Attributes:
        host: the ssh destination, as given.
        process: the local ``ssh`` client.
        remote_pid: pid of the remote worker host (``zmqexecutor worker``), once started.
        wrapper_pid: pid of the remote wrapper that started it (its parent).
        remote_hostname: the remote host's own name (``socket.gethostname()``).
        remote_version: zmqexecutor's version on the remote host.
        remote_returncode: the worker host's exit status, as the wrapper reported it.
        output: the last lines the remote side wrote to stderr.
    """

    def __init__(self, host: str, process: subprocess.Popen[bytes]) -> None:
        self.host = host
        self.process = process
        self.remote_pid: int | None = None
        self.wrapper_pid: int | None = None
        self.remote_hostname: str | None = None
        self.remote_version: str | None = None
        self.remote_returncode: int | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_KEPT)
        self.reported = threading.Event()  # STARTED arrived, or the session ended first
        self._stdin_lock = threading.Lock()

    def __repr__(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited {code}"
        return f"<SSHWorker {self.host} remote_pid={self.remote_pid} {state}>"

    @property
    def returncode(self) -> int | None:
        """The local ssh client's exit status (the worker host's, or 255 for ssh errors);
        None while the session runs."""
        return self.process.poll()

    def send(self, command: bytes) -> bool:
        """Write a control line to the remote wrapper; False if the channel is closed."""
        with self._stdin_lock:
            stdin = self.process.stdin
            if stdin is None or stdin.closed:
                return False
            try:
                stdin.write(command + b"\n")
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return False
            return True

    def close_stdin(self) -> None:
        """Close the channel's stdin: the remote wrapper sees end of file (SIGTERM)."""
        with self._stdin_lock:
            stdin = self.process.stdin
            if stdin is not None and not stdin.closed:
                with contextlib.suppress(OSError):
                    stdin.close()


class _OutputPump(threading.Thread):
    """Reads every session's stdout (wrapper reports) and stderr (copied to ``output``)."""

    def __init__(self, workers: Sequence[SSHWorker], output: TextIO | None) -> None:
        super().__init__(name="zmqexecutor-ssh-output", daemon=True)
        self._output = output
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._partial: dict[int, bytes] = {}
        self._open: dict[SSHWorker, int] = {}
        for w in workers:
            for stream, kind in ((w.process.stdout, "out"), (w.process.stderr, "err")):
                assert stream is not None
                self._selector.register(stream.fileno(), selectors.EVENT_READ, (w, kind))
                self._open[w] = self._open.get(w, 0) + 1

    def quit(self) -> None:
        """Stop reading (from another thread), even if some stream is still open."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        try:
            while self._open:
                for key, _ in self._selector.select():
                    if key.data is None:
                        return
                    worker, kind = key.data
                    self._read(key.fd, worker, kind)
        finally:
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            for worker in list(self._open):
                worker.reported.set()

    def _read(self, fd: int, worker: SSHWorker, kind: str) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        buf = self._partial.pop(fd, b"") + data
        if not data:
            self._selector.unregister(fd)
            if buf:
                self._line(worker, kind, buf)
            self._open[worker] -= 1
            if not self._open[worker]:
                del self._open[worker]
                worker.reported.set()
            return
        *complete, rest = buf.split(b"\n")
        if rest:
            self._partial[fd] = rest
        for line in complete:
            self._line(worker, kind, line)

    def _line(self, worker: SSHWorker, kind: str, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        if kind == "out" and line.startswith(_STARTED + " "):
            try:
                _, pid, wrapper_pid, hostname, version = line.split(" ", 4)
                worker.remote_pid, worker.wrapper_pid = int(pid), int(wrapper_pid)
            except ValueError:
                pass
            else:
                worker.remote_hostname, worker.remote_version = hostname, version
                worker.reported.set()
                return
        if kind == "out" and line.startswith(_EXITED + " "):
            try:
                worker.remote_returncode = int(line.split()[1])
                return
            except (IndexError, ValueError):
                pass
        worker.output.append(line)
        sink = self._output if self._output is not None else sys.stderr
        try:
            sink.write(f"[{worker.host}] {line}\n")
            sink.flush()
        except (OSError, ValueError):  # closed (e.g. a test's capture ended)
            pass


class SSHWorkers:
    """The worker hosts started by :func:`launch_ssh`; a context manager that stops them.

    Iterating yields one :class:`SSHWorker` per host, in the order given.
    """

    def __init__(self, workers: Sequence[SSHWorker], output: TextIO | None) -> None:
        self.workers: list[SSHWorker] = list(workers)
        self._pump = _OutputPump(self.workers, output)
        self._pump.start()
        self._stop_lock = threading.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        running = sum(w.returncode is None for w in self.workers)
        return f"<SSHWorkers {running}/{len(self.workers)} running: {self.hosts}>"

    def __iter__(self) -> Iterator[SSHWorker]:
        return iter(self.workers)

    def __len__(self) -> int:
        return len(self.workers)

    def __enter__(self) -> SSHWorkers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def hosts(self) -> list[str]:
        return [w.host for w in self.workers]

    @property
    def returncodes(self) -> dict[str, int | None]:
        """Each host's ssh exit status (None while it runs); with duplicate hosts, the last."""
        return {w.host: w.returncode for w in self.workers}

    def running(self) -> list[SSHWorker]:
        """The sessions still running."""
        return [w for w in self.workers if w.returncode is None]

    def wait_started(self, timeout: float | None = None) -> None:
        """Wait until every remote wrapper has started its worker host.

        Raises:
            SSHLaunchError: a session ended before its worker host started (the message
                carries ssh's or the wrapper's output), or ``timeout`` passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for w in self.workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not w.reported.wait(remaining):
                raise SSHLaunchError(
                    w.host, f"the worker host did not start within {timeout}s", w.output
                )
            if w.remote_pid is None:
                try:
                    code = w.process.wait(KILL_GRACE)
                except subprocess.TimeoutExpired:
                    code = None
                why = "ssh failed" if code == 255 else "the remote wrapper failed"
                raise SSHLaunchError(w.host, f"{why} (exit status {code})", w.output)

    def stop(self, timeout: float | None = 30.0) -> dict[str, int | None]:
        """Stop every worker host and return :attr:`returncodes`.

        Sends ``TERM`` (running tasks finish, then the worker host exits 0) and waits up to
        ``timeout`` seconds (None: as long as it takes) for the ssh sessions to end; then
        sends ``KILL`` (the worker host and its processes are killed) and waits up to
        ``KILL_GRACE`` more; then kills the local ssh clients. Idempotent.
        """
        with self._stop_lock:
            if self._stopped:
                return self.returncodes
            self._stopped = True
            running = self.running()
            if running:
                log.info("stopping %d ssh worker host(s): %s", len(running), self.hosts)
            for w in running:
                w.send(b"TERM")
            deadline = None if timeout is None else time.monotonic() + timeout
            _wait_all(running, deadline)
            late = [w for w in running if w.returncode is None]
            for w in late:
                log.warning("ssh %s: still running %ss after TERM; killing it", w.host, timeout)
                w.send(b"KILL")
                w.close_stdin()
            _wait_all(late, time.monotonic() + KILL_GRACE)
            for w in late:
                if w.returncode is None:
                    log.warning("ssh %s: the session did not end; killing the ssh client", w.host)
                    w.process.kill()
                    w.process.wait()
            for w in self.workers:
                w.close_stdin()
            # Every ssh client has exited: its pipes reach end of file unless some other
            # process (a ProxyCommand) still holds them.
            self._pump.join(KILL_GRACE)
            if self._pump.is_alive():
                self._pump.quit()
                self._pump.join()
            for w in self.workers:
                for stream in (w.process.stdout, w.process.stderr):
                    if stream is not None:
                        stream.close()
            return self.returncodes


def _wait_all(workers: Iterable[SSHWorker], deadline: float | None) -> None:
    for w in workers:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(remaining)


def remote_source() -> str:
    """The remote wrapper's source, as :func:`remote_command` sends it: the file
    ``zmqexecutor/_ssh_remote.py`` of this installation, unchanged."""
    package = __package__ or "zmqexecutor"
    return resources.files(package).joinpath("_ssh_remote.py").read_text(encoding="utf-8")


def remote_command(
    executor_address: str,
    *,
    python: str = "python3",
    processes: int | None = None,
    remote_token_file: str | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """The command line ``launch_ssh`` has the remote shell run (it holds no secret)."""
    worker_args = [executor_address]
    if processes is not None:
        worker_args += ["--processes", str(processes)]
    worker_args += list(extra_args)
    token_arg = _TOKEN_FROM_STDIN if remote_token_file is None else remote_token_file
    quoted = " ".join(shlex.quote(a) for a in ["-c", remote_source(), token_arg, *worker_args])
    return f"{python} {quoted}"


def launch_ssh(
    hosts: Iterable[str] | str,
    executor_address: str,
    *,
    token_file: str | os.PathLike[str] | None = None,
    token: str | None = None,
    processes: int | None = None,
    python: str = "python3",
    ssh_options: Sequence[str] = (),
    remote_token_file: str | None = None,
    extra_args: Sequence[str] = (),
    ssh: str = "ssh",
    start_timeout: float | None = 60.0,
    output: TextIO | None = None,
) -> SSHWorkers:
    """Start ``zmqexecutor-worker EXECUTOR_ADDRESS`` on each host over ssh.

    Args:
        hosts: ssh destinations (``host``, ``user@host``, ``ssh://user@host:port`` or a
            ``Host`` alias from ~/.ssh/config); a single string is one host. A host given
            twice gets two worker hosts.
        executor_address: where the workers connect: the executor's ``address`` (created
            with ``listen=...``); it must name a host the remote machines can reach, not a
            wildcard such as ``0.0.0.0``.
        token_file: the executor's token file here; its contents travel over the ssh
            channel's stdin to a private temporary file on each host (never on a command
            line). Without it (and without ``token``): $ZMQEXECUTOR_TOKEN, then
            $ZMQEXECUTOR_TOKEN_FILE, as for the executor.
        token: the token itself instead of ``token_file``.
        processes: worker processes per host (default: one per core of that host).
        python: the remote command that runs Python with zmqexecutor installed; inserted
            into the remote shell's command line as is, so ``~/venv/bin/python`` and
            ``env VAR=1 python3`` work.
        ssh_options: extra ``ssh`` arguments before the host, e.g. ``("-p", "2222", "-i",
            key)``; they take precedence over the defaults (``-T``, ``BatchMode=yes``,
            ``ServerAliveInterval=15``, ``ServerAliveCountMax=4``).
        remote_token_file: a token file already present on every host (mode 0600; ``~`` is
            expanded there); then no token is sent and ``token_file`` is not read.
        extra_args: more ``zmqexecutor-worker`` flags, e.g. ``("--log-level", "WARNING")``.
        ssh: the ssh client to run.
        start_timeout: wait this long for every host to report that its worker host
            started, and raise SSHLaunchError (after stopping the others) if one did not;
            None: return at once, without checking.
        output: where the remote stderr (the worker hosts' logs, ssh errors) is copied, each
            line prefixed with ``[host]``; default: this process's ``sys.stderr``.

    Returns:
        SSHWorkers; call ``stop()`` or use it as a context manager.

    Raises:
        ConfigurationError: no token, or an unreadable / world-readable token file, or
            ``ssh`` not found.
        ValueError: no hosts, a bad ``executor_address``, ``processes`` < 1, or a token
            flag in ``extra_args``.
        SSHLaunchError: a host failed to start its worker host within ``start_timeout``.
    """
    host_list = [hosts] if isinstance(hosts, str) else list(hosts)
    if not host_list:
        raise ValueError("launch_ssh needs at least one host")
    endpoint = parse_endpoint(executor_address)
    if endpoint.transport != "tcp" or is_wildcard(endpoint.host) or endpoint.port == "*":
        raise ValueError(
            f"{executor_address!r} is not an address remote workers can connect to; pass "
            "the executor's .address (tcp://HOST:PORT)"
        )
    if processes is not None and processes < 1:
        raise ValueError("processes must be at least 1")
    if any(a == "--token" or a.startswith(("--token=", "--token-file")) for a in extra_args):
        raise ValueError("pass the token with token_file= or remote_token_file=, not extra_args")
    secret: bytes | None = None
    if remote_token_file is None:
        resolved = resolve_token(token, None if token_file is None else os.fspath(token_file))
        if resolved is None:
            raise ConfigurationError(
                "launch_ssh needs the executor's token: token_file=..., remote_token_file=... "
                "(a file already on the hosts), or $ZMQEXECUTOR_TOKEN(_FILE)"
            )
        secret = resolved.encode()
    command = remote_command(
        executor_address,
        python=python,
        processes=processes,
        remote_token_file=remote_token_file,
        # the hosts' stderr comes here, and so does their tasks' output (forward_output):
        # once is enough
        extra_args=("--no-echo-output", *extra_args),
    )

    workers: list[SSHWorker] = []
    try:
        for host in host_list:
            argv = [ssh, *ssh_options, *DEFAULT_SSH_OPTIONS, host, command]
            try:
                # Own session: a Ctrl-C in the terminal reaches this process, which then
                # stops the workers in order, not the ssh clients directly.
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise ConfigurationError(
                    f"the ssh client {ssh!r} was not found (install openssh-client)"
                ) from None
            worker = SSHWorker(host, proc)
            workers.append(worker)
            if secret is not None:
                worker.send(secret)  # the wrapper's first line; ssh's stdin is a pipe
    except BaseException:
        group = SSHWorkers(workers, output)
        group.stop(timeout=KILL_GRACE)
        raise

    group = SSHWorkers(workers, output)
    if start_timeout is not None:
        try:
            group.wait_started(start_timeout)
        except BaseException:
            group.stop(timeout=KILL_GRACE)
            raise
        from . import __version__

        for w in workers:
            log.info(
                "ssh %s: worker host pid %s on %s (zmqexecutor %s)",
                w.host,
                w.remote_pid,
                w.remote_hostname,
                w.remote_version,
            )
            if w.remote_version != __version__:
                log.warning(
                    "ssh %s: zmqexecutor %s there, %s here; use the same version everywhere",
                    w.host,
                    w.remote_version,
                    __version__,
                )
    return group
