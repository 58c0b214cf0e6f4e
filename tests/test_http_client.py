"""chalicelib.http against real servers on 127.0.0.1: one overall time limit and a 64 KiB answer cap (SPEC §4).

Each server is a raw TCP listener, so a test controls every byte and every pause; its threads are
daemons, every loop is bounded, and all of it stops when the `with` block ends.
"""
from __future__ import annotations

import json
import resource
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pytest

from chalicelib import http, signing

SECRET = "test-secret"
PAYLOAD = {"lookup_id": "L-1", "phone": "13812345678"}
DEADLINE = 2.0
# Generous: these bound behaviour (the call ends at the deadline, not deadline x bytes), not speed.
SLACK = 1.5
HUGE = 300 * 1024 * 1024
PIECE = b"x" * (64 * 1024)

Handler = Callable[[socket.socket, threading.Event], None]


class Server:
    """A TCP listener on a free port; each connection runs `handler(conn, stop)` in a daemon thread."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.stop = threading.Event()
        self.connections = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)  # the accept loop looks at `stop` this often
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/lookups"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Server:
        self._acceptor.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop.set()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)  # a handler never waits on the client for ever
            try:
                self._handler(conn, self.stop)
            except OSError:
                pass  # the client gave up (reset, broken pipe): what most of these tests provoke


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes] | None:
    """The next request's headers (lower-case names) and body, or None once the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
        assert len(data) < 64 * 1024, "request headers never ended"
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        body += chunk
    return headers, body


def send_answer(conn: socket.socket, body: bytes, framing: str, status: str = "200 OK") -> None:
    """One answer framed by Content-Length (keep-alive), by closing the connection, or chunked."""
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    if framing == "length":
        conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    elif framing == "close":
        conn.sendall(f"{head}Connection: close\r\n\r\n".encode() + body)
    else:
        conn.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        for start in range(0, len(body), 1000):
            piece = body[start:start + 1000]
            conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.sendall(b"0\r\n\r\n")


def answering(bodies: list[bytes], framing: str = "length",
              seen: list[tuple[dict[str, str], bytes]] | None = None) -> Handler:
    """Answers the n-th request (over all connections) with bodies[n]; records requests in `seen`."""
    answered = iter(bodies)

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        for _ in bodies:  # bounded; a keep-alive connection serves several requests
            request = read_request(conn)
            if request is None:
                return
            if seen is not None:
                seen.append(request)
            send_answer(conn, next(answered), framing)  # taken only once a request came
            if framing == "close":
                return
    return handler


def json_of_size(size: int) -> bytes:
    body = b'{"pad":"' + b"x" * (size - 10) + b'"}'
    assert len(body) == size
    return body


def timed_unreachable(url: str, deadline: float) -> float:
    started = time.monotonic()
    with pytest.raises(http.Unreachable):
        http.post_signed(url, PAYLOAD, SECRET, deadline_seconds=deadline)
    return time.monotonic() - started


def test_json_answer_is_parsed() -> None:
    with Server(answering([b'{"lookup_id":"L-1","account_count":2}'])) as server:
        reply = http.post_signed(server.url, PAYLOAD, SECRET)
    assert reply == http.Reply(200, {"lookup_id": "L-1", "account_count": 2})


def test_error_status_and_non_json_answer() -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        if read_request(conn) is not None:
            send_answer(conn, b"<html>busy</html>", "length", status="503 Service Unavailable")

    with Server(handler) as server:
        assert http.post_signed(server.url, PAYLOAD, SECRET) == http.Reply(503, None)


def test_request_is_signed() -> None:
    seen: list[tuple[dict[str, str], bytes]] = []
    with Server(answering([b"{}"], seen=seen)) as server:
        http.post_signed(server.url, PAYLOAD, SECRET)
    [(headers, body)] = seen
    assert headers["x-timestamp"] and headers["x-signature"]
    signing.verify(SECRET, headers, body)  # raises BadSignature otherwise
    assert json.loads(body) == PAYLOAD


def test_body_dripping_one_byte_at_a_time_ends_at_the_deadline() -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        if read_request(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # 500 s at most; the client leaves long before
            if stop.wait(0.5):
                return
            conn.sendall(b" ")

    with Server(handler) as server:
        elapsed = timed_unreachable(server.url, DEADLINE)
    assert DEADLINE - 0.2 <= elapsed < DEADLINE + SLACK


def test_headers_dripping_one_byte_at_a_time_end_at_the_deadline() -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        if read_request(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(1000):
            if stop.wait(0.2):
                return
            conn.sendall(b"a")

    with Server(handler) as server:
        elapsed = timed_unreachable(server.url, DEADLINE)
    assert DEADLINE - 0.2 <= elapsed < DEADLINE + SLACK


def test_server_that_never_answers_ends_at_the_deadline() -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(30)  # accepted, never a byte back

    with Server(handler) as server:
        elapsed = timed_unreachable(server.url, DEADLINE)
    assert DEADLINE - 0.2 <= elapsed < DEADLINE + SLACK


def test_refused_connection_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: the connect is refused
        elapsed = timed_unreachable(f"http://127.0.0.1:{port}/lookups", DEADLINE)
    assert elapsed < DEADLINE


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_huge_answer_is_refused_without_buffering_it(framing: str) -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        if read_request(conn) is None:
            return
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if framing == "length":
            conn.sendall(head + f"Content-Length: {HUGE}\r\n\r\n".encode())
        elif framing == "close":
            conn.sendall(head + b"Connection: close\r\n\r\n")
        else:
            conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        # Generated on the fly from one 64 KiB piece; ends when the client hangs up (send fails).
        for _ in range(HUGE // len(PIECE)):
            if stop.is_set():
                return
            if framing == "chunked":
                conn.sendall(f"{len(PIECE):x}\r\n".encode())
            conn.sendall(PIECE)
            if framing == "chunked":
                conn.sendall(b"\r\n")

    with Server(handler) as server:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        tracemalloc.start()
        try:
            elapsed = timed_unreachable(server.url, 10.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert elapsed < 3.0  # the cap ends it, not the 10 s deadline
    assert peak < 1024 * 1024
    assert rss_growth < 50 * 1024


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_answer_of_exactly_64_kib_is_accepted(framing: str) -> None:
    body = json_of_size(http.MAX_ANSWER_BYTES)
    with Server(answering([body], framing)) as server:
        reply = http.post_signed(server.url, PAYLOAD, SECRET, deadline_seconds=5)
    assert reply == http.Reply(200, json.loads(body))


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_answer_of_64_kib_and_one_byte_is_refused(framing: str) -> None:
    with Server(answering([json_of_size(http.MAX_ANSWER_BYTES + 1)], framing)) as server:
        timed_unreachable(server.url, 5)


def test_complete_answers_reuse_the_connection_refused_ones_do_not() -> None:
    bodies = [b'{"n":1}', b'{"n":2}', json_of_size(http.MAX_ANSWER_BYTES + 1), b'{"n":3}']
    with Server(answering(bodies, "chunked")) as server:
        assert http.post_signed(server.url, PAYLOAD, SECRET).body == {"n": 1}
        assert http.post_signed(server.url, PAYLOAD, SECRET).body == {"n": 2}
        assert server.connections == 1  # released to the pool after a full read, then reused
        with pytest.raises(http.Unreachable):
            http.post_signed(server.url, PAYLOAD, SECRET)
        assert http.post_signed(server.url, PAYLOAD, SECRET).body == {"n": 3}
        assert server.connections == 2  # the half-read connection was closed, not pooled


def test_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError):
        http.post_signed("http://127.0.0.1:1/lookups", PAYLOAD, SECRET, deadline_seconds=0)


def test_deadline_is_not_left_behind_for_other_calls() -> None:
    assert http._deadline.get() is None
    with Server(answering([b"{}"])) as server:
        http.post_signed(server.url, PAYLOAD, SECRET, deadline_seconds=1)
    assert http._deadline.get() is None


# -- the connect phase: name resolution and every address of a host within the one deadline -------------
class Backlogged:
    """A listener whose accept queue is full (one connection waits in it, never accepted): the kernel
    drops every further SYN, so a connect to it hangs until its timeout, as to an unroutable address."""

    def __enter__(self) -> Backlogged:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.address = self._listener.getsockname()
        self._filler = socket.create_connection(self.address, timeout=1)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._filler.close()
        self._listener.close()


def resolving(monkeypatch: pytest.MonkeyPatch, name: str,
              answer: Callable[[], list[tuple[Any, ...]]]) -> None:
    """The system resolver, as seen by the client, answers `name` by `answer()` (other names as usual)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return answer() if host == name else real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_host_with_several_silent_addresses_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each address may take the connect timeout, but the call as a whole no more than its deadline."""
    with Backlogged() as silent:
        entry = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", silent.address)
        resolving(monkeypatch, "partner.test", lambda: [entry] * 4)
        elapsed = timed_unreachable(f"http://partner.test:{silent.address[1]}/lookups", DEADLINE)
    assert DEADLINE - 0.2 <= elapsed < DEADLINE + SLACK


def test_slow_name_resolution_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def stuck() -> list[tuple[Any, ...]]:
        released.wait(30)  # a resolver retrying a dead name server; let go when the test ends
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    resolving(monkeypatch, "partner.test", stuck)
    try:
        elapsed = timed_unreachable("http://partner.test:8080/lookups", DEADLINE)
    finally:
        released.set()
    assert DEADLINE - 0.2 <= elapsed < DEADLINE + SLACK
