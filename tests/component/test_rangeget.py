"""rangeget.get_range and HttpOrigin.fetch_block (retried by a BlockFetcher, as in a mount)
against real HTTP servers on 127.0.0.1.

Component tier: no FUSE; no network beyond 127.0.0.1. Each server is a small threaded raw-socket
HTTP/1.1 server whose behaviour per request comes from a script of responders (a function of
the request that writes whatever bytes it likes), so the tests can produce the misbehaviour of
real origins: ignored ranges, wrong Content-Range, bodies cut short, stalls, drips, resets,
redirects and idle keep-alive connections closed under the client.

``get_range`` is called directly (it is blocking); ``block`` fetches through a BlockFetcher
over an HttpOrigin inside its own ``trio.run``, with a fast RetryPolicy's limits. Calls that
could hang on a bug run under ``bounded``.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import math
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import httpx
import pytest
import trio

import lazyfs.sources.origin
from lazyfs.core.attempts import RetryPolicy
from lazyfs.errors import (
    BlockIntegrityError,
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
)
from lazyfs.read.fetcher import BlockFetcher
from lazyfs.sources.origin import HttpOrigin, make_client
from lazyfs.sources.rangeget import (
    CHUNK,
    ConnectionPool,
    RangeBody,
    get_range,
)
from lazyfs.sources.transport import MAX_REDIRECTS, Timeouts, Transport, same_origin
from tests.waiting import wait_until, wait_until_async

T = TypeVar("T")

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256
BIG = random.Random(1234).randbytes(CHUNK * 2 + 12345)  # crosses rangeget's CHUNK twice
TIMEOUTS = Timeouts(connect=1.0, read=0.5, request=2.0)
# No proxies, the system CAs: whatever the environment running the tests says.
TRANSPORT = Transport.from_environment(environ={})
FAST = RetryPolicy(
    attempts=3,
    first_delay=0.001,
    max_delay=0.004,
    deadline=5.0,
    connect_timeout=1.0,
    read_timeout=0.5,
)
RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the server ------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    connection: int  # 1 for the server's first TCP connection, 2 for its second, ...
    at: float  # time.monotonic() when the request head was complete

    @property
    def range(self) -> tuple[int, int]:
        match = RANGE.fullmatch(self.headers["range"])
        assert match, self.headers["range"]
        return int(match[1]), int(match[2])


# A responder answers one request on ``conn`` and says whether the connection stays open for
# the next one.
Responder = Callable[["Server", socket.socket, Request], bool]


class Server:
    """A threaded HTTP/1.1 server on 127.0.0.1 with a free port: one thread per connection,
    keep-alive, requests answered by ``script`` in order, then by ``then``.

    ``idle_timeout`` closes a connection that waits that long for its next request (as real
    servers close idle keep-alive connections). ``stop`` ends every connection, which also
    wakes any client still blocked on one.
    """

    def __init__(
        self,
        *script: Responder,
        then: Responder | None = None,
        data: bytes = DATA,
        idle_timeout: float | None = None,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.data = data
        self.idle_timeout = idle_timeout
        self.requests: list[Request] = []
        self.connections = 0
        self.closed = 0  # connections the server has closed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Server:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        _shutdown(self._listener)  # wakes the blocked accept
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            open_now = list(self._open)
        for conn in open_now:
            _shutdown(conn)
        for thread in self._threads:
            thread.join(5)
        assert not any(t.is_alive() for t in self._threads), "a server thread did not end"

    def wait(self, seconds: float) -> bool:
        """Sleep; False if the server is stopping (a responder should then give up)."""
        return not self._stop.wait(seconds)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self._stop.is_set():
                conn.close()
                return
            with self._lock:
                self.connections += 1
                index = self.connections
                self._open.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        buffer = b""
        try:
            while not self._stop.is_set():
                conn.settimeout(self.idle_timeout)
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request = _parse(head, index)
                with self._lock:
                    self.requests.append(request)
                    responder = self.script.pop(0) if self.script else self.then
                assert responder is not None, "more requests than the test expected"
                conn.settimeout(10)
                if not responder(self, conn, request):
                    return
        except OSError:
            pass  # the client went away, or an idle connection timed out
        finally:
            with self._lock:
                self._open.discard(conn)
            _shutdown(conn)
            conn.close()
            with self._lock:
                self.closed += 1


def _parse(head: bytes, connection: int) -> Request:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers, connection, time.monotonic())


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def head(code: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def send(
    conn: socket.socket,
    code: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    chunk: int | None = None,
) -> None:
    """A complete response: Content-Length framing, or chunked in pieces of ``chunk`` bytes."""
    headers = dict(headers or {})
    if chunk is None:
        headers.setdefault("Content-Length", str(len(body)))
        conn.sendall(head(code, headers) + body)
    else:
        headers["Transfer-Encoding"] = "chunked"
        conn.sendall(head(code, headers) + chunked(body, chunk))


def content_range(server: Server, first: int, last: int) -> dict[str, str]:
    return {"Content-Range": f"bytes {first}-{last}/{len(server.data)}"}


# -- responders ------------------------------------------------------------------------------


def partial(server: Server, conn: socket.socket, request: Request) -> bool:
    """A correct 206 for the request's Range, keep-alive."""
    first, last = request.range
    send(conn, 206, server.data[first : last + 1], content_range(server, first, last))
    return True


def partial_chunked(size: int) -> Responder:
    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        first, last = request.range
        body = server.data[first : last + 1]
        send(conn, 206, body, content_range(server, first, last), chunk=size)
        return True

    return respond


def delayed(seconds: float, responder: Responder) -> Responder:
    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        return server.wait(seconds) and responder(server, conn, request)

    return respond


def whole(chunk: int | None = None) -> Responder:
    """An origin that ignores Range: 200 with the whole file."""

    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        send(conn, 200, server.data, chunk=chunk)
        return True

    return respond


def with_content_range(value: str | None) -> Responder:
    """A 206 with the right bytes but the given Content-Range header (None: no header)."""

    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        first, last = request.range
        headers = {} if value is None else {"Content-Range": value}
        send(conn, 206, server.data[first : last + 1], headers)
        return True

    return respond


def short_body(server: Server, conn: socket.socket, request: Request) -> bool:
    """A 206 whose Content-Length honestly announces half the range."""
    first, last = request.range
    half = server.data[first : first + (last + 1 - first) // 2]
    send(conn, 206, half, content_range(server, first, last))
    return True


def truncated(server: Server, conn: socket.socket, request: Request) -> bool:
    """A 206 announcing the full Content-Length whose connection closes halfway."""
    first, last = request.range
    body = server.data[first : last + 1]
    headers = {**content_range(server, first, last), "Content-Length": str(len(body))}
    conn.sendall(head(206, headers) + body[: len(body) // 2])
    return False


def long_body(server: Server, conn: socket.socket, request: Request) -> bool:
    """A 206 with the right Content-Range and ten bytes more than it (Content-Length agrees)."""
    first, last = request.range
    send(conn, 206, server.data[first : last + 11], content_range(server, first, last))
    return False


def truncated_whole(server: Server, conn: socket.socket, request: Request) -> bool:
    """Ignores Range; announces the whole file and closes the connection halfway."""
    headers = {"Content-Length": str(len(server.data))}
    conn.sendall(head(200, headers) + server.data[: len(server.data) // 2])
    return False


def status(code: int, **headers: str) -> Responder:
    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        send(conn, code, b"nope", {k.replace("_", "-"): v for k, v in headers.items()})
        return True

    return respond


def redirect(location: str, code: int = 302) -> Responder:
    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        send(conn, code, b"moved", {"Location": location})
        return True

    return respond


def hang(server: Server, conn: socket.socket, request: Request) -> bool:
    """Reads the request and never answers."""
    server.wait(60)
    return False


def drop(server: Server, conn: socket.socket, request: Request) -> bool:
    """Closes the connection without a response."""
    return False


def reset(server: Server, conn: socket.socket, request: Request) -> bool:
    """Aborts the connection (RST) without a response."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return False


def stall_after(count: int) -> Responder:
    """A 206 head and ``count`` body bytes, then silence."""

    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        first, last = request.range
        headers = {**content_range(server, first, last), "Content-Length": str(last + 1 - first)}
        conn.sendall(head(206, headers) + server.data[first : first + count])
        server.wait(60)
        return False

    return respond


def raw(payload: bytes) -> Responder:
    """Writes ``payload`` as the whole response and closes."""

    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        conn.sendall(payload)
        return False

    return respond


def drip(where: str, interval: float = 0.05) -> Responder:
    """Sends one byte per ``interval``: of the status line and headers, of a 206 body, or of
    the prefix a 200 that ignored Range makes the client skip."""

    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        first, last = request.range
        if where == "head":
            prefix, payload = b"", head(206, content_range(server, first, last))
        elif where == "body":
            headers = {
                **content_range(server, first, last),
                "Content-Length": str(last + 1 - first),
            }
            prefix, payload = head(206, headers), server.data[first : last + 1]
        else:
            prefix, payload = head(200, {"Content-Length": str(len(server.data))}), server.data
        conn.sendall(prefix)
        for i in range(len(payload)):
            if not server.wait(interval):
                return False
            conn.sendall(payload[i : i + 1])
        return False

    return respond


# -- helpers ---------------------------------------------------------------------------------


class StillRunning(Exception):
    pass


def bounded(call: Callable[[], T], limit: float) -> T:
    """``call()`` in a thread; the test fails if it has not returned within ``limit`` seconds.
    (The thread is left to end when the test's server stops.)"""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", call()))
        except BaseException as exc:
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if not outcome:
        raise StillRunning(f"still running after {limit}s")
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    connections = ConnectionPool(TIMEOUTS, TRANSPORT)
    try:
        yield connections
    finally:
        connections.close()


@functools.cache
def shared_client() -> httpx.AsyncClient:
    """One make_client for the module: building one costs ~70 ms of TLS setup, and only
    HttpOrigin.get uses it (fetch_block goes through rangeget), so every trio.run may share it."""
    return make_client(FAST, TRANSPORT)


@pytest.fixture(scope="module", autouse=True)
def _close_shared_client() -> Iterator[None]:
    yield
    if shared_client.cache_info().currsize:
        trio.run(shared_client().aclose)
        shared_client.cache_clear()


def block(
    url: str,
    start: int,
    length: int,
    path: str = "w.bin",
    policy: RetryPolicy = FAST,
    expected: str | None = None,
) -> tuple[bytes, str]:
    """Bytes of ``path`` from HttpOrigin(url), one fetch_block per attempt, retried by a
    BlockFetcher on ``policy``'s limits (as a mount fetches), in its own trio.run."""

    async def main() -> tuple[bytes, str]:
        origin = HttpOrigin(url, shared_client(), policy, transport=TRANSPORT)
        try:
            fetcher = BlockFetcher([origin], policy.limits)
            data, digest = await fetcher.fetch(path, 0, start, length, expected)
            return bytes(data), digest
        finally:
            origin.close()

    return trio.run(main)


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every get_range call fetch_block makes (for origins that take no request)."""
    calls: list[str] = []

    def counting(
        pool: ConnectionPool,
        url: str,
        start: int,
        length: int,
        headers: dict[str, str],
        limit: float = math.inf,
        no_cache: bool = False,
    ) -> RangeBody:
        calls.append(url)
        return get_range(pool, url, start, length, headers, limit, no_cache)

    monkeypatch.setattr(lazyfs.sources.origin, "get_range", counting)
    return calls


def free_port() -> int:
    """A port nothing listens on (the race with another process taking it is ignored)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


# -- successful range reads ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "start", "length"),
    [(DATA, 1000, 333), (DATA, 0, len(DATA)), (BIG, 7, CHUNK * 2 + 1000)],
    ids=["small", "whole", "larger-than-two-chunks"],
)
def test_206_exact_bytes_digest_and_request_headers(
    pool: ConnectionPool, data: bytes, start: int, length: int
) -> None:
    with Server(then=partial, data=data) as server:
        body = get_range(pool, f"{server.url}/repo/w.bin", start, length)
    assert bytes(body.data) == data[start : start + length]
    assert body.sha256 == sha(data[start : start + length])
    assert body.url == f"{server.url}/repo/w.bin"
    (request,) = server.requests
    assert request.method == "GET"
    assert request.target == "/repo/w.bin"
    assert request.headers["range"] == f"bytes={start}-{start + length - 1}"
    assert request.headers["accept-encoding"] == "identity"


def test_fetch_block_returns_bytes_and_digest_in_one_request() -> None:
    with Server(then=partial) as server:
        data, digest = block(server.url + "/repo/", 1000, 333)
    assert data == DATA[1000:1333]
    assert digest == sha(DATA[1000:1333])
    (request,) = server.requests
    assert request.target == "/repo/w.bin"
    assert request.headers["range"] == "bytes=1000-1332"
    assert request.headers["accept-encoding"] == "identity"


def test_quoted_path_reaches_the_server_intact() -> None:
    with Server(then=partial) as server:
        data, _ = block(server.url + "/repo", 0, 4, path="dir with space/modèle #1.bin")
    assert data == DATA[:4]
    (request,) = server.requests
    assert request.target == "/repo/dir%20with%20space/mod%C3%A8le%20%231.bin"


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_chunked_206_yields_exact_bytes(pool: ConnectionPool, size: int) -> None:
    with Server(then=partial_chunked(size)) as server:
        body = get_range(pool, server.url + "/w.bin", 2000, 3000)
    assert bytes(body.data) == DATA[2000:5000]
    assert body.sha256 == sha(DATA[2000:5000])


# -- keep-alive ------------------------------------------------------------------------------


def test_sequential_reads_reuse_one_connection(pool: ConnectionPool) -> None:
    with Server(then=partial) as server:
        for start in (0, 100, 5000, 10000, 3):
            body = get_range(pool, server.url + "/w.bin", start, 200)
            assert bytes(body.data) == DATA[start : start + 200]
    assert len(server.requests) == 5
    assert server.connections == 1


def test_idle_connection_closed_by_the_server_is_replaced_silently(pool: ConnectionPool) -> None:
    with Server(then=partial, idle_timeout=0.1) as server:
        assert bytes(get_range(pool, server.url + "/w.bin", 0, 100).data) == DATA[:100]
        assert wait_until(lambda: server.closed == 1)  # the server closed the idle connection
        assert bytes(get_range(pool, server.url + "/w.bin", 100, 100).data) == DATA[100:200]
    assert server.connections == 2
    assert len(server.requests) == 2


def test_stale_connection_costs_no_fetch_block_attempt() -> None:
    """fetch_block with attempts=1 still succeeds when its pooled connection went stale."""
    policy = RetryPolicy(attempts=1, deadline=5.0, connect_timeout=1.0, read_timeout=0.5)
    results: list[bytes] = []

    async def main(server: Server) -> None:
        origin = HttpOrigin(server.url, shared_client(), policy, transport=TRANSPORT)
        try:
            for start in (0, 500):
                data, _ = await origin.fetch_block("w.bin", start, 100)
                results.append(bytes(data))
                # Until the server has closed the idle connection.
                assert await wait_until_async(lambda: server.closed == len(results))
        finally:
            origin.close()

    with Server(then=partial, idle_timeout=0.1) as server:
        trio.run(main, server)
    assert results == [DATA[0:100], DATA[500:600]]
    assert server.connections == 2


def test_several_stale_idle_connections_are_all_replaced(pool: ConnectionPool) -> None:
    """Two concurrent reads leave two idle connections; the server closes both; the next read
    must still succeed."""
    with Server(then=delayed(0.2, partial), idle_timeout=0.2) as server:
        url = server.url + "/w.bin"
        # The first read finds out that the URL answers itself (reads wait for that); its
        # connection is reused by one of the next two.
        get_range(pool, url, 30, 10)
        threads = [threading.Thread(target=get_range, args=(pool, url, s, 10)) for s in (0, 10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert server.connections == 2, "setup: two idle connections"
        assert wait_until(lambda: server.closed == 2)  # the server closed both idle connections
        body = bounded(lambda: get_range(pool, url, 20, 10), 5)
    assert bytes(body.data) == DATA[20:30]


# -- an origin that ignores Range -------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 1), (0, 100), (4000, 1234), (len(DATA) - 300, 300), (len(DATA) - 1, 1), (0, len(DATA))],
    ids=["first-byte", "head", "middle", "tail", "last-byte", "whole"],
)
@pytest.mark.parametrize("chunk", [None, 1, 7, 4096], ids=lambda c: f"chunk={c}")
def test_origin_ignoring_range_yields_exactly_the_slice(
    pool: ConnectionPool, start: int, length: int, chunk: int | None
) -> None:
    with Server(then=whole(chunk)) as server:
        body = get_range(pool, server.url + "/w.bin", start, length)
    assert bytes(body.data) == DATA[start : start + length]
    assert body.sha256 == sha(DATA[start : start + length])
    assert len(server.requests) == 1


def test_connection_is_not_reused_after_an_ignored_range(pool: ConnectionPool) -> None:
    with Server(then=whole()) as server:
        for start in (0, 5000, len(DATA) - 1):
            body = get_range(pool, server.url + "/w.bin", start, 1)
            assert bytes(body.data) == DATA[start : start + 1]
    assert len(server.requests) == 3
    assert server.connections == 3


def test_fetch_block_from_an_origin_ignoring_range() -> None:
    with Server(then=whole()) as server:
        data, digest = block(server.url, 4000, 1234)
    assert data == DATA[4000:5234]
    assert digest == sha(DATA[4000:5234])


def test_origin_ignoring_range_with_too_short_file_is_an_error(pool: ConnectionPool) -> None:
    with Server(then=whole()) as server:
        with pytest.raises(OriginProtocolError, match="ended after"):
            get_range(pool, server.url + "/w.bin", len(DATA) - 10, 20)
        with pytest.raises(OriginProtocolError, match="ended before"):
            get_range(pool, server.url + "/w.bin", len(DATA) + 10, 20)
        with pytest.raises(OriginProtocolError):
            block(server.url, len(DATA) - 10, 20)
    assert len(server.requests) == 2 + FAST.attempts


@pytest.mark.parametrize(
    "failure",
    [
        "stall",
        "reset",
        "bad-chunk",
    ],
)
def test_failure_while_skipping_to_the_range_is_a_source_error(
    pool: ConnectionPool, failure: str
) -> None:
    def respond(server: Server, conn: socket.socket, request: Request) -> bool:
        if failure == "bad-chunk":
            body = chunked(server.data[:1000], 100)[:-5] + b"zz\r\n"  # a bad chunk size
            conn.sendall(head(200, {"Transfer-Encoding": "chunked"}) + body)
            server.wait(60)
            return False
        conn.sendall(head(200, {"Content-Length": str(len(DATA))}) + server.data[:1000])
        if failure == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.1)
            conn.close()
        else:
            server.wait(60)
        return False

    with Server(then=respond) as server, pytest.raises(SourceError):
        bounded(lambda: get_range(pool, server.url + "/w.bin", 5000, 100), 5)


# -- protocol violations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["bytes 1001-1100/10240", "bytes 1000-1098/10240", "bytes 0-99/10240", None, "garbage"],
)
def test_wrong_content_range_is_a_protocol_error(pool: ConnectionPool, value: str | None) -> None:
    with Server(then=with_content_range(value)) as server:
        with pytest.raises(OriginProtocolError, match="Content-Range"):
            get_range(pool, server.url + "/w.bin", 1000, 100)
        assert len(server.requests) == 1
        with pytest.raises(OriginProtocolError, match="Content-Range"):
            block(server.url, 1000, 100)
    assert len(server.requests) == 1 + FAST.attempts


def test_wrong_content_range_once_then_right_succeeds() -> None:
    with Server(with_content_range("bytes 0-99/10240"), then=partial) as server:
        data, digest = block(server.url, 1000, 100)
    assert (data, digest) == (DATA[1000:1100], sha(DATA[1000:1100]))
    assert len(server.requests) == 2


@pytest.mark.parametrize("responder", [short_body, truncated, long_body])
def test_body_of_wrong_length_is_a_protocol_error(
    pool: ConnectionPool, responder: Responder
) -> None:
    with Server(then=responder) as server:
        with pytest.raises(OriginProtocolError):
            get_range(pool, server.url + "/w.bin", 2000, 1000)
        with pytest.raises(OriginProtocolError):
            block(server.url, 2000, 1000)
    assert len(server.requests) == 1 + FAST.attempts


def test_long_body_error_names_the_excess(pool: ConnectionPool) -> None:
    with (
        Server(then=long_body) as server,
        pytest.raises(OriginProtocolError, match="longer than the 1000 bytes"),
    ):
        get_range(pool, server.url + "/w.bin", 2000, 1000)


def test_short_body_once_then_full_succeeds() -> None:
    with Server(short_body, then=partial) as server:
        assert block(server.url, 2000, 1000)[0] == DATA[2000:3000]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("responder", "start", "length"),
    [(truncated, 1000, 4000), (truncated_whole, 8000, 1000)],
    ids=["206", "200-ignoring-range"],
)
def test_server_dropping_mid_body_never_yields_short_data(
    responder: Responder, start: int, length: int
) -> None:
    policy = RetryPolicy(attempts=2, first_delay=0.001, max_delay=0.002, read_timeout=5)
    with Server(then=responder) as server, pytest.raises(OriginProtocolError):
        block(server.url, start, length, policy=policy)
    assert server.connections == policy.attempts


@pytest.mark.parametrize(
    "payload",
    [
        b"SPAM\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\n" + b"X-Many: yes\r\n" * 200 + b"\r\n",
        head(206, {"Content-Range": "bytes 0-99/10240", "Transfer-Encoding": "chunked"})
        + b"zz\r\n",
    ],
    ids=["bad-status-line", "too-many-headers", "bad-chunk-size"],
)
def test_garbage_responses_are_protocol_errors(pool: ConnectionPool, payload: bytes) -> None:
    with Server(then=raw(payload)) as server:
        with pytest.raises(OriginProtocolError):
            get_range(pool, server.url + "/w.bin", 0, 100)
        with pytest.raises(OriginProtocolError):
            block(server.url, 0, 100)
    assert len(server.requests) == 1 + FAST.attempts


# -- one attempt per fetch_block, retried by the fetcher --------------------------------------


def flipped(server: Server, conn: socket.socket, request: Request) -> bool:
    """A 206 for the request's Range whose first byte is flipped."""
    first, last = request.range
    body = server.data[first : last + 1]
    send(conn, 206, bytes([body[0] ^ 0xFF]) + body[1:], content_range(server, first, last))
    return True


def test_fetch_block_is_one_attempt() -> None:
    """Retries of block bodies are the read path's (one policy, one deadline): the origin
    asks once and says what went wrong."""

    async def main(url: str) -> None:
        origin = HttpOrigin(url, shared_client(), FAST, transport=TRANSPORT)
        try:
            with pytest.raises(OriginHTTPError) as info:
                await origin.fetch_block("w.bin", 0, 10)
            assert info.value.status == 503
        finally:
            origin.close()

    with Server(status(503), then=partial) as server:
        trio.run(main, server.url)
    assert len(server.requests) == 1


def test_errors_and_bad_copies_share_one_budget_of_attempts() -> None:
    """A 503, a bad copy, a 503: the attempts are spent, and the block fails as a bad copy."""
    with (
        Server(status(503), flipped, status(503), then=partial) as server,
        pytest.raises(BlockIntegrityError, match="after 1 fetches"),
    ):
        block(server.url, 0, 100, expected=sha(DATA[:100]))
    assert len(server.requests) == FAST.attempts


def test_an_abandoned_fetch_frees_its_thread_at_the_callers_deadline() -> None:
    """The attempt's time limit reaches the worker thread: it does not wait out the read
    timeout (30 s here) holding one of the origin's fetch threads."""
    policy = RetryPolicy(attempts=1, deadline=60.0, connect_timeout=1.0, read_timeout=30.0)

    async def main(url: str) -> None:
        origin = HttpOrigin(url, shared_client(), policy, transport=TRANSPORT)
        try:
            with trio.move_on_after(0.3):
                await origin.fetch_block("w.bin", 0, 10)
            with trio.fail_after(10):
                while origin.fetch_threads.borrowed_tokens:
                    await trio.sleep(0.02)
        finally:
            origin.close()

    with Server(then=hang) as server:
        trio.run(main, server.url)
    assert len(server.requests) == 1


# -- HTTP status handling ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408])
def test_retryable_status_then_206_succeeds(code: int) -> None:
    with Server(status(code), then=partial) as server:
        assert block(server.url, 10, 20) == (DATA[10:30], sha(DATA[10:30]))
    assert len(server.requests) == 2


def test_429_with_retry_after_zero_is_retried() -> None:
    with Server(status(429, Retry_After="0"), status(429), then=partial) as server:
        assert block(server.url, 10, 20)[0] == DATA[10:30]
    assert len(server.requests) == 3


def test_retryable_status_every_time_gives_http_error_after_all_attempts() -> None:
    with Server(then=status(503)) as server, pytest.raises(OriginHTTPError) as info:
        block(server.url, 10, 20)
    assert info.value.status == 503
    assert len(server.requests) == FAST.attempts


@pytest.mark.parametrize("code", [404, 403, 401, 410, 416, 400])
def test_final_status_fails_at_once(code: int) -> None:
    with Server(then=status(code)) as server, pytest.raises(OriginHTTPError) as info:
        block(server.url, 10, 20)
    assert info.value.status == code
    assert str(code) in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize(("value", "parsed"), [("7", 7.0), (" 120 ", 120.0), ("soon", None)])
def test_retry_after_is_parsed_onto_the_error(
    pool: ConnectionPool, value: str, parsed: float | None
) -> None:
    with (
        Server(then=status(503, Retry_After=value)) as server,
        pytest.raises(OriginHTTPError) as info,
    ):
        get_range(pool, server.url + "/w.bin", 0, 10)
    assert info.value.status == 503
    assert info.value.retry_after == parsed


def test_retry_after_http_date_is_parsed_onto_the_error(pool: ConnectionPool) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with (
        Server(then=status(503, Retry_After=when)) as server,
        pytest.raises(OriginHTTPError) as info,
    ):
        get_range(pool, server.url + "/w.bin", 0, 10)
    assert info.value.retry_after is not None
    assert 25 <= info.value.retry_after <= 31


def test_retry_after_is_honoured_between_attempts() -> None:
    # The pause is max(backoff, Retry-After) capped at 4 * max_delay = 0.4 s.
    policy = RetryPolicy(attempts=2, first_delay=0.001, max_delay=0.1, read_timeout=2)
    with Server(status(503, Retry_After="1"), then=partial) as server:
        assert block(server.url, 0, 10, policy=policy)[0] == DATA[:10]
    first, second = server.requests
    assert second.at - first.at >= 0.35


def test_deadline_bounds_retries_of_a_failing_origin() -> None:
    policy = RetryPolicy(attempts=10_000, first_delay=0.01, max_delay=0.02, deadline=0.3)
    began = time.monotonic()
    with (
        Server(then=status(503, Retry_After="3600")) as server,
        pytest.raises(OriginUnreachable, match="gave up"),
    ):
        block(server.url, 0, 10, policy=policy)
    assert time.monotonic() - began < 5.0
    assert 1 <= len(server.requests) < 10_000


# -- redirects -------------------------------------------------------------------------------


def test_redirect_to_another_server_is_followed_with_the_range(pool: ConnectionPool) -> None:
    with Server(then=partial) as cdn:
        moved = redirect(cdn.url + "/blob/w.bin")
        with Server(moved, moved) as origin:
            body = get_range(pool, origin.url + "/repo/w.bin", 100, 50)
            data, _ = block(origin.url + "/repo", 100, 50)
    assert bytes(body.data) == data == DATA[100:150]
    assert body.url == cdn.url + "/blob/w.bin"
    assert [r.target for r in origin.requests] == ["/repo/w.bin", "/repo/w.bin"]
    assert [r.target for r in cdn.requests] == ["/blob/w.bin", "/blob/w.bin"]
    assert all(r.headers["range"] == "bytes=100-149" for r in origin.requests + cdn.requests)
    assert all(r.headers["accept-encoding"] == "identity" for r in cdn.requests)


def test_a_redirect_is_remembered_so_later_blocks_go_straight_there(
    pool: ConnectionPool,
) -> None:
    secret = {"Authorization": "Bearer s3cret"}
    with Server(then=partial) as cdn, Server(then=redirect(cdn.url + "/blob/w.bin")) as origin:
        for start in (0, 100, 200):
            body = get_range(pool, origin.url + "/w.bin", start, 10, headers=secret)
            assert bytes(body.data) == DATA[start : start + 10]
    assert len(origin.requests) == 1
    assert [r.headers["range"] for r in cdn.requests] == [
        "bytes=0-9",
        "bytes=100-109",
        "bytes=200-209",
    ]
    assert not [r for r in cdn.requests if "authorization" in r.headers]


def test_no_cache_goes_to_every_hop_and_credentials_only_to_their_own(
    pool: ConnectionPool,
) -> None:
    secret = {"Authorization": "Bearer s3cret"}
    with Server(then=partial) as cdn, Server(then=redirect(cdn.url + "/blob/w.bin")) as origin:
        # The first follows the redirect; the others go straight to the remembered CDN.
        for no_cache in (True, False, True):
            body = get_range(pool, origin.url + "/w.bin", 0, 10, secret, no_cache=no_cache)
            assert bytes(body.data) == DATA[:10]
    assert [r.headers.get("cache-control") for r in origin.requests] == ["no-cache"]
    asked = [(r.headers.get("cache-control"), "authorization" in r.headers) for r in cdn.requests]
    assert asked == [("no-cache", False), (None, False), ("no-cache", False)]


def test_concurrent_first_reads_ask_the_redirecting_url_once(pool: ConnectionPool) -> None:
    with (
        Server(then=partial) as cdn,
        Server(then=delayed(0.2, redirect(cdn.url + "/w.bin"))) as origin,
    ):
        starts = range(0, 800, 100)
        bodies: dict[int, bytes] = {}

        def read(start: int) -> None:
            bodies[start] = bytes(get_range(pool, origin.url + "/w.bin", start, 10).data)

        threads = [threading.Thread(target=read, args=(start,)) for start in starts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert bodies == {start: DATA[start : start + 10] for start in starts}
    # One trip to the hub for the redirect; every block from the CDN.
    assert len(origin.requests) == 1
    assert len(cdn.requests) == len(starts)


def test_a_remembered_redirect_that_fails_is_forgotten(pool: ConnectionPool) -> None:
    with (
        Server(partial, status(403), then=partial) as cdn,
        Server(then=redirect(cdn.url + "/blob/w.bin")) as origin,
    ):
        for start in (0, 100, 200):
            body = get_range(pool, origin.url + "/w.bin", start, 10)
            assert bytes(body.data) == DATA[start : start + 10]
    # The expired target (403) sent the second read back to the origin, within one call.
    assert len(origin.requests) == 2
    assert len(cdn.requests) == 4


@pytest.mark.parametrize("code", [301, 303, 307, 308])
def test_every_redirect_status_is_followed(pool: ConnectionPool, code: int) -> None:
    with Server(redirect("/elsewhere/w.bin", code), then=partial) as server:
        body = get_range(pool, server.url + "/w.bin", 0, 10)
    assert bytes(body.data) == DATA[:10]
    assert [r.target for r in server.requests] == ["/w.bin", "/elsewhere/w.bin"]


def test_credentials_are_not_sent_to_another_host(pool: ConnectionPool) -> None:
    secret = {"Authorization": "Bearer s3cret"}
    with Server(then=partial) as cdn, Server(redirect(cdn.url + "/blob/w.bin")) as origin:
        body = get_range(pool, origin.url + "/w.bin", 0, 10, headers=secret)
    assert bytes(body.data) == DATA[:10]
    assert origin.requests[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in cdn.requests[0].headers
    assert cdn.requests[0].headers["range"] == "bytes=0-9"


def test_credentials_follow_a_redirect_on_the_same_host(pool: ConnectionPool) -> None:
    secret = {"Authorization": "Bearer s3cret"}
    with Server(redirect("/other/w.bin"), then=partial) as server:
        get_range(pool, server.url + "/w.bin", 0, 10, headers=secret)
    assert [r.headers.get("authorization") for r in server.requests] == ["Bearer s3cret"] * 2


def test_exactly_max_redirects_still_succeeds(pool: ConnectionPool) -> None:
    hops = [redirect(f"/hop{i}") for i in range(MAX_REDIRECTS)]
    with Server(*hops, then=partial) as server:
        body = get_range(pool, server.url + "/w.bin", 5, 5)
    assert bytes(body.data) == DATA[5:10]
    assert len(server.requests) == MAX_REDIRECTS + 1
    assert server.connections == 1  # small redirect bodies are drained, the connection kept


def test_redirect_loop_is_a_protocol_error(pool: ConnectionPool) -> None:
    with Server(then=redirect("/again")) as server:
        with pytest.raises(OriginProtocolError, match="redirects"):
            get_range(pool, server.url + "/w.bin", 0, 10)
        assert len(server.requests) == MAX_REDIRECTS + 1
        with pytest.raises(OriginProtocolError, match="redirects"):
            block(server.url, 0, 10)
    assert len(server.requests) == (MAX_REDIRECTS + 1) * (1 + FAST.attempts)


def test_redirect_to_an_unsupported_scheme_is_a_protocol_error(pool: ConnectionPool) -> None:
    with (
        Server(then=redirect("ftp://127.0.0.1/w.bin")) as server,
        pytest.raises(OriginProtocolError, match="scheme"),
    ):
        get_range(pool, server.url + "/w.bin", 0, 10)


@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.1:99999/w.bin", "http://127.0.0.1:abc/w.bin", f"http://{'a' * 64}.test/w"],
)
def test_redirect_to_an_unusable_url_is_a_protocol_error(
    pool: ConnectionPool, location: str
) -> None:
    with (
        Server(then=redirect(location)) as server,
        pytest.raises(OriginProtocolError, match="unusable URL"),
    ):
        get_range(pool, server.url + "/w.bin", 0, 10)


def test_redirect_with_a_cut_short_body_is_a_source_error(pool: ConnectionPool) -> None:
    payload = head(302, {"Location": "/w2.bin", "Content-Length": "100"}) + b"moved"
    with Server(then=raw(payload)) as server, pytest.raises(SourceError):
        get_range(pool, server.url + "/w.bin", 0, 10)


# -- transport failures ------------------------------------------------------------------------


def test_connection_refused_is_retried_then_unreachable(
    pool: ConnectionPool, attempts: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OriginUnreachable, match=r"127\.0\.0\.1"):
        get_range(pool, url + "/w.bin", 0, 10)
    with pytest.raises(OriginUnreachable):
        block(url, 0, 10)
    assert attempts == [url + "/w.bin"] * FAST.attempts


def test_connect_timeout_is_retried_then_unreachable(attempts: list[str]) -> None:
    """A listener whose accept queue is full: the kernel drops our SYNs."""
    policy = RetryPolicy(attempts=2, first_delay=0.001, max_delay=0.002, connect_timeout=0.3)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            began = time.monotonic()
            with pytest.raises(OriginUnreachable, match="timed out"):
                block(f"http://127.0.0.1:{port}", 0, 10, policy=policy)
            assert time.monotonic() - began < 3
        finally:
            for filler in fillers:
                filler.close()
    assert len(attempts) == policy.attempts


@pytest.mark.parametrize("responder", [drop, reset], ids=["closed", "reset"])
def test_connection_lost_before_the_response_is_retried_then_unreachable(
    pool: ConnectionPool, responder: Responder
) -> None:
    with Server(then=responder) as server:
        with pytest.raises(OriginUnreachable):
            get_range(pool, server.url + "/w.bin", 0, 10)
        with pytest.raises(OriginUnreachable):
            block(server.url, 0, 10)
    assert len(server.requests) == 1 + FAST.attempts


def test_connection_lost_once_then_success() -> None:
    with Server(drop, then=partial) as server:
        assert block(server.url, 0, 10)[0] == DATA[:10]
    assert len(server.requests) == 2
    assert server.connections == 2


def test_server_that_never_answers_is_unreachable_within_the_timeouts(
    pool: ConnectionPool,
) -> None:
    with Server(then=hang) as server:
        began = time.monotonic()
        with pytest.raises(OriginUnreachable, match="timed out"):
            bounded(lambda: get_range(pool, server.url + "/w.bin", 0, 10), 5)
        assert time.monotonic() - began < TIMEOUTS.read + 1
        began = time.monotonic()
        with pytest.raises(OriginUnreachable, match="timed out"):
            block(server.url, 0, 10)
        assert time.monotonic() - began < FAST.attempts * FAST.read_timeout + 1
    assert len(server.requests) == 1 + FAST.attempts


def test_timeout_mid_body_is_unreachable_not_short_data(pool: ConnectionPool) -> None:
    policy = RetryPolicy(attempts=2, first_delay=0.001, max_delay=0.002, read_timeout=0.5)
    with Server(then=stall_after(5)) as server:
        with pytest.raises(OriginUnreachable, match="timed out"):
            bounded(lambda: get_range(pool, server.url + "/w.bin", 0, 100), 5)
        with pytest.raises(OriginUnreachable, match="timed out"):
            block(server.url, 0, 100, policy=policy)
    assert len(server.requests) == 1 + policy.attempts


def test_deadline_bounds_a_hanging_origin() -> None:
    policy = RetryPolicy(
        attempts=3, first_delay=0.01, max_delay=0.02, deadline=0.3, read_timeout=30
    )
    with Server(then=hang) as server:
        began = time.monotonic()
        with pytest.raises(OriginUnreachable, match="gave up"):
            block(server.url, 0, 10, policy=policy)
        assert time.monotonic() - began < 2.0


def test_slow_drip_fetch_block_gives_up_by_the_deadline() -> None:
    policy = RetryPolicy(
        attempts=3, first_delay=0.001, max_delay=0.002, deadline=1.0, read_timeout=0.5
    )
    with Server(then=drip("body")) as server:
        began = time.monotonic()
        with pytest.raises(OriginUnreachable):
            block(server.url, 0, 1000, policy=policy)
        assert time.monotonic() - began < policy.deadline + 1


@pytest.mark.parametrize("where", ["head", "body", "skipped-prefix"])
def test_slow_drip_get_range_ends_by_the_request_deadline(where: str) -> None:
    timeouts = Timeouts(connect=1.0, read=0.3, request=0.6)
    connections = ConnectionPool(timeouts, TRANSPORT)
    try:
        with Server(then=drip(where)) as server:
            began = time.monotonic()
            with pytest.raises(OriginUnreachable):
                bounded(
                    lambda: get_range(connections, server.url + "/w.bin", 5000, 1000),
                    timeouts.request + 0.6,
                )
            assert time.monotonic() - began < timeouts.request + 0.6
    finally:
        connections.close()


# -- concurrency -----------------------------------------------------------------------------


def test_many_threads_on_one_pool_all_get_exact_bytes(pool: ConnectionPool) -> None:
    errors: list[BaseException] = []
    checked = [0] * 8

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            for _ in range(15):
                start = rng.randrange(len(BIG) - 1)
                length = rng.randint(1, min(len(BIG) - start, 300_000))
                body = get_range(pool, server.url + "/w.bin", start, length)
                assert bytes(body.data) == BIG[start : start + length]
                assert body.sha256 == sha(BIG[start : start + length])
                checked[index] += 1
        except BaseException as exc:
            errors.append(exc)

    with Server(then=partial, data=BIG) as server:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
    assert errors == []
    assert checked == [15] * 8
    assert len(server.requests) == 8 * 15
    # Connections are reused: never more than the threads in flight at once.
    assert server.connections <= 8


def test_buffer_pool_never_hands_out_a_buffer_someone_still_holds() -> None:
    from lazyfs.sources.buffers import BufferPool

    buffers = BufferPool(max_buffers=4)
    held = buffers.take(100)
    view_holder = memoryview(buffers.take(100))[10:20]  # a reply still being sent
    in_a_list = [buffers.take(100)]  # a block kept in memory
    fresh = buffers.take(100)
    assert fresh is not held and fresh is not view_holder.obj and fresh is not in_a_list[0]
    del fresh
    assert buffers.take(100) is not held  # the freed one, never a held one
    del held, view_holder, in_a_list


def test_buffer_pool_makes_room_for_new_sizes_when_full() -> None:
    from lazyfs.sources.buffers import BufferPool

    buffers = BufferPool(max_buffers=2)
    buffers.take(7)
    buffers.take(9)  # both free again at once: odd sizes such as short last blocks
    kept = buffers.take(4096)
    assert len(kept) == 4096
    del kept
    assert len(buffers.take(4096)) == 4096
    assert sorted(len(b) for b in buffers._buffers)[-1] == 4096


def test_the_deadline_cannot_touch_a_connection_after_it_is_released() -> None:
    from lazyfs.sources.rangeget import _Watchdog

    ours, peer = socket.socketpair()

    class Connection:
        sock = ours

    try:
        with _Watchdog(60) as watchdog:
            watchdog.watch(Connection())  # type: ignore[arg-type]
            assert watchdog.release()
            watchdog._fire()  # the deadline passes after the connection went back
        assert watchdog.fired
        peer.sendall(b"still open")
        assert ours.recv(100) == b"still open"
        ours.sendall(b"both ways")
        assert peer.recv(100) == b"both ways"
    finally:
        ours.close()
        peer.close()


def test_the_deadline_shuts_a_watched_connection() -> None:
    from lazyfs.sources.rangeget import _Watchdog

    ours, peer = socket.socketpair()

    class Connection:
        sock = ours

    try:
        with _Watchdog(60) as watchdog:
            watchdog.watch(Connection())  # type: ignore[arg-type]
            watchdog._fire()
            assert not watchdog.release()
        assert ours.recv(100) == b""  # shut down: reads see the end at once
    finally:
        ours.close()
        peer.close()


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("https://hub.test/a", "https://HUB.test:443/b?x", True),
        ("http://hub.test/a", "http://user@hub.test:80/b", True),
        ("https://hub.test/a", "http://hub.test/a", False),
        ("http://hub.test/a", "http://hub.test:8080/a", False),
        ("http://hub.test/a", "http://cdn.test/a", False),
        ("http://hub.test/a", "http://hub.test:99999/a", False),
    ],
)
def test_same_origin_is_scheme_host_and_port(first: str, second: str, same: bool) -> None:
    assert same_origin(first, second) is same
    assert same_origin(second, first) is same
