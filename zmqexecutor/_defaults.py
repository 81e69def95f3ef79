"""Every default value and environment variable name of zmqexecutor, in one place."""

from __future__ import annotations

#: protocol version carried in every message header; bump on any incompatible change
PROTOCOL_VERSION = 1

#: tasks a worker process may hold beyond the one it runs (credit-based flow control).
#: 0 until prefetched tasks can be taken back: a task prefetched behind one that blocks
#: (for instance on another task) would wait although another worker is idle.
DEFAULT_PREFETCH = 0
#: most tasks (or results) packed into one message
DEFAULT_MAX_BATCH = 64
#: a worker sends its results at once unless the tasks are shorter than this (seconds)
RESULT_BATCH_WINDOW = 0.001
#: payload buffers at least this large travel as separate zero-copy frames
OOB_THRESHOLD = 64 * 1024

#: how often a waiting worker repeats HELLO until the executor answers (seconds)
HELLO_INTERVAL = 0.5
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

ENV_LOG_LEVEL = "ZMQEXECUTOR_LOG_LEVEL"
