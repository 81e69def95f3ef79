"""The remote end of :mod:`zmqexecutor.ssh`: runs one worker host on an ssh host, driven by stdin.

:func:`zmqexecutor.ssh.remote_command` sends this file's source, byte for byte, on the remote
command line (``PYTHON -c SOURCE TOKEN_ARG WORKER_ARGS...``), so the host needs nothing
installed but zmqexecutor. What it does, step by step, is told in :mod:`zmqexecutor.ssh`.
What it promises, and so what an edit must keep:

- Its only use of the remote zmqexecutor is ``PYTHON -m zmqexecutor worker ARGS --token-file
  FILE`` (plus an import to check it is there, and ``__version__`` if any, for the report): the
  host may have another zmqexecutor version, and the executor's version handshake, not this
  script, decides whether the two can work together. Standard library only.
- It parses and runs up to its import check on Python 3.6 and later (no ``from __future__
  import annotations``, no ``:=``, no positional-only parameters; annotations naming more
  than builtins are strings): a host whose ``python3`` is too old for zmqexecutor gets the
  "cannot import zmqexecutor" message and exit status 3, not a SyntaxError.
- On stdout it writes only the :data:`STARTED` and :data:`EXITED` lines that ssh.py parses
  (it imports the markers from here); messages go to stderr.
- It reads its stdin with ``os.read`` (no buffered ``sys.stdin`` shared with a thread) and
  leaves with ``os._exit``, so interpreter shutdown never waits on the thread blocked in that
  read.
- Importing it does nothing: it runs only as ``__main__``.

Exit status: the worker host's (a signal N becomes 128+N); 2 no token arrived on stdin; 3
zmqexecutor cannot be imported; 1 anything unexpected (its ``repr`` on stderr).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names for the string annotations; never imported when run
    from collections.abc import Callable, Iterator
    from typing import TextIO

#: ``STARTED WORKER_PID WRAPPER_PID HOSTNAME VERSION``: the worker host is running
STARTED = "ZMQEXECUTOR-SSH-STARTED"
#: ``EXITED CODE``: the worker host exited with CODE (negative: killed by that signal)
EXITED = "ZMQEXECUTOR-SSH-EXITED"
#: TOKEN_ARG meaning "the token is the first line of stdin" (otherwise: a token file's path)
TOKEN_FROM_STDIN = "-"

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def say(line: str, stream: "TextIO | None" = None) -> None:
    """Write one line to ``stream`` (default stdout), if anyone is still reading."""
    try:
        out = sys.stdout if stream is None else stream
        out.write(line + "\n")
        out.flush()
    except (OSError, ValueError):  # the channel is gone (ssh killed): nobody to tell
        pass


def control_lines() -> "Iterator[bytes]":
    """The lines arriving on stdin (the ssh channel), stripped, until end of file."""
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(0, 4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.strip()


class WorkerHost:
    """The worker host this wrapper starts, and the two ways to stop it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.lock = threading.RLock()  # a signal handler may interrupt a holder

    def terminate(self, *_: object) -> None:
        """SIGTERM to the worker host, once (it lets running tasks finish)."""
        with self.lock:
            proc, stopping = self.proc, self.stopping
            self.stopping = True
            if proc is not None and not stopping and proc.returncode is None:
                os.kill(proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the worker host's whole process group (its worker processes too)."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def write_token_file(token: bytes) -> "tuple[str, str]":
    """Write ``token`` to a new private file; return (its directory, its path)."""
    tmpdir = tempfile.mkdtemp(prefix="zmqexecutor-ssh-")
    token_file = os.path.join(tmpdir, "token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token + b"\n")
    return tmpdir, token_file


def parent_death_signal() -> "Callable[[], None]":
    """A ``preexec_fn``: the child gets SIGTERM when this wrapper dies, even of SIGKILL."""
    me = os.getpid()
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        prctl = None

    def die_with_me() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))  # Linux only
        if os.getppid() != me:  # the wrapper died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return die_with_me


def main(argv: "list[str]") -> int:
    """Run ``python -m zmqexecutor worker ARGS`` until it exits; return the exit status."""
    token_arg, args = argv[0], argv[1:]
    hostname = socket.gethostname()
    worker = WorkerHost()
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, worker.terminate)
    try:
        import zmqexecutor
    except ImportError as e:
        say(
            f"zmqexecutor-ssh: {sys.executable} on {hostname} cannot import zmqexecutor ({e}); "
            "install it there or pass python=...",
            sys.stderr,
        )
        return 3
    os.umask(0o077)
    control = control_lines()
    tmpdir = None
    if token_arg == TOKEN_FROM_STDIN:
        token = next(control, b"")
        if not token:
            say("zmqexecutor-ssh: no token arrived on stdin", sys.stderr)
            return 2
        tmpdir, token_file = write_token_file(token)
        del token
    else:
        token_file = os.path.expanduser(token_arg)
    preexec_fn = parent_death_signal()
    try:
        with worker.lock:
            if worker.stopping:
                return 128 + signal.SIGTERM
            cmd = [sys.executable, "-m", "zmqexecutor", "worker", *args]
            worker.proc = proc = subprocess.Popen(
                [*cmd, "--token-file", token_file],
                stdin=subprocess.DEVNULL,
                stdout=2,
                start_new_session=True,
                preexec_fn=preexec_fn,
            )

        def watch() -> None:
            for command in control:
                if command == b"TERM":
                    worker.terminate()
                elif command == b"KILL":
                    worker.kill()
            worker.terminate()  # end of file: the launcher or its connection is gone

        version = getattr(zmqexecutor, "__version__", "?")
        say(f"{STARTED} {proc.pid} {os.getpid()} {hostname} {version}")
        threading.Thread(target=watch, daemon=True).start()
        code = proc.wait()
        worker.kill()  # nothing of this session outlives it
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    say(f"{EXITED} {code}")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except BaseException as e:
        say(f"zmqexecutor-ssh: {e!r}", sys.stderr)
        status = 1
    os._exit(status)
