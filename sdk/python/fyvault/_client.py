"""The blocking client: HTTP/1.1 over the agent's Unix socket with ``http.client``."""

import http.client
import random
import socket as _socket
import threading
import time
from typing import Iterator, List, Optional, Tuple

from ._common import (RETRY_MAX, RETRY_MIN, BadResponse, ConnectLink, Event, FyvaultError,
                      SecretInfo, SSEParser, answer_error, connect_body, decode, default_socket,
                      parse_link, parse_list, unavailable, value_path)

_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          http.client.CannotSendRequest, http.client.ResponseNotReady)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]):
        super().__init__("fyvault", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


class Client:
    """A client of one agent socket (default: ``FYVAULT_SOCKET``, else ``/run/fyvault.sock``).

    It keeps one keep-alive connection (thread-safe: calls take turns). Nothing is cached:
    every ``get`` asks the agent.
    """

    def __init__(self, socket: Optional[str] = None, timeout: Optional[float] = 30.0):
        self.socket = socket or default_socket()
        self.timeout = timeout
        self._conn: Optional[_UnixConnection] = None
        self._lock = threading.Lock()

    def _request(self, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
        with self._lock:
            for attempt in (0, 1):
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = _UnixConnection(self.socket, self.timeout)
                conn = self._conn
                try:
                    if body is None:
                        conn.request("GET", path, headers={"Host": "fyvault"})
                    else:
                        conn.request("POST", path, body=body, headers={
                            "Host": "fyvault", "Content-Type": "application/json"})
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.will_close:
                        self._close_locked()
                    return resp.status, body
                except _STALE as e:
                    self._close_locked()
                    if reused and attempt == 0:
                        continue
                    raise unavailable(self.socket, e) from None
                except OSError as e:
                    self._close_locked()
                    raise unavailable(self.socket, e) from None
                except http.client.HTTPException:
                    self._close_locked()
                    raise BadResponse("the fyvault agent's answer is not HTTP",
                                      socket=self.socket) from None
        raise AssertionError("unreachable")

    def _close_locked(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Closes the idle connection."""
        with self._lock:
            self._close_locked()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_bytes(self, name: str, previous: bool = False, *, user: Optional[str] = None) -> bytes:
        """The secret's exact bytes (``previous=True``: the version a rotation replaced, while
        its grace period runs; ``user=``: that app user's value of a user-vault secret)."""
        status, body = self._request(value_path(name, previous, user))
        if status == 200:
            return body
        raise answer_error(self.socket, status, body)

    def get(self, name: str, previous: bool = False, *, user: Optional[str] = None) -> str:
        """The secret's value as text (UTF-8). For a user-vault secret pass ``user=``; a user
        without a value raises ``UserSecretMissing`` (``connect`` is True)."""
        return decode(name, self.get_bytes(name, previous, user=user), self.socket)

    def connect(self, name: str, user: str) -> ConnectLink:
        """A single-use link (valid one hour) for ``user`` to supply their own value of the
        user-vault secret ``name``. Same access rule as reading ``name``."""
        status, body = self._request("/v1/connect", connect_body(name, user))
        if status != 200:
            raise answer_error(self.socket, status, body)
        return parse_link(body, self.socket)

    def list(self) -> List[SecretInfo]:
        """The secrets this process may read: names and versions, no values."""
        status, body = self._request("/v1/secrets")
        if status != 200:
            raise answer_error(self.socket, status, body)
        return parse_list(body, self.socket)

    def _open_events(self) -> Tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.socket, None)
        try:
            conn.request("GET", "/v1/events",
                         headers={"Host": "fyvault", "Accept": "text/event-stream"})
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise unavailable(self.socket, e) from None
        if resp.status != 200:
            body = resp.read()
            conn.close()
            raise answer_error(self.socket, resp.status, body)
        return conn, resp

    def events(self) -> Iterator[Event]:
        """The agent's events, as they happen (a generator; leave the loop to stop).

        Reconnects by itself (backoff 0.1 s to 5 s) and then yields ``Event("resync")``:
        events may have been missed meanwhile, so list again.
        """
        delay = RETRY_MIN
        connected = False
        while True:
            try:
                conn, resp = self._open_events()
            except (OSError, http.client.HTTPException, FyvaultError):
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, RETRY_MAX)
                continue
            if connected:
                yield Event("resync")
            connected = True
            delay = RETRY_MIN
            parser = SSEParser()
            try:
                while True:
                    raw = resp.readline()
                    if not raw:
                        break
                    ev = parser.line(raw.decode("utf-8", "replace"))
                    if ev is not None:
                        yield ev
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(random.uniform(0, delay))
