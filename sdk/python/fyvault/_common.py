"""What the blocking and the asyncio clients share: the socket rule, paths, errors, parsing.

Nothing here ever puts a secret's value into an exception or a log line.
"""

import json
import os
from typing import Dict, List, NamedTuple, Optional
from urllib.parse import quote

DEFAULT_SOCKET = "/run/fyvault.sock"
SOCKET_ENV = "FYVAULT_SOCKET"
RETRY_MIN = 0.1
RETRY_MAX = 5.0


def default_socket() -> str:
    """``FYVAULT_SOCKET``, else ``/run/fyvault.sock``."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class FyvaultError(Exception):
    """Every failure of the SDK. ``code`` is stable: not_found, denied, no_previous,
    agent_unavailable, bad_response, invalid_name, user_secret_missing, user_required,
    invalid_user, not_user_vault, vault_unreachable. ``connect`` is True for
    ``user_secret_missing`` (show the user a "Connect your API key" step)."""

    code = "bad_response"
    connect = False

    def __init__(self, message: str, *, status: Optional[int] = None,
                 socket: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.status = status
        self.socket = socket


class NotFound(FyvaultError):
    """Never pushed, or revoked."""
    code = "not_found"


class Denied(FyvaultError):
    """The agent's policy does not let this process read the secret."""
    code = "denied"


class NoPrevious(FyvaultError):
    """``previous=True`` and no previous version is readable now."""
    code = "no_previous"


class AgentUnavailable(FyvaultError):
    """The socket is missing or refuses connections."""
    code = "agent_unavailable"


class BadResponse(FyvaultError):
    """The agent answered something this SDK does not understand."""
    code = "bad_response"


class InvalidName(FyvaultError):
    """Not a secret name (``^[A-Z_][A-Z0-9_]{0,127}$``)."""
    code = "invalid_name"


class UserSecretMissing(FyvaultError):
    """A user-vault secret read for a user who has not connected their value yet: get them a
    link with ``connect(name, user)``."""
    code = "user_secret_missing"
    connect = True


class UserRequired(FyvaultError):
    """A user-vault secret read without ``user=``: each app user has their own value."""
    code = "user_required"


class InvalidUser(FyvaultError):
    """Not a user id (``^[A-Za-z0-9._@-]{1,128}$``)."""
    code = "invalid_user"


class NotUserVault(FyvaultError):
    """``connect`` for a secret whose one value is shared (creator vault)."""
    code = "not_user_vault"


class VaultUnreachable(FyvaultError):
    """``connect`` while the agent cannot reach the vault."""
    code = "vault_unreachable"


_BY_AGENT_CODE = {
    "not_found": NotFound,
    "no_previous": NoPrevious,
    "forbidden": Denied,
    "invalid_name": InvalidName,
    "user_secret_missing": UserSecretMissing,
    "user_required": UserRequired,
    "invalid_user": InvalidUser,
    "not_user_vault": NotUserVault,
    "vault_unreachable": VaultUnreachable,
}


def unavailable(socket: str, err: BaseException) -> AgentUnavailable:
    why = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
    return AgentUnavailable(
        f"cannot reach the fyvault agent at {socket} ({why}); is it running? Start it with "
        "`systemctl start fyvault-agent` (or `fyvault dev`), or set FYVAULT_SOCKET to its socket",
        socket=socket,
    )


def answer_error(socket: str, status: int, body: bytes) -> FyvaultError:
    """A non-2xx answer as an exception (error bodies never carry a value)."""
    try:
        err = json.loads(body.decode("utf-8"))["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return BadResponse(f"the fyvault agent answered HTTP {status}", status=status, socket=socket)
    cls = _BY_AGENT_CODE.get(code)
    if cls is not None:
        return cls(message, status=status, socket=socket)
    return BadResponse(f"the fyvault agent answered HTTP {status} {code}: {message}",
                       status=status, socket=socket)


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError("fyvault: a secret name is a non-empty str")


def value_path(name: str, previous: bool, user: Optional[str] = None) -> str:
    check_name(name)
    path = "/v1/secrets/" + quote(name, safe="")
    query = []
    if previous:
        query.append("version=previous")
    if user is not None:
        if not isinstance(user, str) or not user:
            raise TypeError("fyvault: a user id is a non-empty str")
        query.append("user=" + quote(user, safe=""))
    return path + ("?" + "&".join(query) if query else "")


class ConnectLink(NamedTuple):
    """A single-use link (valid one hour) where a user supplies their own value."""
    url: str
    expires_at: str


def connect_body(name: str, user: str) -> bytes:
    check_name(name)
    if not isinstance(user, str) or not user:
        raise TypeError("fyvault: a user id is a non-empty str")
    return json.dumps({"secret_name": name, "user_id": user}).encode("utf-8")


def parse_link(body: bytes, socket: str) -> ConnectLink:
    try:
        j = json.loads(body.decode("utf-8"))
        return ConnectLink(str(j["url"]), str(j["expires_at"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadResponse("the fyvault agent's connect answer is not JSON",
                          socket=socket) from None


def decode(name: str, value: bytes, socket: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadResponse(f"{name} is not UTF-8 text; read it with get_bytes", socket=socket) from None


class SecretInfo(NamedTuple):
    """A secret this process may read (no value)."""
    name: str
    version: int
    updated_at: str
    previous_version: Optional[int] = None


def parse_list(body: bytes, socket: str) -> List[SecretInfo]:
    try:
        items = json.loads(body.decode("utf-8"))["secrets"]
        return [SecretInfo(str(s["name"]), int(s["version"]), str(s["updated_at"]),
                           s.get("previous_version")) for s in items]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadResponse("the fyvault agent's listing is not what was expected",
                          socket=socket) from None


class Event(NamedTuple):
    """One event of ``GET /v1/events``: ``type`` is added, rotated, updated, revoked, expired
    (with ``name`` and ``version``; ``previous_version`` for rotated and updated) or resync
    (``missed`` events, ``None`` after a reconnection: list again)."""
    type: str
    name: Optional[str] = None
    version: Optional[int] = None
    previous_version: Optional[int] = None
    missed: Optional[int] = None


def to_event(kind: str, data: str) -> Event:
    try:
        d: Dict = json.loads(data) if data else {}
    except ValueError:
        d = {}
    if not isinstance(d, dict):
        d = {}
    if kind == "resync":
        missed = d.get("missed")
        return Event("resync", missed=missed if isinstance(missed, int) else None)
    return Event(kind, d.get("name"), d.get("version"), d.get("previous_version"))


class SSEParser:
    """Feeds lines of a server-sent-events stream; returns an Event at each blank line."""

    def __init__(self) -> None:
        self.kind = ""
        self.data: List[str] = []

    def line(self, raw: str) -> Optional[Event]:
        line = raw.rstrip("\r\n")
        if line == "":
            kind, data = self.kind, "\n".join(self.data)
            self.kind, self.data = "", []
            return to_event(kind, data) if kind else None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self.kind = value
        elif field == "data":
            self.data.append(value)
        return None


# Shown as `fyvault.NotFound` (where users import them from), not `fyvault._common.NotFound`.
for _cls in (FyvaultError, NotFound, Denied, NoPrevious, AgentUnavailable, BadResponse,
             InvalidName, SecretInfo, Event):
    _cls.__module__ = "fyvault"
del _cls
