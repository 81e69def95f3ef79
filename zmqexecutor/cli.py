"""Command lines: ``zmqexecutor-worker`` and ``python -m zmqexecutor worker``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_TOKEN_FILE,
    ENV_LOG_LEVEL,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    log_format,
)
from .errors import ConfigurationError

EPILOG = """\
exit codes: 0 stopped cleanly (SIGTERM/SIGINT: running tasks finish first; a second SIGINT
aborts them; --once after the executor left; --idle-timeout), 2 bad arguments or an
unsafe/invalid configuration, 4 refused by the executor (different zmqexecutor, Python or
cloudpickle version).

examples:
  python -m zmqexecutor token          # once: writes ~/.zmqexecutor/token (copy it to hosts)
  zmqexecutor-worker tcp://head:5555 --processes 8 --token-file ~/.zmqexecutor/token
      connect to ZmqExecutor(listen="tcp://0.0.0.0:5555", token_file=...)
  zmqexecutor-worker --listen tcp://*:5556 --token-file ~/.zmqexecutor/token
      wait for ZmqExecutor(workers=["tcp://thishost:5556"], token_file=...)
  zmqexecutor-worker tcp://head:5555 -n 16 --listen tcp://10.0.0.5:6000-6015 --token-file ...
      behind a firewall: the 16 worker processes bind ports 6000-6015 (the same with
      --listen tcp://*:5556 --inbox-ports 6000-6015 when the executor attaches)
  zmqexecutor-worker tcp://head:5555 -n 4 --listen tcp://*:6000-6003 \
      --advertise 203.0.113.7:7000-7003 --token-file ...
      in a container run with docker -p 7000-7003:6000-6003: the executor reaches the
      process on port 6000+i at 203.0.113.7:7000+i
"""


def worker_parser(prog: str = "zmqexecutor-worker") -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog=prog,
        description="Run zmqexecutor worker processes on this host for a ZmqExecutor.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "executor",
        nargs="?",
        metavar="EXECUTOR",
        help="the executor's endpoint to connect to, e.g. tcp://head:5555 "
        "(an executor created with listen=...)",
    )
    p.add_argument(
        "--listen",
        metavar="ENDPOINT",
        help="without EXECUTOR: wait on ENDPOINT (e.g. tcp://*:5556) for an executor created "
        "with workers=[...]; with EXECUTOR: the address the worker processes' inboxes bind "
        "to, with a port range for them (tcp://HOST:6000-6015, short for --inbox-ports) or "
        "port * (ephemeral, the default)",
    )
    p.add_argument(
        "--inbox-ports",
        metavar="FIRST-LAST",
        help="each worker process binds its inbox (which the executor connects to) to a free "
        "port of this range, e.g. 6000-6015, for a firewall or a container's published ports; "
        "needs at least --processes ports (default: ephemeral ports)",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST[:FIRST-LAST]",
        help="the host name or address the executor should use to reach this host "
        "(behind NAT, in a container); default: the local address that routes to the "
        "executor. With a port range (for port mapping, e.g. docker -p 7000-7015:6000-6015) "
        "the process bound to inbox port FIRST+i is reached at FIRST+i of this range",
    )
    p.add_argument(
        "--processes",
        "-n",
        type=int,
        default=None,
        metavar="N",
        help="worker processes to run (default: one per core: %(default)s means os.cpu_count())",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"file holding the executor's token (mode 0600; default: ${ENV_TOKEN}, then "
        f"the file named by ${ENV_TOKEN_FILE}); create one with `python -m zmqexecutor token`",
    )
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="the token itself; avoid on shared hosts: other users can read command lines",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a loopback endpoint without a token (any user of this host could then "
        "run code here); never allowed for non-loopback endpoints",
    )
    p.add_argument(
        "--resources",
        metavar="NAME=N[,...]",
        help="what this host has for tasks that ask for it (executor.options(resources=...)), "
        "shared by its worker processes, e.g. GPU=2,MEM=64e9",
    )
    p.add_argument(
        "--max-tasks-per-child",
        type=int,
        metavar="N",
        help="replace a worker process after N tasks (the executor's max_tasks_per_child "
        "applies too; the lower wins)",
    )
    p.add_argument(
        "--no-echo-output",
        dest="echo_output",
        action="store_false",
        help="the worker processes' stdout and stderr, forwarded to the executor, are not "
        "also written to this host's stdout and stderr",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="serve one executor, then exit 0 (for batch jobs)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="exit 0 after S seconds without an executor (default: wait forever)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        metavar="S",
        help="seconds between this host's heartbeats to the executor (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        metavar="S",
        help="an executor silent this long is gone: its running tasks are abandoned and the "
        "host waits for the next executor (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get(ENV_LOG_LEVEL, "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help=f"log level (default: INFO, or ${ENV_LOG_LEVEL})",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def worker_main(argv: Sequence[str] | None = None, prog: str = "zmqexecutor-worker") -> int:
    """``zmqexecutor-worker``: parse arguments, configure logging, run the worker host."""
    from .worker import run_worker

    parser = worker_parser(prog)
    args = parser.parse_args(argv)
    # every other rule is run_worker's, so library callers get the same checks
    if args.executor is None and args.listen is None:
        parser.error("give the executor's endpoint (EXECUTOR) or --listen ENDPOINT")
    logging.basicConfig(level=args.log_level, format=log_format(), stream=sys.stderr)
    if args.token is not None:
        logging.getLogger("zmqexecutor.security").warning(
            "--token is visible to other users of this host in the process list; "
            "prefer --token-file or $%s",
            ENV_TOKEN,
        )
    try:
        return run_worker(
            args.executor,
            listen=args.listen,
            processes=args.processes,
            inbox_ports=args.inbox_ports,
            advertise=args.advertise,
            insecure=args.insecure,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            token=args.token,
            token_file=args.token_file,
            max_tasks_per_child=args.max_tasks_per_child,
            once=args.once,
            idle_timeout=args.idle_timeout,
            resources=args.resources,
            echo_output=args.echo_output,
        )
    except (ConfigurationError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def token_main(argv: Sequence[str] | None = None, prog: str = "python -m zmqexecutor token") -> int:
    """``python -m zmqexecutor token [PATH]``: write a new token file (mode 0600)."""
    from ._security import write_token_file

    p = argparse.ArgumentParser(
        prog=prog,
        description="Create a new random token for an executor and its workers. The file is "
        "created with mode 0600 in a 0700 directory; the token itself is never printed. Copy "
        "the file to every worker host and pass it with token_file= / --token-file.",
    )
    p.add_argument("path", nargs="?", default=DEFAULT_TOKEN_FILE, help="(default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing token file")
    args = p.parse_args(argv)
    try:
        path = write_token_file(args.path, force=args.force)
    except (ConfigurationError, OSError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(path)
    return 0


USAGE = """usage: python -m zmqexecutor COMMAND [options]

commands:
  worker   run worker processes for an executor (same as zmqexecutor-worker)
  token    create a token file for the executor and its workers (alias: keygen)

`python -m zmqexecutor COMMAND --help` describes each."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zmqexecutor worker|token ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "worker":
        return worker_main(rest, prog="python -m zmqexecutor worker")
    if command in ("token", "keygen"):
        return token_main(rest, prog=f"python -m zmqexecutor {command}")
    print(f"python -m zmqexecutor: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
