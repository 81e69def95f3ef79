"""What may be exposed: the check that refuses an unauthenticated socket beyond this host.

Until token/CURVE authentication lands, a socket on a non-loopback address is
unauthenticated, and pickles arriving there are code execution: it needs an explicit
opt-in (``insecure=True`` / ``--insecure``) and logs a warning every time.
"""

from __future__ import annotations

import logging

from ._net import is_loopback, parse_endpoint
from .errors import ConfigurationError

log = logging.getLogger("zmqexecutor.security")


def check_exposure(endpoint: str, *, insecure: bool, role: str) -> None:
    """Raise ConfigurationError if ``endpoint`` leaves this host without ``insecure``.

    Args:
        endpoint: the ZeroMQ endpoint about to be bound or connected.
        insecure: the user's explicit opt-in to unauthenticated remote sockets.
        role: what the socket is for, named in the messages.
    """
    try:
        ep = parse_endpoint(endpoint)
    except ValueError as e:
        raise ConfigurationError(f"{role}: {e}") from None
    if is_loopback(ep):
        return
    if not insecure:
        raise ConfigurationError(
            f"{role} {endpoint} is reachable from other machines, and zmqexecutor unpickles "
            "what arrives there (remote code execution for anyone who can connect). "
            "Authentication is not available yet: use a loopback or ipc:// endpoint, or accept "
            "the risk on a trusted network with insecure=True (worker: --insecure)."
        )
    log.warning(
        "%s %s is UNAUTHENTICATED: anyone who can reach it can run code here "
        "(insecure=True / --insecure was given)",
        role,
        endpoint,
    )
