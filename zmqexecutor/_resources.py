"""Resources a worker host declares and a task asks for (``--resources GPU=2``,
``executor.options(resources={"GPU": 1})``): checking them, and, inside a worker process,
which units the running task holds (``current_resources()``)."""

from __future__ import annotations

import math
from typing import Any

#: most resource names a host may declare or a task ask for, and the longest name
MAX_RESOURCES = 32
MAX_NAME = 64

#: the units the task running in this worker process holds (set around each task)
_held: dict[str, list[int]] = {}


def check_resources(resources: Any, what: str = "resources") -> dict[str, float]:
    """Return ``resources`` as {name: amount}, or raise ValueError naming what is wrong.

    A request or a declaration is a dict of names to non-negative, finite numbers.
    """
    if not isinstance(resources, dict):
        raise ValueError(
            f"{what} must be a dict of names to non-negative numbers, like {{'GPU': 1}}, "
            f"not {type(resources).__name__}"
        )
    if len(resources) > MAX_RESOURCES:
        raise ValueError(f"{what}: at most {MAX_RESOURCES} names, not {len(resources)}")
    checked: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise ValueError(f"{what}: {name!r} is not a resource name (a string of 1-64 chars)")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, (int, float))
            or not math.isfinite(amount)
            or amount < 0
        ):
            raise ValueError(
                f"{what}: the amount of {name!r} must be a non-negative number, not {amount!r}"
            )
        checked[name] = float(amount) if isinstance(amount, float) else amount
    return checked


def parse_resources(spec: str) -> dict[str, float]:
    """``"GPU=2,MEM=64e9"`` -> {"GPU": 2, "MEM": 64e9}; ValueError saying the form."""
    resources: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, amount = part.partition("=")
        try:
            if not sep:
                raise ValueError
            value = float(amount)
        except ValueError:
            raise ValueError(
                f"--resources {spec!r}: expected NAME=AMOUNT[,NAME=AMOUNT...], e.g. GPU=2,MEM=64e9"
            ) from None
        resources[name.strip()] = int(value) if value.is_integer() else value
    return check_resources(resources, "--resources")


def current_resources() -> dict[str, list[int]]:
    """The resource units the task running in this worker process holds, e.g.
    ``{"GPU": [1]}`` for a task submitted with ``executor.options(resources={"GPU": 1})`` on
    a host started with ``--resources GPU=2``; an empty dict outside such a task.

    Whole units of a declared resource are numbered from 0 on each host, and no two tasks
    running at once on a host hold the same unit: ``CUDA_VISIBLE_DEVICES`` can be set from
    them (see the README).
    """
    return {name: list(units) for name, units in _held.items()}


def hold(units: dict[str, list[int]]) -> None:
    """Set what the task about to run holds (empty: nothing)."""
    global _held
    _held = units
