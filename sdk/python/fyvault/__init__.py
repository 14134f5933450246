"""fyvault: read secrets from the local fyvault agent at runtime.

    import fyvault
    stripe_key = fyvault.get("STRIPE_SK")

The module-level functions use ``FYVAULT_SOCKET`` (read at each call), else
``/run/fyvault.sock``. ``Client(socket=...)`` talks to another socket. ``fyvault.aio`` is the
asyncio twin. Nothing is cached: every ``get`` asks the agent, so the call after a rotation
returns the new value. A value never appears in an exception or a log line.
"""

import builtins
import threading
from typing import Iterator, Optional

from ._client import Client
from ._common import (DEFAULT_SOCKET, AgentUnavailable, BadResponse, ConnectLink, Denied, Event,
                      FyvaultError, InvalidName, InvalidUser, NoPrevious, NotFound, NotUserVault,
                      SecretInfo, UserRequired, UserSecretMissing, VaultUnreachable,
                      default_socket)

__all__ = [
    "get", "get_bytes", "list", "connect", "events", "Client", "FyvaultError", "NotFound",
    "Denied", "NoPrevious", "AgentUnavailable", "BadResponse", "InvalidName", "SecretInfo",
    "Event", "DEFAULT_SOCKET", "UserSecretMissing", "UserRequired", "InvalidUser",
    "NotUserVault", "VaultUnreachable", "ConnectLink",
]
__version__ = "0.1.0"

_shared: Optional[Client] = None
_shared_lock = threading.Lock()


def _client() -> Client:
    global _shared
    socket = default_socket()
    with _shared_lock:
        if _shared is None or _shared.socket != socket:
            if _shared is not None:
                _shared.close()
            _shared = Client(socket)
        return _shared


def get(name: str, previous: bool = False, *, user: Optional[str] = None) -> str:
    """The secret's value as text (UTF-8); ``user=`` for a user-vault secret (a user without a
    value raises ``UserSecretMissing``)."""
    return _client().get(name, previous, user=user)


def get_bytes(name: str, previous: bool = False, *, user: Optional[str] = None) -> bytes:
    """The secret's exact bytes."""
    return _client().get_bytes(name, previous, user=user)


def connect(name: str, user: str) -> ConnectLink:
    """A single-use link (valid one hour) for ``user`` to supply their own value of ``name``."""
    return _client().connect(name, user)


def _list() -> "builtins.list[SecretInfo]":
    return _client().list()


_list.__name__ = "list"
_list.__doc__ = "The secrets this process may read: names and versions, no values."
list = _list  # noqa: A001 (the published name)


def events() -> Iterator[Event]:
    """The agent's events as they happen (a generator that reconnects by itself)."""
    return _client().events()
