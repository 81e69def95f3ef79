"""The helpers both sides of the conversation share (``_protocol.py``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zmqexecutor import _protocol as proto


@given(st.lists(st.integers(0, 100), max_size=30), st.integers(1, 150), st.integers(0, 100))
def test_under_limit_splits_in_order_and_under_the_limit(
    costs: list[int], limit: int, first: int
) -> None:
    runs = proto.under_limit(costs, limit, first)
    assert [i for start, end in runs for i in range(start, end)] == list(range(len(costs)))
    for n, (start, end) in enumerate(runs):
        total = sum(costs[start:end]) + (first if n == 0 else 0)
        assert total <= limit or end - start <= 1, (runs, costs)


def test_frame_size_is_the_largest_frame() -> None:
    overhead = proto.RECORD_OVERHEAD
    assert proto.frame_size(b"x" * 10, []) == 10 + overhead
    assert proto.frame_size(b"x" * 10, [], extra=5) == 15 + overhead
    assert proto.frame_size(b"x", [bytearray(10**6)]) == 10**6


def test_function_slots_evict_oldest_first() -> None:
    slots: proto.FunctionSlots[int] = proto.FunctionSlots()
    for i in range(proto.FN_SLOTS + 2):
        slots.add(i.to_bytes(16, "big"), i)
    assert len(slots) == proto.FN_SLOTS
    assert next(iter(slots.values())) == 2


def test_tasks_carry_recipient_and_units() -> None:
    frames = proto.encode_tasks(
        b"s" * 8, [(b"d" * 16, b"fn")], [(7, b"d" * 16, b"args", [], {"GPU": [1]})], b"w" * 16
    )
    recipient, functions, tasks = proto.decode_tasks(frames)
    assert recipient == b"w" * 16
    assert bytes(functions[b"d" * 16]) == b"fn"
    (task,) = tasks
    assert (task.task_id, bytes(task.payload), task.resources) == (7, b"args", {"GPU": [1]})
