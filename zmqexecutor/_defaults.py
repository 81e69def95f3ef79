"""Every default value and environment variable name of zmqexecutor, in one place."""

from __future__ import annotations

#: protocol version carried in every message header; bump on any incompatible change
PROTOCOL_VERSION = 4

#: a worker process may hold tasks beyond the one it runs (prefetch) only while they are
#: known to be short: at most this many seconds of expected work queued per slot...
PREFETCH_BUDGET = 0.005
#: ...and at most this many tasks per slot...
MAX_PREFETCH = 256
#: ...and only while at least this many tasks per ready slot wait in the executor's queue
PREFETCH_BACKLOG = 4
#: on a link with a round trip (RTT, measured per host), a worker may also hold this many
#: round trips of expected work beyond the budget, so that it never idles while results and
#: new tasks cross the link (the bandwidth-delay product of TCP's window)...
WINDOW_RTTS = 2.0
#: ...of tasks known to be short for that link: expected to run at most this many RTTs (a
#: longer task loses at most 1/10 of its time to the round trip if it is not prefetched)...
SHORT_RTTS = 10.0
#: ...and at most this many tasks per slot more; a task counts at least this long
#: (seconds: what a worker spends on a task besides running it), so that the window of a
#: no-op task is a number of tasks, not unbounded
MAX_WINDOW = 4096
TASK_COST_FLOOR = 20e-6
#: a host's round trip is the least of its last this many measurements: a measurement also
#: holds the time its task and result waited for the executor's busy loop, which grows
#: with the window; the least of them is the link's own (as TCP's and BBR's min RTT)
RTT_SAMPLES = 16
#: a worker with a free slot and nothing to take asks a worker holding more than one round
#: trip of queued work to give back its tail (RECALL) if what it would take back outlasts
#: this many round trips (the RECALL's own round trip, and sending the tasks on)
RECALL_RTTS = 1.5
#: a worker process looks at its inbox between tasks at most this often (seconds) while it
#: works through what it holds: new tasks join its queue, RECALLs are answered
INBOX_CHECK_INTERVAL = 0.0005
#: most tasks (or results) packed into one message
DEFAULT_MAX_BATCH = 64
#: a worker holds the results of short tasks for at most about this long (seconds) to batch
#: them; a crash loses the results it holds, so keep it small
RESULT_BATCH_WINDOW = 0.00025
#: payload buffers at least this large travel as separate zero-copy frames
OOB_THRESHOLD = 64 * 1024

#: how often worker hosts say they are alive, and how long silence means a lost peer (seconds)
DEFAULT_HEARTBEAT_INTERVAL = 1.0
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
#: how often a waiting worker repeats HELLO until the executor answers (seconds)
HELLO_INTERVAL = 0.5
#: sockets in the executor's ZeroMQ context (one per worker process, plus a few); each also
#: costs file descriptors, see _net.raise_open_file_limit
MAX_SOCKETS = 65536
#: host ids declared lost that the executor remembers, so a late heartbeat cannot revive one
LOST_HOSTS_KEPT = 1024
#: how long results of a dead worker's finished tasks may still arrive (seconds)
LOST_RESULT_GRACE = 1.0
#: how long shutdown waits for worker processes to exit before killing them (seconds)
WORKER_EXIT_TIMEOUT = 5.0
#: first and largest delay before re-spawning a worker process that failed at start (seconds)
RESPAWN_BACKOFF_MIN = 0.5
RESPAWN_BACKOFF_MAX = 30.0
#: callables kept pickled per executor (content-addressed on the workers)
FN_CACHE_SIZE = 128
#: housekeeping tick of the dispatcher and worker loops (seconds)
TICK = 0.5
#: how long to wait before warning that tasks are queued but no worker is connected (seconds)
NO_WORKER_WARNING = 10.0

#: how long ZmqExecutor.versions() waits for each host to name its package versions (seconds)
DEFAULT_VERSIONS_TIMEOUT = 5.0
#: most package names one versions() call may ask about, and the longest name: the question
#: is answered by a worker process between tasks, so it must stay small
MAX_VERSION_PACKAGES = 100
MAX_PACKAGE_NAME_LENGTH = 128

ENV_LOG_LEVEL = "ZMQEXECUTOR_LOG_LEVEL"
ENV_TOKEN = "ZMQEXECUTOR_TOKEN"
ENV_TOKEN_FILE = "ZMQEXECUTOR_TOKEN_FILE"
DEFAULT_TOKEN_FILE = "~/.zmqexecutor/token"

#: largest frame accepted on any socket (ZMQ_MAXMSGSIZE is per frame); larger tasks and
#: results fail on their future instead
DEFAULT_MAX_MESSAGE_SIZE = 2**30

#: a connection to a bound socket that has not finished the ZMTP handshake (greeting, CURVE
#: HELLO/WELCOME/INITIATE/READY, the ZAP check) after this long is closed (seconds; libzmq
#: waits 30). Until then it costs a file descriptor, and anyone who can reach the port can
#: open such connections without the token. A CURVE handshake is two round trips plus a
#: ZAP call in a Python thread: 10 s leaves room for a 1 s round trip (satellite), a few
#: TCP retransmissions and a GIL held by a busy process; a worker that still misses it
#: simply reconnects.
HANDSHAKE_TIMEOUT = 10.0
#: a process that listens on TCP raises its soft limit on open files (RLIMIT_NOFILE) to its
#: hard limit, but not beyond this: room for tens of thousands of connections, while
#: programs it starts that loop over every possible fd (or use select()) are not slowed or
#: broken by a limit of a million
OPEN_FILES_WANTED = 65536


def log_format() -> str:
    """The log line of a worker host and its worker processes: time, host, logger[pid]."""
    import socket

    return f"%(asctime)s {socket.gethostname()} %(name)s[%(process)d] %(levelname)s %(message)s"


#: remote tasks' output (stdout, stderr) forwarded to the executor: each host sends at most
#: this many bytes per second on average...
OUTPUT_RATE = 256 * 1024
#: ...and at most this many at once after a quiet spell; lines beyond are dropped (counted
#: in ExecutorStats.output_dropped; the host still echoes them to its own terminal)
OUTPUT_BURST = 1024 * 1024
#: a forwarded line longer than this many bytes (characters at the executor) is cut
OUTPUT_MAX_LINE = 16 * 1024
#: a host sends one OUTPUT message at most this often (seconds) while output flows...
OUTPUT_FLUSH_INTERVAL = 0.01
#: ...or as soon as it holds this many bytes
OUTPUT_BATCH = 64 * 1024
#: OUTPUT messages a host queues for a slow executor before it drops new ones
OUTPUT_SNDHWM = 16
#: bytes of output queued for a writer thread (the executor's printer, a host's echo);
#: past it, new lines are dropped and counted, so a blocked terminal stalls nothing else
OUTPUT_QUEUE = 1024 * 1024
#: at shutdown, an executor that had remote workers waits for their last output (it takes
#: another path than the results, through the host's supervisor) until none has come for
#: this long (seconds)...
OUTPUT_SHUTDOWN_QUIET = 0.05
#: ...but no longer than this in all
OUTPUT_SHUTDOWN_MAX = 0.5
