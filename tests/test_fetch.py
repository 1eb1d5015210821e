"""HttpOrigin against httpx.MockTransport handlers (and one real local socket server).

Component tier: no FUSE; no network beyond 127.0.0.1. Every test drives the origin inside its
own ``trio.run``.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar, cast

import httpx
import pytest
import trio

from lazyfs.errors import (
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
)
from lazyfs.fetch import HttpOrigin, RetryPolicy, join_url, make_client

T = TypeVar("T")

BASE = "http://origin.test/repo"
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256
FAST = RetryPolicy(
    attempts=3,
    first_delay=0.001,
    max_delay=0.004,
    deadline=10.0,
    connect_timeout=2.0,
    read_timeout=2.0,
)
RANGE = re.compile(r"bytes=(\d+)-(\d+)")

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def mock_client(handler: Handler, policy: RetryPolicy = FAST) -> httpx.AsyncClient:
    """The client make_client builds, with the network replaced by ``handler``."""
    timeout = httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.deadline,
    )
    return httpx.AsyncClient(
        # MockTransport awaits what a handler returns when it is not a Response.
        transport=httpx.MockTransport(cast(Callable[[httpx.Request], httpx.Response], handler)),
        timeout=timeout,
        follow_redirects=True,
        max_redirects=5,
    )


def run_origin(
    handler: Handler,
    call: Callable[[HttpOrigin], Awaitable[T]],
    policy: RetryPolicy = FAST,
) -> T:
    async def main() -> T:
        async with mock_client(handler, policy) as client:
            return await call(HttpOrigin(BASE + "/", client, policy))

    return trio.run(main)


def fetch(
    handler: Handler, start: int, length: int, path: str = "w.bin", policy: RetryPolicy = FAST
) -> bytes:
    return run_origin(handler, lambda o: o.fetch_range(path, start, length), policy)


def requested_range(request: httpx.Request) -> tuple[int, int]:
    match = RANGE.fullmatch(request.headers["range"])
    assert match, request.headers["range"]
    return int(match[1]), int(match[2])


def respond(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still an unread stream, as from a real transport.

    (``httpx.Response(content=bytes)`` reads its body at construction, after which the
    ``aiter_raw`` that HttpOrigin streams with raises StreamConsumed.)
    """
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    return httpx.Response(code, headers=headers, stream=httpx.ByteStream(body))


def partial(request: httpx.Request, data: bytes = DATA) -> httpx.Response:
    """A correct 206 for the request's Range."""
    first, last = requested_range(request)
    return respond(
        206, data[first : last + 1], {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
    )


class Recorder:
    """A handler that records its requests and answers them from a script of responders."""

    def __init__(self, *script: Handler, then: Handler | None = None) -> None:
        self.script = list(script)
        self.then = then
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        self.requests.append(request)
        if self.script:
            return self.script.pop(0)(request)
        assert self.then is not None, "more requests than the test expected"
        return self.then(request)


def status(code: int, **headers: str) -> Handler:
    return lambda request: respond(code, b"nope", headers)


# -- successful range reads ----------------------------------------------------------------


def test_206_returns_exact_bytes_and_sends_range_and_identity() -> None:
    handler = Recorder(then=partial)
    assert fetch(handler, 1000, 333) == DATA[1000:1333]
    (request,) = handler.requests
    assert request.method == "GET"
    assert request.headers["range"] == "bytes=1000-1332"
    assert request.headers["accept-encoding"] == "identity"
    assert str(request.url) == f"{BASE}/w.bin"


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 1), (0, 100), (4000, 1234), (len(DATA) - 300, 300), (len(DATA) - 1, 1), (0, len(DATA))],
    ids=["first-byte", "head", "middle", "tail", "last-byte", "whole"],
)
@pytest.mark.parametrize("chunk", [None, 1, 7, 4096], ids=lambda c: f"chunk={c}")
def test_origin_ignoring_range_yields_exactly_the_slice(
    start: int, length: int, chunk: int | None
) -> None:
    """A 200 with the whole body: the slice is cut out of the stream, however it is chunked."""

    def whole(request: httpx.Request) -> httpx.Response:
        if chunk is None:
            return respond(200, DATA)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(DATA), chunk):
                yield DATA[i : i + chunk]

        return httpx.Response(200, content=chunks())

    handler = Recorder(then=whole)
    assert fetch(handler, start, length) == DATA[start : start + length]
    assert len(handler.requests) == 1


def test_origin_ignoring_range_with_too_short_file_is_an_error() -> None:
    handler = Recorder(then=lambda r: respond(200, DATA))
    with pytest.raises(OriginProtocolError, match="ended after"):
        fetch(handler, len(DATA) - 10, 20)
    assert len(handler.requests) == FAST.attempts


# -- protocol violations: retried, then OriginProtocolError --------------------------------


@pytest.mark.parametrize(
    "content_range",
    ["bytes 1001-1100/10240", "bytes 1000-1098/10240", "bytes 0-99/10240", "", "garbage"],
)
def test_wrong_content_range_is_retried_then_protocol_error(content_range: str) -> None:
    def wrong(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Range": content_range} if content_range else {}
        return respond(206, DATA[1000:1100], headers)

    handler = Recorder(then=wrong)
    with pytest.raises(OriginProtocolError, match="Content-Range"):
        fetch(handler, 1000, 100)
    assert len(handler.requests) == FAST.attempts


def test_wrong_content_range_once_then_right_succeeds() -> None:
    wrong = lambda r: respond(206, DATA[:100], {"Content-Range": "bytes 0-99/10240"})  # noqa: E731
    handler = Recorder(wrong, then=partial)
    assert fetch(handler, 1000, 100) == DATA[1000:1100]
    assert len(handler.requests) == 2


def short_body(request: httpx.Request) -> httpx.Response:
    first, last = requested_range(request)
    content_range = f"bytes {first}-{last}/{len(DATA)}"
    return respond(
        206, DATA[first : first + (last + 1 - first) // 2], {"Content-Range": content_range}
    )


def truncated_stream(request: httpx.Request) -> httpx.Response:
    """Announces the full Content-Length, then the body stream ends halfway."""
    first, last = requested_range(request)
    wanted = last + 1 - first

    async def body() -> AsyncIterator[bytes]:
        yield DATA[first : first + wanted // 4]
        yield DATA[first + wanted // 4 : first + wanted // 2]

    return httpx.Response(
        206,
        headers={
            "Content-Range": f"bytes {first}-{last}/{len(DATA)}",
            "Content-Length": str(wanted),
        },
        content=body(),
    )


def long_body(request: httpx.Request) -> httpx.Response:
    first, last = requested_range(request)
    return respond(
        206, DATA[first : last + 11], {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}
    )


@pytest.mark.parametrize("responder", [short_body, truncated_stream, long_body])
def test_body_of_wrong_length_is_retried_then_protocol_error(responder: Handler) -> None:
    handler = Recorder(then=responder)
    with pytest.raises(OriginProtocolError):
        fetch(handler, 2000, 1000)
    assert len(handler.requests) == FAST.attempts


def test_short_body_once_then_full_succeeds() -> None:
    handler = Recorder(short_body, then=partial)
    assert fetch(handler, 2000, 1000) == DATA[2000:3000]
    assert len(handler.requests) == 2


# -- HTTP status handling ------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408])
def test_retryable_status_then_206_succeeds(code: int) -> None:
    handler = Recorder(status(code), then=partial)
    assert fetch(handler, 10, 20) == DATA[10:30]
    assert len(handler.requests) == 2


def test_429_with_retry_after_zero_is_retried() -> None:
    handler = Recorder(status(429, **{"Retry-After": "0"}), status(429), then=partial)
    assert fetch(handler, 10, 20) == DATA[10:30]
    assert len(handler.requests) == 3


def test_retryable_status_every_time_gives_http_error_after_all_attempts() -> None:
    handler = Recorder(then=status(503))
    with pytest.raises(OriginHTTPError) as info:
        fetch(handler, 10, 20)
    assert info.value.status == 503
    assert len(handler.requests) == FAST.attempts


@pytest.mark.parametrize("code", [404, 403, 401, 410, 416, 400])
def test_final_status_fails_at_once(code: int) -> None:
    handler = Recorder(then=status(code))
    with pytest.raises(OriginHTTPError) as info:
        fetch(handler, 10, 20)
    assert info.value.status == code
    assert str(code) in str(info.value)
    assert len(handler.requests) == 1


def test_redirect_is_followed_with_the_range() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/repo/"):
            return respond(302, b"", {"Location": "http://cdn.test/blob/w.bin"})
        return partial(request)

    recorder = Recorder(then=handler)
    assert fetch(recorder, 100, 50) == DATA[100:150]
    assert [str(r.url) for r in recorder.requests] == [
        f"{BASE}/w.bin",
        "http://cdn.test/blob/w.bin",
    ]
    assert recorder.requests[1].headers["range"] == "bytes=100-149"


# -- transport failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ReadError]
)
def test_transport_errors_are_retried_then_unreachable(error: type[httpx.TransportError]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    handler = Recorder(then=fail)
    with pytest.raises(OriginUnreachable) as info:
        fetch(handler, 0, 10)
    assert isinstance(info.value.__cause__, error)
    assert len(handler.requests) == FAST.attempts


def test_transport_error_once_then_success() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    handler = Recorder(fail, then=partial)
    assert fetch(handler, 0, 10) == DATA[:10]
    assert len(handler.requests) == 2


def test_timeout_mid_body_is_unreachable_not_short_data() -> None:
    def stalls(request: httpx.Request) -> httpx.Response:
        first, last = requested_range(request)

        async def body() -> AsyncIterator[bytes]:
            yield DATA[first : first + 5]
            raise httpx.ReadTimeout("stalled", request=request)

        return httpx.Response(
            206, headers={"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}, content=body()
        )

    handler = Recorder(then=stalls)
    with pytest.raises(OriginUnreachable, match="timed out"):
        fetch(handler, 0, 100)
    assert len(handler.requests) == FAST.attempts


def test_no_httpx_exception_escapes() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.DecodingError("bad", request=request)

    with pytest.raises(SourceError):
        fetch(Recorder(then=broken), 0, 10)


# -- the deadline ----------------------------------------------------------------------------


def test_deadline_bounds_retries_of_a_failing_origin() -> None:
    policy = RetryPolicy(attempts=10_000, first_delay=0.01, max_delay=0.02, deadline=0.3)
    handler = Recorder(then=status(503, **{"Retry-After": "3600"}))
    began = time.monotonic()
    with pytest.raises(OriginUnreachable, match="gave up"):
        fetch(handler, 0, 10, policy=policy)
    assert time.monotonic() - began < 5.0
    assert 1 <= len(handler.requests) < 10_000


def test_deadline_bounds_a_hanging_origin() -> None:
    policy = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, deadline=0.2)

    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    began = time.monotonic()
    with pytest.raises(OriginUnreachable):
        fetch(Recorder(then=hang), 0, 10, policy=policy)
    assert time.monotonic() - began < 5.0


# -- get and URLs ----------------------------------------------------------------------------


def test_get_of_a_small_file() -> None:
    body = b'{"format": "lazyfs-manifest"}\n'
    handler = Recorder(status(503), then=lambda r: respond(200, body))
    assert run_origin(handler, lambda o: o.get("lazyfs-manifest.json")) == body
    assert len(handler.requests) == 2
    request = handler.requests[-1]
    assert "range" not in request.headers
    assert request.headers["accept-encoding"] == "identity"
    assert str(request.url) == f"{BASE}/lazyfs-manifest.json"


def test_get_404_fails_at_once() -> None:
    handler = Recorder(then=status(404))
    with pytest.raises(OriginHTTPError):
        run_origin(handler, lambda o: o.get("lazyfs-manifest.json"))
    assert len(handler.requests) == 1


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        ("http://h/base", "a/b.bin", "http://h/base/a/b.bin"),
        ("http://h/base/", "a/b.bin", "http://h/base/a/b.bin"),
        ("http://h", "my model/w 1.bin", "http://h/my%20model/w%201.bin"),
        ("http://h/", "modèle/权重.bin", "http://h/mod%C3%A8le/%E6%9D%83%E9%87%8D.bin"),
        ("http://h", "odd#name?.bin", "http://h/odd%23name%3F.bin"),
        ("http://h", "100%.bin", "http://h/100%25.bin"),
    ],
)
def test_join_url_quotes_paths(base: str, path: str, url: str) -> None:
    assert join_url(base, path) == url


def test_quoted_path_reaches_the_server_intact() -> None:
    path = "dir with space/modèle #1.bin"
    handler = Recorder(then=partial)
    assert fetch(handler, 0, 4, path=path) == DATA[:4]
    (request,) = handler.requests
    assert request.url.raw_path == b"/repo/dir%20with%20space/mod%C3%A8le%20%231.bin"


# -- a real server that drops the connection mid-body ---------------------------------------


class DroppingServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that announces ``Content-Length`` N and closes
    the connection after N/2 body bytes. ``ignore_range`` answers 200 with the whole file."""

    def __init__(self, data: bytes, ignore_range: bool) -> None:
        self.data = data
        self.ignore_range = ignore_range
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> DroppingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                return
            request += chunk
        match = re.search(rb"(?i)\r\nrange: bytes=(\d+)-(\d+)", request)
        assert match is not None
        first, last = int(match[1]), int(match[2])
        if self.ignore_range:
            body = self.data
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
        else:
            body = self.data[first : last + 1]
            head = (
                f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
                f"Content-Range: bytes {first}-{last}/{len(self.data)}\r\n"
            )
        conn.sendall(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n")
        conn.sendall(body[: len(body) // 2])
        conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield


@pytest.mark.parametrize(
    ("ignore_range", "start", "length"),
    [(False, 1000, 4000), (True, 8000, 1000)],
    ids=["206", "200-ignoring-range"],
)
@pytest.mark.usefixtures("no_proxy")
def test_real_server_dropping_mid_body_never_yields_short_data(
    ignore_range: bool, start: int, length: int
) -> None:
    policy = RetryPolicy(
        attempts=2, first_delay=0.001, max_delay=0.002, deadline=10, read_timeout=5
    )
    result: list[bytes] = []

    async def main() -> None:
        async with make_client(policy) as client:
            origin = HttpOrigin(server.url, client, policy)
            result.append(await origin.fetch_range("w.bin", start, length))

    with DroppingServer(DATA, ignore_range) as server:
        with pytest.raises((OriginProtocolError, OriginUnreachable)):
            trio.run(main)
        assert server.connections == policy.attempts
    assert result == []
