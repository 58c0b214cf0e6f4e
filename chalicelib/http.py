"""Signed JSON POSTs to partners and carriers over one pooled HTTP client.

SPEC §4: every request has one overall time limit (connect, headers and body together) and reads at
most 64 KiB of answer; beyond either it is a transient failure (Unreachable).

urllib3's timeouts apply to each socket operation, so a server that sends a byte now and then (in the
headers or in the body) would hold a call for ever, and `response.data` buffers any body whole. So:
- every receive after the request is sent waits at most until the call's one deadline (the pool's
  connections give http.client a byte source that sets the socket timeout to the time left first);
- the connect phase ends by the deadline too: the host name is resolved on a helper thread the call stops
  waiting for when the time is up (getaddrinfo has no timeout of its own, and a resolver retrying a dead
  name server takes many seconds), and each of the host's addresses is tried for at most min(3 s, time
  left) while time is left (urllib3 would give each address the whole connect timeout);
- the TLS handshake waits at most the time then left;
- the body is read in chunks and refused one byte past 64 KiB (or at once by its Content-Length).
"""
from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from chalicelib import errors
from chalicelib.api.requests import parse_json
from chalicelib.signing import signed_headers

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# One budget per call, for connect, headers and body together (SPEC §4).
OVERALL_SECONDS = 10.0
# A TCP connect that takes longer than this is a dead host: fail early and leave the rest of the budget.
CONNECT_SECONDS = 3.0
MAX_ANSWER_BYTES = 64 * 1024
# Memory held for an answer stays below MAX_ANSWER_BYTES + 1 whatever the server sends.
_READ_CHUNK = 16 * 1024
# ASCII digits only (str.isdigit() takes "²"); 20 digits is more than any real length.
_CONTENT_LENGTH = re.compile(r"[0-9]{1,20}")
# The failures of a request urllib3 does not wrap in its own HTTPError on every path.
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException)

# time.monotonic() at which the call running in this thread (or task) must be over. The connection
# classes below read it: urllib3 has no way to hand a per-call value down to the socket reads.
_deadline: ContextVar[float | None] = ContextVar("chalicelib_http_deadline", default=None)


class Unreachable(Exception):
    """Connection refused or reset, DNS failure, time limit, answer over 64 KiB: a transient failure."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or None


class _DeadlineReader(io.RawIOBase):
    """The bytes of one response; each receive waits at most until the call's deadline.

    It wraps the socket file http.client made rather than the socket itself: that file holds a
    reference which keeps the socket open when http.client hands a `Connection: close` socket over to
    the response and closes its own."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            # urllib3 turns this into ReadTimeoutError, in the headers as in the body.
            raise TimeoutError("overall time limit reached")
        self._sock.settimeout(remaining)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading through a _DeadlineReader when a call's deadline is set."""

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        deadline = _deadline.get()
        if deadline is not None:
            # Nothing has been read yet, so detaching the buffer loses no bytes.
            self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _resolve(host: str, port: int, deadline: float) -> Sequence[_AddrInfo]:
    """getaddrinfo, given up on at the deadline (socket.timeout)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # a literal address: nothing to look up, no thread
        return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    done = threading.Event()
    outcome: list[Sequence[_AddrInfo] | OSError] = []

    def look_up() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM))
        except OSError as exc:
            outcome.append(exc)
        finally:
            done.set()

    # A daemon: a lookup still running when the call gave up ends on its own and holds nothing.
    threading.Thread(target=look_up, name="resolve", daemon=True).start()
    if not done.wait(max(deadline - time.monotonic(), 0.0)):
        raise TimeoutError(f"resolving {host} took longer than the time left")
    found = outcome[0]
    if isinstance(found, OSError):
        raise found
    return found


def _connect(connection: HTTPConnection, deadline: float) -> socket.socket:
    """urllib3's create_connection within the call's deadline: each address in turn, while time is left."""
    host = connection._dns_host.strip("[]")
    per_address = connection.timeout if isinstance(connection.timeout, int | float) else CONNECT_SECONDS
    last: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in _resolve(host, connection.port, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("overall time limit reached while connecting")
        sock = socket.socket(family, kind, proto)
        try:
            for option in connection.socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(min(per_address, left))
            if connection.source_address:
                sock.bind(connection.source_address)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last


def _new_socket(connection: HTTPConnection) -> socket.socket:
    """The connection's socket, connected within the call's deadline, its timeout then the time left.

    Errors as urllib3's own _new_conn raises them, so the pool treats them the same way."""
    deadline = _deadline.get()
    if deadline is None:  # not within post_signed: its default budget
        deadline = time.monotonic() + OVERALL_SECONDS
    try:
        sock = _connect(connection, deadline)
    except socket.gaierror as exc:
        raise NameResolutionError(connection.host, connection, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(connection, f"Connection to {connection.host} timed out") from exc
    except OSError as exc:
        raise NewConnectionError(connection, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", connection, connection.host, connection.port)
    # CPython bounds a whole TLS handshake by the socket's timeout (not each receive): give it what is
    # left of the call's budget, not a second connect timeout. A tiny positive floor: 0 would make the
    # socket non-blocking rather than fail it.
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    return sock


class _Connection(HTTPConnection):
    response_class = _DeadlineResponse

    def _new_conn(self) -> socket.socket:
        return _new_socket(self)


class _TLSConnection(HTTPSConnection):
    response_class = _DeadlineResponse

    def _new_conn(self) -> socket.socket:
        return _new_socket(self)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


@functools.cache
def _pool() -> urllib3.PoolManager:
    """One client per container (Lambda cold start): connections are reused across invocations."""
    manager = urllib3.PoolManager(num_pools=32, maxsize=8, retries=False,
                                  timeout=urllib3.Timeout(connect=CONNECT_SECONDS, read=OVERALL_SECONDS))
    manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return manager


def post_signed(url: str, payload: dict[str, Any], secret: str, *,
                deadline_seconds: float | None = None) -> Reply:
    """POST `payload` signed with `secret`; Unreachable past the time limit or 64 KiB of answer.

    deadline_seconds overrides OVERALL_SECONDS (tests use short ones)."""
    budget = OVERALL_SECONDS if deadline_seconds is None else deadline_seconds
    if budget <= 0:
        raise ValueError("deadline_seconds must be positive")
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    status, answer = _exchange(url, body, signed_headers(secret, body), budget)
    try:
        # The same strict, depth-bounded parser as for requests: a partner's answer is outside input
        # too (json.loads would recurse on deep nesting and accept lone surrogates).
        parsed = parse_json(answer) if answer else None
    except errors.InvalidRequest:
        parsed = None
    return Reply(status, parsed)


def _exchange(url: str, body: bytes, headers: dict[str, str], budget: float) -> tuple[int, bytes]:
    token = _deadline.set(time.monotonic() + budget)
    try:
        try:
            # The read timeout is only a fallback: _DeadlineReader sets each receive's timeout to the
            # time left. No decoding: we never ask for a compressed answer, and decoding one would
            # let a small body inflate past the cap.
            response = _pool().request(
                "POST", url, body=body, headers=headers, preload_content=False, decode_content=False,
                timeout=urllib3.Timeout(connect=min(CONNECT_SECONDS, budget), read=budget))
        except _TRANSPORT_ERRORS as exc:
            raise Unreachable(type(exc).__name__) from exc
        complete = False
        try:
            answer = _read_capped(response)
            complete = True
        except _TRANSPORT_ERRORS as exc:
            raise Unreachable(type(exc).__name__) from exc
        finally:
            if complete:
                response.release_conn()
            else:
                # Never back to the pool half read; and no draining: the rest may be endless.
                response.close()
        return response.status, answer
    finally:
        _deadline.reset(token)


def _read_capped(response: urllib3.BaseHTTPResponse) -> bytes:
    declared = response.headers.get("Content-Length", "").strip()
    if _CONTENT_LENGTH.fullmatch(declared) and int(declared) > MAX_ANSWER_BYTES:
        raise Unreachable(f"answer of {declared} bytes is over {MAX_ANSWER_BYTES}")
    answer = bytearray()
    # At most MAX_ANSWER_BYTES + 1 reads: each returns at least one byte or ends the body.
    while chunk := response.read(amt=min(_READ_CHUNK, MAX_ANSWER_BYTES + 1 - len(answer))):
        answer += chunk
        if len(answer) > MAX_ANSWER_BYTES:
            # Unframed or chunked bodies: one byte past the cap is enough to know.
            raise Unreachable(f"answer over {MAX_ANSWER_BYTES} bytes")
    return bytes(answer)
