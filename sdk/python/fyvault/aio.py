"""The asyncio twin of ``fyvault``: the same calls, awaited.

    import fyvault.aio
    key = await fyvault.aio.get("STRIPE_SK")

A minimal HTTP/1.1 client over ``asyncio.open_unix_connection`` (standard library only), one
keep-alive connection per ``Client``.
"""

import asyncio
import random
from typing import AsyncIterator, List, Optional, Tuple

from ._common import (DEFAULT_SOCKET, RETRY_MAX, RETRY_MIN, AgentUnavailable, BadResponse,
                      ConnectLink, Denied, Event, FyvaultError, InvalidName, InvalidUser,
                      NoPrevious, NotFound, NotUserVault, SecretInfo, SSEParser, UserRequired,
                      UserSecretMissing, VaultUnreachable, answer_error, connect_body, decode,
                      default_socket, parse_link, parse_list, unavailable, value_path)

__all__ = [
    "get", "get_bytes", "list", "connect", "events", "Client", "FyvaultError", "NotFound",
    "Denied", "NoPrevious", "AgentUnavailable", "BadResponse", "InvalidName", "SecretInfo",
    "Event", "DEFAULT_SOCKET", "UserSecretMissing", "UserRequired", "InvalidUser",
    "NotUserVault", "VaultUnreachable", "ConnectLink",
]

_MAX_HEAD = 64 * 1024


class _Stale(Exception):
    """A reused keep-alive connection was closed by the agent before answering."""


async def _read_head(reader: asyncio.StreamReader) -> Tuple[int, dict]:
    line = await reader.readline()
    if not line:
        raise _Stale()
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise BadResponse("the fyvault agent's answer is not HTTP")
    status = int(parts[1])
    headers = {}
    size = len(line)
    while True:
        h = await reader.readline()
        size += len(h)
        if size > _MAX_HEAD:
            raise BadResponse("the fyvault agent's answer head is too long")
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body (b"" at the end)."""
    size_line = await reader.readline()
    if not size_line:
        raise BadResponse("the fyvault agent's answer was cut short")
    size = int(size_line.split(b";")[0].strip() or b"0", 16)
    if size == 0:
        await reader.readline()  # the blank line after the last chunk (no trailers sent)
        return b""
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


async def _read_body(reader: asyncio.StreamReader, headers: dict) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            c = await _read_chunk(reader)
            if not c:
                return b"".join(parts)
            parts.append(c)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length)


def _request_bytes(path: str, accept: Optional[str] = None, body: Optional[bytes] = None) -> bytes:
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: fyvault\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + (body or b"")


class Client:
    """An asyncio client of one agent socket (default: ``FYVAULT_SOCKET``, else
    ``/run/fyvault.sock``). Calls on one client take turns on its keep-alive connection."""

    def __init__(self, socket: Optional[str] = None):
        self.socket = socket or default_socket()
        self._conn: Optional[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        self._lock: Optional[asyncio.Lock] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def _connect(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self.socket)
        except OSError as e:
            raise unavailable(self.socket, e) from None

    async def _request(self, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A connection (and lock) of an earlier event loop cannot be used in this one.
            if self._conn is not None:
                try:
                    self._conn[1].close()
                except RuntimeError:
                    pass
            self._conn, self._lock, self._loop = None, asyncio.Lock(), loop
        assert self._lock is not None
        async with self._lock:
            for attempt in (0, 1):
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = await self._connect()
                reader, writer = self._conn
                try:
                    writer.write(_request_bytes(path, body=body))
                    await writer.drain()
                    status, headers = await _read_head(reader)
                    body = await _read_body(reader, headers)
                    if headers.get("connection", "").lower() == "close":
                        await self._close_locked()
                    return status, body
                except (_Stale, ConnectionError, asyncio.IncompleteReadError) as e:
                    await self._close_locked()
                    if reused and attempt == 0:
                        continue
                    raise unavailable(self.socket, e) from None
                except (ValueError, BadResponse):
                    await self._close_locked()
                    raise BadResponse("the fyvault agent's answer is not what was expected",
                                      socket=self.socket) from None
        raise AssertionError("unreachable")

    async def _close_locked(self) -> None:
        if self._conn is not None:
            writer = self._conn[1]
            self._conn = None
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass

    async def close(self) -> None:
        """Closes the idle connection."""
        await self._close_locked()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def get_bytes(self, name: str, previous: bool = False, *,
                        user: Optional[str] = None) -> bytes:
        """The secret's exact bytes (``user=``: that app user's value of a user-vault
        secret)."""
        status, body = await self._request(value_path(name, previous, user))
        if status == 200:
            return body
        raise answer_error(self.socket, status, body)

    async def get(self, name: str, previous: bool = False, *, user: Optional[str] = None) -> str:
        """The secret's value as text (UTF-8)."""
        return decode(name, await self.get_bytes(name, previous, user=user), self.socket)

    async def connect(self, name: str, user: str) -> ConnectLink:
        """A single-use link (valid one hour) for ``user`` to supply their own value."""
        status, body = await self._request("/v1/connect", connect_body(name, user))
        if status != 200:
            raise answer_error(self.socket, status, body)
        return parse_link(body, self.socket)

    async def list(self) -> List[SecretInfo]:
        """The secrets this process may read: names and versions, no values."""
        status, body = await self._request("/v1/secrets")
        if status != 200:
            raise answer_error(self.socket, status, body)
        return parse_list(body, self.socket)

    async def events(self) -> AsyncIterator[Event]:
        """The agent's events as they happen; reconnects by itself (then yields a resync)."""
        delay = RETRY_MIN
        connected = False
        while True:
            try:
                reader, writer = await self._connect()
            except AgentUnavailable:
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                writer.write(_request_bytes("/v1/events", "text/event-stream"))
                await writer.drain()
                status, headers = await _read_head(reader)
                if status != 200:
                    raise answer_error(self.socket, status, await _read_body(reader, headers))
                if connected:
                    yield Event("resync")
                connected = True
                delay = RETRY_MIN
                parser = SSEParser()
                chunked = headers.get("transfer-encoding", "").lower() == "chunked"
                pending = b""
                while True:
                    data = await (_read_chunk(reader) if chunked else reader.read(65536))
                    if not data:
                        break
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        ev = parser.line(line.decode("utf-8", "replace"))
                        if ev is not None:
                            yield ev
            except (_Stale, ConnectionError, asyncio.IncompleteReadError, ValueError,
                    FyvaultError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(random.uniform(0, delay))


_shared: Optional[Client] = None


def _client() -> Client:
    global _shared
    socket = default_socket()
    if _shared is None or _shared.socket != socket:
        _shared = Client(socket)
    return _shared


async def get(name: str, previous: bool = False, *, user: Optional[str] = None) -> str:
    """The secret's value as text (UTF-8); ``user=`` for a user-vault secret."""
    return await _client().get(name, previous, user=user)


async def get_bytes(name: str, previous: bool = False, *, user: Optional[str] = None) -> bytes:
    """The secret's exact bytes."""
    return await _client().get_bytes(name, previous, user=user)


async def connect(name: str, user: str) -> ConnectLink:
    """A single-use link for ``user`` to supply their own value of ``name``."""
    return await _client().connect(name, user)


async def _list() -> List[SecretInfo]:
    return await _client().list()


_list.__name__ = "list"
_list.__doc__ = "The secrets this process may read: names and versions, no values."
list = _list  # noqa: A001 (the published name)


def events() -> AsyncIterator[Event]:
    """The agent's events as they happen (an async generator that reconnects by itself)."""
    return _client().events()
