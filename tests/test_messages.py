"""The control messages (``_messages.py``): each one round-trips, and every check of every
field refuses the values its Check lists, naming the field. The malformed messages are made
from the records themselves (``Message.forge``), the valid ones are ``peers.VALID_MESSAGES``:
the schema exists once."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from peers import VALID_MESSAGES, example

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto
from zmqexecutor._defaults import OUTPUT_MAX_LINE
from zmqexecutor._protocol import Kind, OutputChunk, ProtocolError

SESSION = b"s" * 8


def name(m: msg.Message) -> str:
    return type(m).__name__


def wire_fields(m: msg.Message) -> list[dataclasses.Field[Any]]:
    """The fields that travel in the JSON body (WELCOME's initializer is a frame)."""
    return [f for f in dataclasses.fields(m) if not f.metadata.get("frame")]


BAD_VALUES = [
    pytest.param(m, f.name, bad, id=f"{name(m)}.{f.name}={bad!r:.20}")
    for m in VALID_MESSAGES
    for f in wire_fields(m)
    for bad in msg.check_of(f).invalid()
]
REQUIRED = [
    pytest.param(m, f.name, id=f"{name(m)}.{f.name}")
    for m in VALID_MESSAGES
    for f in wire_fields(m)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]
OPTIONAL = [
    pytest.param(m, f, id=f"{name(m)}.{f.name}")
    for m in VALID_MESSAGES
    for f in wire_fields(m)
    if not (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
]


def test_every_control_kind_has_a_record_and_an_example() -> None:
    binary = {Kind.TASKS, Kind.RESULTS}
    assert set(msg.BY_KIND) == set(Kind) - binary
    assert {type(m) for m in VALID_MESSAGES} == set(msg.BY_KIND.values())
    assert all(msg.BY_KIND[m.KIND] is type(m) for m in VALID_MESSAGES)


@pytest.mark.parametrize("m", VALID_MESSAGES, ids=name)
def test_round_trip(m: msg.Message) -> None:
    frames = m.encode(SESSION)
    kind, session, _ = proto.parse_header(frames[0])
    assert (kind, session) == (m.KIND, SESSION)
    assert type(m).decode(frames) == m


@pytest.mark.parametrize("m", VALID_MESSAGES, ids=name)
def test_every_field_has_values_it_refuses(m: msg.Message) -> None:
    """A field without any refused value would go untested below."""
    for f in wire_fields(m):
        assert msg.check_of(f).invalid(), f"{name(m)}.{f.name} refuses nothing"


@pytest.mark.parametrize(("m", "field", "bad"), BAD_VALUES)
def test_a_bad_field_is_a_protocol_error_naming_it(m: msg.Message, field: str, bad: Any) -> None:
    with pytest.raises(ProtocolError, match=f"{m.KIND.name} with a bad '{field}'"):
        type(m).decode(m.forge(SESSION, **{field: bad}))


@pytest.mark.parametrize(("m", "field"), REQUIRED)
def test_a_missing_field_is_a_protocol_error_naming_it(m: msg.Message, field: str) -> None:
    with pytest.raises(ProtocolError, match=f"{m.KIND.name} without '{field}'"):
        type(m).decode(m.forge(SESSION, **{field: msg.ABSENT}))


@pytest.mark.parametrize(("m", "f"), OPTIONAL)
def test_a_missing_optional_field_takes_its_default(
    m: msg.Message, f: dataclasses.Field[Any]
) -> None:
    """What a peer that does not send it yet (e.g. an older worker's HELLO without
    versions) means."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    decoded = type(m).decode(m.forge(SESSION, **{f.name: msg.ABSENT}))
    assert getattr(decoded, f.name) == default


@pytest.mark.parametrize("m", VALID_MESSAGES, ids=name)
def test_unknown_members_are_ignored(m: msg.Message) -> None:
    assert type(m).decode(m.forge(SESSION, from_a_newer_version=[1])) == m


@pytest.mark.parametrize("m", VALID_MESSAGES, ids=name)
def test_wrong_frame_count_is_a_protocol_error(m: msg.Message) -> None:
    frames = m.encode(SESSION)
    for wrong in (frames[:-1], [*frames, b""]):
        with pytest.raises(ProtocolError, match="frames"):
            type(m).decode(wrong)


def test_welcome_initializer_is_a_frame_never_a_member() -> None:
    """The pickled initializer travels in WELCOME's third frame only; a member of that
    name in the JSON body is ignored (nothing in a JSON body is unpickled)."""
    welcome = example(msg.Welcome)
    frames = welcome.encode(SESSION)
    assert frames[2] == b"a pickle" and b"pickle" not in frames[1]
    forged = welcome.forge(SESSION, initializer="other")
    assert msg.Welcome.decode(forged).initializer == b"a pickle"


def test_hello_mismatch_names_both_versions() -> None:
    hello = example(msg.Hello)
    ours = dataclasses.replace(
        hello, python=proto.python_version(), cloudpickle=proto.cloudpickle_major()
    )
    assert ours.mismatch() is None
    why = dataclasses.replace(ours, python="2.7").mismatch()
    assert why is not None and "Python 2.7" in why and proto.python_version() in why
    why = dataclasses.replace(ours, cloudpickle="99").mismatch()
    assert why is not None and "cloudpickle major version 99" in why


def test_hello_of_another_version_tells_its_inbox_or_is_refused() -> None:
    """Enough of another protocol version's HELLO is read to tell that worker why it is
    refused; without an inbox it is dropped."""
    frames = proto.control(Kind.HELLO, {"inbox": "tcp://10.0.0.1:1", "host": "h", "pid": 3})
    assert msg.Hello.inbox_of(frames) == ("tcp://10.0.0.1:1", "h pid 3")
    with pytest.raises(ProtocolError, match="inbox"):
        msg.Hello.inbox_of(proto.control(Kind.HELLO, {"inbox": 7}))


def test_output_of_bytes_and_long_lines() -> None:
    output = msg.Output.of("h", [(7, proto.STDERR, b"caf\xc3\xa9 \xff\n")], 5)
    decoded = msg.Output.decode(output.encode())
    assert (decoded.host, decoded.dropped) == ("h", 5)
    assert decoded.chunks == (OutputChunk(7, 2, "café \ufffd\n"),)
    big = "w" * (OUTPUT_MAX_LINE + 5) + "\nok"
    cut = msg.Output.decode(output.forge(chunks=[[1, 1, big], [1, 1, ""]]))
    assert cut.chunks == (OutputChunk(1, 1, "w" * OUTPUT_MAX_LINE + " [cut]\nok\n"),)


@pytest.mark.parametrize("body", [b"\xbd", b"7", b"[]", b"{", b"[" * 100_000, b"1" * 5000])
def test_a_body_that_is_no_json_object_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        msg.Ready.decode([proto.header(Kind.READY, SESSION), body])
