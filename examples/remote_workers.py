"""Remote workers: the executor listens, workers on other hosts connect to it.

Create a token once and copy the file to every host (it must stay private, mode 0600):
    python -m zmqexecutor token            # writes ~/.zmqexecutor/token
On the head node:
    python examples/remote_workers.py tcp://0.0.0.0:5555 --token-file ~/.zmqexecutor/token
On each worker host (the same Python minor version, with zmqexecutor installed):
    zmqexecutor-worker tcp://HEAD:5555 --processes 8 --token-file ~/.zmqexecutor/token

Without arguments it runs everything on this machine, on loopback, with a throwaway token
and two worker hosts it starts itself, so you can try it right away.
"""

import argparse
import os
import socket
import subprocess
import sys
import time
from collections import Counter

from zmqexecutor import ZmqExecutor
from zmqexecutor._security import new_token


def work(x: int) -> tuple[int, str]:
    time.sleep(0.01)
    return x * x, f"{socket.gethostname()}/{os.getppid()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", nargs="?", help="e.g. tcp://0.0.0.0:5555")
    parser.add_argument("--token-file")
    args = parser.parse_args()

    demo = args.listen is None
    token = new_token() if demo else None
    listen = "tcp://127.0.0.1:*" if demo else args.listen
    workers = []
    with ZmqExecutor(listen=listen, token=token, token_file=args.token_file) as executor:
        print(f"executor listening on {executor.address}; start workers with:")
        print(f"    zmqexecutor-worker {executor.address} --processes N --token-file FILE")
        if demo:  # two stand-ins for remote hosts; the token travels in the environment
            env = {**os.environ, "ZMQEXECUTOR_TOKEN": token or ""}
            cmd = [sys.executable, "-m", "zmqexecutor", "worker", executor.address, "-n", "1"]
            workers = [subprocess.Popen([*cmd, "--log-level", "WARNING"], env=env) for _ in "ab"]
        results = list(executor.map(work, range(200)))
        assert [r for r, _ in results] == [x * x for x in range(200)]
        print("tasks per worker host:", dict(Counter(host for _, host in results)))
    for w in workers:
        w.terminate()
        w.wait(timeout=30)


if __name__ == "__main__":
    main()
