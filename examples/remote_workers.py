"""Remote workers: the executor listens, workers on other hosts connect to it.

On the head node:
    python examples/remote_workers.py tcp://0.0.0.0:5555 --insecure
On each worker host (the same Python minor version, with zmqexecutor installed):
    zmqexecutor-worker tcp://HEAD:5555 --processes 8 --insecure

Without arguments it runs everything on this machine (a loopback endpoint needs no
--insecure), starting two worker hosts itself, so you can try it right away.
"""

import argparse
import socket
import subprocess
import sys
import time
from collections import Counter

from zmqexecutor import ZmqExecutor


def work(x: int) -> tuple[int, str]:
    time.sleep(0.01)
    return x * x, socket.gethostname()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", nargs="?", default="tcp://127.0.0.1:*")
    parser.add_argument("--insecure", action="store_true")
    args = parser.parse_args()

    local_demo = args.listen.startswith("tcp://127.0.0.1")
    workers = []
    with ZmqExecutor(listen=args.listen, insecure=args.insecure) as executor:
        if local_demo:  # stand-ins for two remote hosts
            cmd = [sys.executable, "-m", "zmqexecutor", "worker", executor.address, "-n", "1"]
            workers = [subprocess.Popen([*cmd, "--log-level", "WARNING"]) for _ in range(2)]
        print(f"executor listening on {executor.address}; start workers with:")
        print(f"    zmqexecutor-worker {executor.address} --processes N")
        results = list(executor.map(work, range(200)))
        assert [r for r, _ in results] == [x * x for x in range(200)]
        print("tasks per host:", dict(Counter(host for _, host in results)))
    for w in workers:
        w.terminate()
        w.wait(timeout=30)


if __name__ == "__main__":
    main()
