"""Serialization: cloudpickle with protocol-5 out-of-band buffers, and the capture of a
task's exception with its remote traceback."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import pickle
import re
import sys
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import cloudpickle

from . import errors
from ._defaults import FN_CACHE_SIZE, OOB_THRESHOLD
from ._protocol import ResultRecord, Status
from .errors import ConfigurationError, RemoteError, RemoteTraceback, ResultSerializationError

# Arguments made only of these types pickle identically (and faster) with the C pickler.
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})
EMPTY_ARGS = b""
NO_BUFFERS: tuple[Any, ...] = ()  #: shared, so a queued task without buffers costs no list


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; buffers of OOB_THRESHOLD bytes or more are returned out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_small_in_band(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_THRESHOLD:
            return True
        buffers.append(buf)
        return False

    data: bytes = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_small_in_band)
    return data, buffers


def loads(data: Any, buffers: list[Any] = []) -> Any:  # noqa: B006 (never mutated)
    return pickle.loads(data, buffers=buffers)


def dump_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, Sequence[Any]]:
    """Pickle a call's arguments; ``EMPTY_ARGS`` stands for ``((), {})``."""
    if not kwargs:
        if not args:
            return EMPTY_ARGS, NO_BUFFERS
        if len(args) < 8 and all(type(a) in _PLAIN_TYPES for a in args):
            return pickle.dumps((args, kwargs), protocol=5), NO_BUFFERS
    data, buffers = dumps((args, kwargs))
    return data, buffers or NO_BUFFERS


def load_args(payload: Any, buffers: list[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(payload) == 0:
        return (), {}
    args, kwargs = loads(payload, buffers)
    return args, kwargs


class FunctionCache:
    """Callables pickled once per executor: fn -> (digest, pickled bytes).

    Keys are weak (CPython bpo-16284: an executor must not keep a task's callable alive);
    callables that cannot be weakly referenced (builtins) are cheap to pickle by reference
    and are not cached. Workers cache callables by digest.
    """

    def __init__(self, size: int = FN_CACHE_SIZE) -> None:
        self._size = size
        self._entries: weakref.WeakKeyDictionary[Callable[..., Any], tuple[bytes, bytes]] = (
            weakref.WeakKeyDictionary()
        )

    def lookup(self, fn: Callable[..., Any]) -> tuple[bytes, bytes] | None:
        try:
            return self._entries.get(fn)
        except TypeError:  # not weakly referenceable, or unhashable
            return None

    @staticmethod
    def pickle(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        """(digest, pickled callable); slow, so callers do it outside their lock."""
        import hashlib  # here: worker processes never need it (OpenSSL's start-up, 3 ms)

        data: bytes = cloudpickle.dumps(fn, protocol=5)
        return hashlib.blake2b(data, digest_size=16).digest(), data

    def store(self, fn: Callable[..., Any], entry: tuple[bytes, bytes]) -> None:
        if len(self._entries) >= self._size:
            self._entries.clear()
        with contextlib.suppress(TypeError):
            self._entries[fn] = entry


# -- results on the worker ------------------------------------------------------------


def error_result(
    task_id: int, error: type[Exception], message: str, tb: str = "", type_name: str = ""
) -> ResultRecord:
    """A failure built on the worker; travels as JSON and is rebuilt by ``load_result``."""
    body = {"error": error.__name__, "message": message, "traceback": tb, "type": type_name}
    return ResultRecord(task_id, Status.ERROR, json.dumps(body).encode())


_NONE_PICKLE = pickle.dumps(None, protocol=5)


def value_result(task_id: int, value: Any) -> ResultRecord:
    if value is None:  # most tasks run for their effect
        return ResultRecord(task_id, Status.OK, _NONE_PICKLE)
    if type(value) in _PLAIN_TYPES:  # the C pickler is several times faster here
        return ResultRecord(task_id, Status.OK, pickle.dumps(value, protocol=5))
    try:
        data, buffers = dumps(value)
    except BaseException as e:  # anything a __reduce__ may raise
        return error_result(
            task_id,
            ResultSerializationError,
            f"the task ran, but its result of type {type(value).__qualname__} could not be "
            f"pickled: {_describe(e)}; return a picklable value",
            traceback.format_exc(),
        )
    return ResultRecord(task_id, Status.OK, data, list(buffers))


def exception_result(task_id: int, exc: BaseException, origin: str) -> ResultRecord:
    """The task raised ``exc``: send it as itself, or as RemoteError if it cannot be pickled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb = f'\n"""\nTraceback from {origin}:\n{tb}"""'
    try:
        data, buffers = dumps((exc, tb))
    except BaseException:
        try:
            message = str(exc)
        except BaseException:
            message = "<str() failed>"
        return error_result(task_id, RemoteError, message, tb, _type_name(type(exc)))
    return ResultRecord(task_id, Status.RAISED, data, list(buffers))


def _type_name(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# -- results on the executor ------------------------------------------------------------


def load_result(record: ResultRecord) -> tuple[bool, Any]:
    """Return (True, value) or (False, exception) for one result record."""
    if record.status is Status.OK:
        try:
            return True, loads(record.payload, record.buffers)
        except BaseException as e:
            return False, errors.ResultSerializationError(
                f"the task ran, but its result could not be unpickled here: {_describe(e)}; "
                "make sure the executor can import the result's classes"
            )
    if record.status is Status.RAISED:
        try:
            exc, tb = loads(record.payload, record.buffers)
        except BaseException as e:
            return False, errors.ResultSerializationError(
                f"the task raised, but its exception could not be unpickled here: {_describe(e)}"
            )
        if isinstance(exc, ModuleNotFoundError) and (hint := _ship_hint(exc.name or str(exc))):
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(hint)
            else:
                tb += f"\n{hint}"
        exc.__cause__ = RemoteTraceback(tb)
        return False, exc
    body = json.loads(bytes(record.payload))
    tb = body.get("traceback", "")
    message = str(body.get("message", ""))
    if "No module named" in message and (hint := _ship_hint(message)):
        message = f"{message}. {hint}"
    error: BaseException
    if body.get("error") == "RemoteError":
        error = RemoteError(body.get("type", "?"), message, tb)
    else:
        cls = getattr(errors, str(body.get("error")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.ZmqExecutorError)):
            cls = errors.ZmqExecutorError
        error = cls(message)
    if tb:
        error.__cause__ = RemoteTraceback(tb)
    return False, error


# -- modules the workers cannot import ----------------------------------------------------

_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def ship_by_value(modules: Iterable[str | ModuleType] | str | ModuleType) -> None:
    """Make cloudpickle pickle these modules (and a package's submodules) by value, for every
    cloudpickle user in this process (``register_pickle_by_value`` is process-wide).

    Raises:
        ConfigurationError: a name cannot be imported here, or is not a module.
    """
    items = [modules] if isinstance(modules, (str, ModuleType)) else list(modules)
    found = []
    for module in items:  # all or none: check every one before registering any
        try:
            found.append(importlib.import_module(module) if isinstance(module, str) else module)
        except ImportError as e:
            raise ConfigurationError(
                f"ship_modules: cannot import {module!r} here ({_describe(e)}); pass the name "
                "of a module this process can import, or the module object"
            ) from e
        if not isinstance(found[-1], ModuleType):
            raise ConfigurationError(f"ship_modules: {module!r} is not a module or its name")
    for module in found:
        cloudpickle.register_pickle_by_value(module)


def _ship_hint(text: str) -> str:
    """The remedy when a worker lacks a module this process can import, else "". Runs only
    for a failed task, on the executor: only here can it tell whether the client has it."""
    found = _MISSING_MODULE.search(text)
    name = found.group(1) if found else text
    if name not in sys.modules:
        parent = name.rpartition(".")[0]
        if parent and parent not in sys.modules:
            return ""  # finding out would import the parent package here
        try:
            if importlib.util.find_spec(name) is None:
                return ""
        except Exception:  # any text a worker sent: a hint must never fail a result
            return ""
    return (
        f"The worker cannot import {name!r}, which this process can: install it on the "
        f"workers, or send its code with the tasks: ZmqExecutor(..., ship_modules=[{name!r}])"
    )
