"""Which versions each worker host runs: the result of ``ZmqExecutor.versions()``, and the
package lookups both sides make to fill it.

Every host tells its base versions (Python, zmqexecutor, cloudpickle, pyzmq, libzmq) when
its worker processes register (HELLO). Other packages are looked up on demand, by name::

    versions() --request--> dispatcher --ASK_VERSIONS--> inbox of one idle worker process
    (caller's thread)       thread     <--VERSIONS------ (per host; all of them if none is idle)

Only their installed metadata is read (``importlib.metadata``), nothing is imported or
unpickled (both messages are JSON), and the names are checked here on both sides: at most
``MAX_VERSION_PACKAGES`` distribution names. The caller waits ``timeout`` at most; a host
that has not answered by then is reported so, and its late answer is dropped.

Why a worker process answers, not the host's supervisor: in mode 2 the supervisor only
connects a PUSH socket to the executor's sink; it has nothing the executor could send a
question to (a new listening port per host would cost a firewall rule), while every worker
process has its inbox. A worker process also runs the interpreter and ``sys.path`` that the
tasks see. The limit: a process reads its inbox only between tasks (and after the tasks it
already holds), so a host whose every process runs a long task cannot answer in time; its
base versions, known since it joined, are still listed.

As dask's ``Client.get_versions(check=True)`` does, a version is compared with the client's
(the process that runs the executor) as a string: any difference is a mismatch, "not
installed" included; a version that is not known (a host that did not answer) is not.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._defaults import MAX_PACKAGE_NAME_LENGTH, MAX_VERSION_PACKAGES

#: the version of a package that a host does not have
NOT_INSTALLED = "not installed"
#: what the table shows for a version that is not known
UNKNOWN = "?"
#: the versions every host reports when it registers, in the table's order
BASE = ("python", "zmqexecutor", "cloudpickle", "pyzmq", "libzmq")
#: longest version string kept from a host (a longer one is cut)
_MAX_VERSION_LENGTH = 64
#: a distribution name as PEP 508 spells it (no extras, no version specifier)
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\Z")


def check_package_names(packages: object) -> tuple[str, ...]:
    """The distribution names in ``packages``, checked and without repeats or base names.

    Raises:
        ValueError: ``packages`` is not a list of at most ``MAX_VERSION_PACKAGES``
            distribution names.
    """
    if isinstance(packages, (str, bytes)) or not isinstance(packages, Iterable):
        raise ValueError(
            f"packages must be a list of distribution names, not {packages!r}: "
            f"e.g. versions(['numpy', 'pandas'])"
        )
    given = list(itertools.islice(packages, MAX_VERSION_PACKAGES + 1))
    if len(given) > MAX_VERSION_PACKAGES:
        raise ValueError(
            f"more than {MAX_VERSION_PACKAGES} package names: ask about fewer at a time"
        )
    names: list[str] = []
    for name in given:
        if (
            not isinstance(name, str)
            or len(name) > MAX_PACKAGE_NAME_LENGTH
            or not _NAME.match(name)
        ):
            raise ValueError(
                f"{name!r} is not a distribution name: give names as pip knows them "
                f"(letters, digits, '.', '_' and '-', at most {MAX_PACKAGE_NAME_LENGTH} "
                "characters, without a version or extras), e.g. 'scikit-learn'"
            )
        if name not in names and name not in BASE:
            names.append(name)
    return tuple(names)


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution (``NOT_INSTALLED`` when absent), read
    from its metadata: the package itself is not imported."""
    import importlib.metadata  # here: a worker process only needs it when asked (20 ms)

    versions = {}
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = NOT_INSTALLED
        except Exception as e:  # broken metadata must not stop the answer
            version = f"unreadable metadata ({type(e).__name__})"
        versions[name] = str(version)
    return versions


def clean_version(value: object) -> str | None:
    """A version string from another host, bounded; None when it is not a string."""
    if not isinstance(value, str):
        return None
    return value[:_MAX_VERSION_LENGTH].encode("ascii", "replace").decode()


@dataclass(frozen=True)
class HostVersions:
    """The versions one worker host runs.

    Attributes:
        host: the host's name.
        host_id: the id of the host's supervisor (a new one each time the host re-joins).
        versions: name -> version: the base versions (``BASE``), then the packages asked
            about. ``"not installed"`` when the host lacks it; None when it is not known
            (the host did not answer in time, or runs a version that does not report it).
        mismatches: the names whose version differs from the client's.
        answered: the host named the versions of the packages asked about (True when
            none was asked).
        note: why it did not answer, if it did not.
    """

    host: str
    host_id: str
    versions: dict[str, str | None]
    mismatches: tuple[str, ...] = ()
    answered: bool = True
    note: str = ""


@dataclass(frozen=True)
class Versions:
    """The versions of the client (this process) and of every worker host.

    ``print(executor.versions(["numpy"]))`` shows them as a table with every version that
    differs from the client's marked ``*``.

    Attributes:
        client: name -> version in this process.
        hosts: one entry per worker host with a registered worker process.
        packages: the packages asked about, besides the base versions.
    """

    client: dict[str, str]
    hosts: list[HostVersions] = field(default_factory=list)
    packages: tuple[str, ...] = ()

    @property
    def mismatched(self) -> list[HostVersions]:
        """The hosts with at least one version that differs from the client's."""
        return [h for h in self.hosts if h.mismatches]

    def __str__(self) -> str:
        names = [*BASE, *self.packages]
        counts: dict[str, int] = {}
        for h in self.hosts:
            counts[h.host] = counts.get(h.host, 0) + 1
        rows = [
            ["host", *names],
            ["client (this process)", *(self.client.get(n, UNKNOWN) for n in names)],
        ]
        for h in sorted(self.hosts, key=lambda h: (h.host, h.host_id)):
            # hosts of one name (containers, or several on one machine) told apart by id
            label = h.host if counts[h.host] == 1 else f"{h.host} [{h.host_id[:8]}]"
            cells = []
            for n in names:
                value = h.versions.get(n)
                cells.append(
                    (UNKNOWN if value is None else value) + ("*" if n in h.mismatches else "")
                )
            rows.append([label, *cells])
        widths = [max(len(row[i]) for row in rows) for i in range(len(names) + 1)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        bad = self.mismatched
        if bad:
            lines.append(
                f"* differs from the client: {len(bad)} of {len(self.hosts)} host(s); install "
                "the same versions everywhere"
            )
        else:
            lines.append(
                f"no version differs from the client's ({len(self.hosts)} host(s))"
                if self.hosts
                else "no worker host is connected"
            )
        for h in self.hosts:
            if h.note:
                lines.append(f"{h.host}: {h.note}")
        return "\n".join(lines)


def host_entry(
    host: str,
    host_id: str,
    base: Mapping[str, str | None],
    answer: Mapping[str, str | None] | None,
    packages: tuple[str, ...],
    client: Mapping[str, str],
    note: str = "",
) -> HostVersions:
    """One host's entry: ``base`` from its HELLO, ``answer`` to the package question (None:
    it did not answer), compared with the ``client``'s versions."""
    versions: dict[str, str | None] = {name: base.get(name) for name in BASE}
    for name in packages:
        versions[name] = None if answer is None else answer.get(name)
    mismatches = tuple(n for n, v in versions.items() if v is not None and v != client.get(n))
    return HostVersions(
        host, host_id, versions, mismatches, answer is not None or not packages, note
    )
