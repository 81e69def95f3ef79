"""Every script in examples/ runs and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(120)
def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert "sum of squares below 10,000: 333283335000" in out
    assert "30! = 265252859812191058636308480000000" in out
    assert "a lambda: 101" in out
    assert "ValueError(math domain error)" in out


@pytest.mark.timeout(120)
def test_remote_workers_on_loopback() -> None:
    out = run_example("remote_workers.py")
    assert "tasks per worker host:" in out


@pytest.mark.timeout(120)
def test_progress() -> None:
    out = run_example("progress.py", "--plain")  # "done N/M" lines even where tqdm is installed
    assert "as_completed: done 50/50" in out
    assert "map: done 50/50" in out
    assert "submit + as_completed: 3,001,134 primes below 50,000,000" in out
    assert "map: 3,001,134 primes below 50,000,000" in out
    out = run_example("progress.py")  # tqdm (a test dependency) draws its bars on stderr
    assert "done" not in out
    assert "map: 3,001,134 primes below 50,000,000" in out


def test_every_example_is_tested() -> None:
    tested = {"quickstart.py", "remote_workers.py", "progress.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
