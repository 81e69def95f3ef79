"""Who may connect: the token, the CurveZMQ keys derived from it, the ZAP authenticator,
token files, and the check that refuses an unauthenticated socket.

zmqexecutor unpickles what arrives on its sockets, so whoever can connect can run code.
One secret, the token, is shared by the executor and its workers. Both sides derive two
CurveZMQ keypairs from it::

    server secret = Z85(HMAC-SHA256(key=token, msg="zmqexecutor/curve/v1/server"))
    client secret = Z85(HMAC-SHA256(key=token, msg="zmqexecutor/curve/v1/client"))
    public keys   = Curve25519 base-point multiplication of each secret (zmq.curve_public)

Every bound TCP socket (the executor's sink, each worker's inbox, a worker host's
rendezvous) is a CURVE server whose ZAP authenticator admits only the client public key;
every connecting socket is a CURVE client that pins the server public key. So a peer
without the token can neither complete a handshake nor read or alter traffic, and nothing
it sends reaches ``recv()``, let alone ``pickle.loads``.

Without a token, only ``ipc://`` sockets in a private 0700 directory (local mode) and,
with an explicit ``insecure=True``, loopback TCP are allowed.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils import z85

from ._defaults import DEFAULT_TOKEN_FILE, ENV_TOKEN, ENV_TOKEN_FILE
from ._net import is_loopback, parse_endpoint
from .errors import ConfigurationError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("zmqexecutor.security")

HOW_TO_TOKEN = (
    "create a token with `python -m zmqexecutor token` (writes ~/.zmqexecutor/token, mode "
    "0600), copy that file to every worker host, and pass it: token_file=... or "
    f"${ENV_TOKEN_FILE} (workers: --token-file), see README#security"
)
_ZAP_DOMAIN = "zmqexecutor"


@dataclass(frozen=True)
class Keys:
    """The CurveZMQ keypairs derived from a token (Z85-encoded)."""

    server_public: bytes
    server_secret: bytes = field(repr=False)
    client_public: bytes
    client_secret: bytes = field(repr=False)


def derive_keys(token: str) -> Keys:
    """The server and client keypairs every holder of ``token`` derives alike."""

    import hashlib  # here, as hmac, pathlib and secrets: a local worker process needs none
    import hmac

    def secret(role: bytes) -> bytes:
        raw = hmac.new(token.encode(), b"zmqexecutor/curve/v1/" + role, hashlib.sha256).digest()
        return z85.encode(raw)

    server, client = secret(b"server"), secret(b"client")
    return Keys(zmq.curve_public(server), server, zmq.curve_public(client), client)


# -- tokens ---------------------------------------------------------------------------


def new_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """Read a token file; refuse one that others can read, or that is empty."""
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text().strip()
    except OSError as e:
        raise ConfigurationError(f"cannot read the token file {p}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"the token file {p} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"make it private: chmod 600 {p}"
        )
    if not text:
        raise ConfigurationError(f"the token file {p} is empty; create a token with "
                                 "`python -m zmqexecutor token`")  # fmt: skip
    return text


def write_token_file(path: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Write a new random token to ``path`` (mode 0600, directory 0700) and return the path."""
    from pathlib import Path

    p = Path(path or DEFAULT_TOKEN_FILE).expanduser()
    if p.exists() and not force:
        raise ConfigurationError(f"{p} exists; pass --force to replace its token")
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(new_token() + "\n")
    return p


def resolve_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The token to use, by precedence: ``token``, ``token_file``, $ZMQEXECUTOR_TOKEN,
    $ZMQEXECUTOR_TOKEN_FILE; None if there is none."""
    if token is not None:
        if not token.strip():
            raise ConfigurationError("the token is empty")
        return token.strip()
    if token_file is not None:
        return read_token_file(token_file)
    env = os.environ.get(ENV_TOKEN)
    if env is not None and env.strip():
        return env.strip()
    env_file = os.environ.get(ENV_TOKEN_FILE)
    if env_file:
        return read_token_file(env_file)
    return None


# -- sockets ----------------------------------------------------------------------------


class Security:
    """How this process's sockets authenticate: CURVE with the token's keys, or not at all.

    ``server()`` before ``bind``, ``client()`` before ``connect``.
    """

    def __init__(self, token: str | None) -> None:
        if token is not None and not zmq.has("curve"):
            raise ConfigurationError(
                "the installed libzmq has no CURVE support, so a token cannot be used; "
                "install pyzmq's wheels (which bundle libzmq with CURVE) or a libzmq built "
                "with libsodium"
            )
        self.keys = derive_keys(token) if token is not None else None
        self._auth: Any = None  # zmq.auth.thread.ThreadAuthenticator, once started

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def __repr__(self) -> str:
        return f"<Security {'curve' if self.keys else 'none'}>"

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Start the ZAP authenticator of ``context`` (before any server socket binds:
        without one, libzmq admits every CURVE client)."""
        if self.keys is None or self._auth is not None:
            return
        # imported here: it pulls in asyncio, which local-mode workers never need
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context, log=logging.getLogger("zmqexecutor.security.zap"))
        auth.start()
        auth.configure_curve_callback(_ZAP_DOMAIN, credentials_provider=_OnlyKey(self.keys))
        self._auth = auth

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def server(self, sock: zmq.Socket[bytes]) -> None:
        if self.keys is None:
            return
        sock.zap_domain = _ZAP_DOMAIN.encode()
        sock.curve_secretkey = self.keys.server_secret
        sock.curve_publickey = self.keys.server_public
        sock.curve_server = True

    def client(self, sock: zmq.Socket[bytes]) -> None:
        if self.keys is None:
            return
        sock.curve_serverkey = self.keys.server_public
        sock.curve_secretkey = self.keys.client_secret
        sock.curve_publickey = self.keys.client_public


class _OnlyKey:
    """ZAP credentials provider: admit exactly the client public key of the token."""

    def __init__(self, keys: Keys) -> None:
        self._client = keys.client_public

    def callback(self, domain: str, key: bytes) -> bool:
        import hmac

        ok = domain == _ZAP_DOMAIN and hmac.compare_digest(key, self._client)
        if not ok:
            log.warning("refused a connection: its key does not come from our token")
        return ok


def check_exposure(endpoint: str, *, secure: bool, insecure: bool, role: str) -> None:
    """Raise ConfigurationError unless ``endpoint`` may be used with this security.

    Args:
        endpoint: the ZeroMQ endpoint about to be bound or connected.
        secure: a token is configured (CurveZMQ on every TCP socket).
        insecure: the user's explicit opt-in to unauthenticated loopback TCP.
        role: what the socket is for, named in the messages.
    """
    try:
        ep = parse_endpoint(endpoint)
    except ValueError as e:
        raise ConfigurationError(f"{role}: {e}") from None
    if ep.transport != "tcp" or secure:
        return
    if not is_loopback(ep):
        raise ConfigurationError(
            f"{role} {endpoint} is reachable from other machines, and zmqexecutor unpickles "
            "what arrives there: without a token anyone who can connect could run code. "
            f"{HOW_TO_TOKEN[0].upper()}{HOW_TO_TOKEN[1:]}."
            + (" (insecure=True only allows loopback endpoints.)" if insecure else "")
        )
    if not insecure:
        raise ConfigurationError(
            f"{role} {endpoint} has no token, so any user of this machine could connect "
            f"and run code: {HOW_TO_TOKEN}; or accept the risk on a single-user machine "
            "with insecure=True (worker: --insecure)"
        )
    log.warning(
        "%s %s is UNAUTHENTICATED: any user of this machine can run code here "
        "(insecure=True / --insecure was given)",
        role,
        endpoint,
    )
