"""HttpOrigin.get, with_retries and RetryPolicy against httpx.MockTransport handlers (and one
real local socket server); join_url.

Component tier: no FUSE; no network beyond 127.0.0.1. Every test drives the origin inside its
own ``trio.run``. Block bodies (``HttpOrigin.fetch_block``) do not go through httpx: they are
tested against real local servers in test_rangeget.py.
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

import httpx
import pytest
import trio
import trio.testing

from lazyfs.core.attempts import RETRYABLE_STATUS, RetryPolicy, is_retryable
from lazyfs.errors import (
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
)
from lazyfs.sources.origin import HttpOrigin, join_url, make_client, with_retries
from lazyfs.sources.transport import Timeouts, Transport

T = TypeVar("T")

BASE = "http://origin.test/repo"
MANIFEST = "lazyfs-manifest.json"
BODY = b'{"format": "lazyfs-manifest"}\n'
FAST = RetryPolicy(
    attempts=3,
    first_delay=0.001,
    max_delay=0.004,
    deadline=10.0,
    connect_timeout=2.0,
    read_timeout=2.0,
)

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


# No proxies, the system CAs: whatever the environment running the tests says.
TRANSPORT = Transport.from_environment(environ={})


def mock_client(handler: Handler, policy: RetryPolicy = FAST) -> httpx.AsyncClient:
    """The client make_client builds, with the network replaced by ``handler``."""
    return httpx.AsyncClient(
        # MockTransport awaits what a handler returns when it is not a Response.
        transport=httpx.MockTransport(cast(Callable[[httpx.Request], httpx.Response], handler)),
        timeout=Timeouts.of(policy).for_httpx(),
        trust_env=False,
        follow_redirects=False,
    )


def run_origin(
    handler: Handler,
    call: Callable[[HttpOrigin], Awaitable[T]],
    policy: RetryPolicy = FAST,
) -> T:
    async def main() -> T:
        async with mock_client(handler, policy) as client:
            origin = HttpOrigin(BASE + "/", client, policy, transport=TRANSPORT)
            try:
                return await call(origin)
            finally:
                origin.close()

    return trio.run(main)


def get(handler: Handler, path: str = MANIFEST, policy: RetryPolicy = FAST) -> bytes:
    return run_origin(handler, lambda o: o.get(path), policy)


def respond(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still an unread stream, as from a real transport.

    (``httpx.Response(content=bytes)`` reads its body at construction, so it would not
    exercise the streaming read that HttpOrigin.get does.)
    """
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    return httpx.Response(code, headers=headers, stream=httpx.ByteStream(body))


def ok(request: httpx.Request) -> httpx.Response:
    return respond(200, BODY)


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


# -- get -------------------------------------------------------------------------------------


def test_get_of_a_small_file() -> None:
    handler = Recorder(status(503), then=ok)
    assert get(handler) == BODY
    assert len(handler.requests) == 2
    request = handler.requests[-1]
    assert "range" not in request.headers
    assert request.headers["accept-encoding"] == "identity"
    assert str(request.url) == f"{BASE}/{MANIFEST}"


def test_get_404_fails_at_once() -> None:
    handler = Recorder(then=status(404))
    with pytest.raises(OriginHTTPError):
        get(handler)
    assert len(handler.requests) == 1


def test_quoted_path_reaches_the_server_intact() -> None:
    handler = Recorder(then=ok)
    assert get(handler, path="dir with space/modèle #1.json") == BODY
    (request,) = handler.requests
    assert request.url.raw_path == b"/repo/dir%20with%20space/mod%C3%A8le%20%231.json"


# -- HTTP status handling ------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408])
def test_retryable_status_then_200_succeeds(code: int) -> None:
    handler = Recorder(status(code), then=ok)
    assert get(handler) == BODY
    assert len(handler.requests) == 2


def test_429_with_retry_after_zero_is_retried() -> None:
    handler = Recorder(status(429, **{"Retry-After": "0"}), status(429), then=ok)
    assert get(handler) == BODY
    assert len(handler.requests) == 3


def test_retryable_status_every_time_gives_http_error_after_all_attempts() -> None:
    handler = Recorder(then=status(503))
    with pytest.raises(OriginHTTPError) as info:
        get(handler)
    assert info.value.status == 503
    assert len(handler.requests) == FAST.attempts


@pytest.mark.parametrize("code", [404, 403, 401, 410, 416, 400, 206])
def test_final_status_fails_at_once(code: int) -> None:
    handler = Recorder(then=status(code))
    with pytest.raises(OriginHTTPError) as info:
        get(handler)
    assert info.value.status == code
    assert str(code) in str(info.value)
    assert len(handler.requests) == 1


def test_retry_after_seconds_and_dates_are_parsed_onto_the_error() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    found: list[float | None] = []
    for value in ("7", when, past, "soon", None):
        headers = {} if value is None else {"Retry-After": value}
        with pytest.raises(OriginHTTPError) as info:
            get(Recorder(then=status(404, **headers)))
        found.append(info.value.retry_after)
    seconds, future, gone, garbage, missing = found
    assert seconds == 7.0
    assert future is not None and 25 <= future <= 31
    assert gone == 0.0
    assert garbage is None and missing is None


def test_redirect_is_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/repo/"):
            return respond(302, b"", {"Location": "http://cdn.test/blob/m.json"})
        return ok(request)

    recorder = Recorder(then=handler)
    assert get(recorder) == BODY
    assert [str(r.url) for r in recorder.requests] == [
        f"{BASE}/{MANIFEST}",
        "http://cdn.test/blob/m.json",
    ]
    assert recorder.requests[1].headers["accept-encoding"] == "identity"


# -- transport failures: httpx errors mapped ----------------------------------------------------


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ReadError]
)
def test_transport_errors_are_retried_then_unreachable(error: type[httpx.TransportError]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    handler = Recorder(then=fail)
    with pytest.raises(OriginUnreachable) as info:
        get(handler)
    assert isinstance(info.value.__cause__, error)
    assert len(handler.requests) == FAST.attempts


def test_transport_error_once_then_success() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    handler = Recorder(fail, then=ok)
    assert get(handler) == BODY
    assert len(handler.requests) == 2


def test_timeout_mid_body_is_unreachable_not_short_data() -> None:
    def stalls(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield BODY[:5]
            raise httpx.ReadTimeout("stalled", request=request)

        return httpx.Response(200, headers={"Content-Length": str(len(BODY))}, content=body())

    handler = Recorder(then=stalls)
    with pytest.raises(OriginUnreachable, match="timed out"):
        get(handler)
    assert len(handler.requests) == FAST.attempts


def test_no_httpx_exception_escapes() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.DecodingError("bad", request=request)

    with pytest.raises(OriginProtocolError) as info:
        get(Recorder(then=broken))
    assert isinstance(info.value.__cause__, httpx.DecodingError)


def test_too_many_redirects_is_a_source_error() -> None:
    loop = Recorder(then=lambda r: respond(302, b"", {"Location": f"{BASE}/again"}))
    with pytest.raises(OriginProtocolError, match="more than 5 redirects"):
        get(loop)


# -- the deadline ----------------------------------------------------------------------------


def test_deadline_bounds_retries_of_a_failing_origin() -> None:
    policy = RetryPolicy(attempts=10_000, first_delay=0.01, max_delay=0.02, deadline=0.3)
    handler = Recorder(then=status(503, **{"Retry-After": "3600"}))
    began = time.monotonic()
    with pytest.raises(OriginUnreachable, match="gave up"):
        get(handler, policy=policy)
    assert time.monotonic() - began < 5.0
    assert 1 <= len(handler.requests) < 10_000


def test_deadline_bounds_a_hanging_origin() -> None:
    policy = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, deadline=0.2)

    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    began = time.monotonic()
    with pytest.raises(OriginUnreachable):
        get(Recorder(then=hang), policy=policy)
    assert time.monotonic() - began < 5.0


# -- with_retries, RetryPolicy, is_retryable ---------------------------------------------------


def run_retries(
    policy: RetryPolicy, failures: list[BaseException], result: str = "done"
) -> tuple[str, int, float]:
    """with_retries over an attempt that raises ``failures`` in turn, then returns ``result``;
    on a MockClock, so pauses cost no wall time and are measured exactly.
    Returns (result, attempts made, virtual seconds spent)."""
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return result

    async def main() -> tuple[str, int, float]:
        began = trio.current_time()
        value = await with_retries(policy, "test", attempt)
        return value, calls, trio.current_time() - began

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_with_retries_retries_retryable_errors_until_success() -> None:
    failures: list[BaseException] = [
        OriginUnreachable("down"),
        OriginProtocolError("bad range"),
        OriginHTTPError("busy", 503),
    ]
    policy = RetryPolicy(attempts=4, first_delay=0.1, max_delay=1.0)
    value, calls, spent = run_retries(policy, failures)
    assert (value, calls) == ("done", 4)
    # Backoff 0.1, 0.2, 0.4, each jittered into [half, whole].
    assert 0.35 - 1e-9 <= spent <= 0.7 + 1e-9


def test_with_retries_stops_at_a_final_error() -> None:
    error = OriginHTTPError("gone", 404)
    with pytest.raises(OriginHTTPError) as info:
        run_retries(FAST, [error, OriginUnreachable("never reached")])
    assert info.value is error


def test_with_retries_raises_the_last_error_after_all_attempts() -> None:
    errors = [OriginUnreachable(f"down {i}") for i in range(FAST.attempts)]
    with pytest.raises(OriginUnreachable, match=f"down {FAST.attempts - 1}"):
        run_retries(FAST, list(errors))


def test_with_retries_lets_other_exceptions_through_unretried() -> None:
    failures: list[BaseException] = [ValueError("a bug"), OriginUnreachable("never reached")]
    with pytest.raises(ValueError, match="a bug"):
        run_retries(FAST, failures)
    assert len(failures) == 1


def test_with_retries_honours_retry_after_up_to_its_cap() -> None:
    policy = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.5)
    _, _, spent = run_retries(policy, [OriginHTTPError("busy", 503, retry_after=1.5)])
    assert spent == pytest.approx(1.5)
    _, _, spent = run_retries(policy, [OriginHTTPError("busy", 503, retry_after=3600)])
    assert spent == pytest.approx(policy.max_delay * 4)


def test_with_retries_gives_up_at_the_deadline() -> None:
    policy = RetryPolicy(attempts=1000, first_delay=1.0, max_delay=1.0, deadline=10.0)
    failures: list[BaseException] = [OriginUnreachable("down")] * 1000
    with pytest.raises(OriginUnreachable, match="gave up after 10s"):
        run_retries(policy, failures)


def test_giving_up_in_a_pause_names_the_last_error() -> None:
    policy = RetryPolicy(attempts=5, first_delay=0.1, max_delay=4.0, deadline=10.0)
    # Retry-After asks for more than the deadline leaves: the pause after attempt 1 is cut.
    failures: list[BaseException] = [OriginHTTPError("http://o/x: HTTP 503", 503, 3600)]
    with pytest.raises(OriginUnreachable) as info:
        run_retries(policy, failures)
    assert str(info.value) == "test: gave up after 10s: attempt 1 failed: http://o/x: HTTP 503"


@pytest.mark.parametrize("failures_first", [0, 1])
def test_giving_up_on_an_attempt_still_running_says_so(failures_first: int) -> None:
    policy = RetryPolicy(attempts=5, first_delay=0.1, max_delay=0.1, deadline=2.5)
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= failures_first:
            raise OriginUnreachable("http://o/x: reset")
        await trio.sleep_forever()  # an answer that never completes, as from a trickle
        raise AssertionError("unreachable")

    async def main() -> str:
        return await with_retries(policy, "GET http://o/x", attempt)

    with pytest.raises(OriginUnreachable) as info:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    expected = "GET http://o/x: gave up after 2.5s: attempt 1 had no complete answer by then"
    if failures_first:
        expected = (
            "GET http://o/x: gave up after 2.5s: attempt 2 had no complete answer by then; "
            "attempt 1 failed: http://o/x: reset"
        )
    assert str(info.value) == expected


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 20])
def test_retry_policy_delay_is_jittered_capped_backoff(attempt: int) -> None:
    policy = RetryPolicy(first_delay=0.25, max_delay=4.0)
    backoff = min(4.0, 0.25 * 2 ** (attempt - 1))
    for _ in range(50):
        assert backoff / 2 <= policy.delay(attempt, None) <= backoff
        assert policy.delay(attempt, 0.0) <= backoff
        assert policy.delay(attempt, 10.0) == 10.0
        assert policy.delay(attempt, 100.0) == 16.0


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        *[(OriginHTTPError("x", code), True) for code in sorted(RETRYABLE_STATUS)],
        *[(OriginHTTPError("x", code), False) for code in (400, 401, 403, 404, 410, 416, 501)],
        (OriginUnreachable("x"), True),
        (OriginProtocolError("x"), True),
        (SourceError("x"), False),
    ],
    ids=lambda value: f"{type(value).__name__}-{getattr(value, 'status', value)}",
)
def test_is_retryable(error: SourceError, retryable: bool) -> None:
    assert is_retryable(error) is retryable


# -- URLs ------------------------------------------------------------------------------------


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


# -- a real server that drops the connection mid-body ---------------------------------------


class DroppingServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that answers 200 announcing ``Content-Length``
    N and closes the connection after N/2 body bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
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
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.data)}\r\n"
        conn.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n")
        conn.sendall(self.data[: len(self.data) // 2])
        conn.shutdown(socket.SHUT_RDWR)


def test_real_server_dropping_mid_body_never_yields_short_data() -> None:
    policy = RetryPolicy(
        attempts=2, first_delay=0.001, max_delay=0.002, deadline=10, read_timeout=5
    )
    result: list[bytes] = []

    async def main() -> None:
        async with make_client(policy, TRANSPORT) as client:
            origin = HttpOrigin(server.url, client, policy, transport=TRANSPORT)
            try:
                result.append(await origin.get(MANIFEST))
            finally:
                origin.close()

    with DroppingServer(bytes(range(256)) * 40) as server:
        with pytest.raises((OriginProtocolError, OriginUnreachable)):
            trio.run(main)
        assert server.connections == policy.attempts
    assert result == []


@pytest.mark.parametrize("value", ["²", "1e9", "-5", "Mon, 99 Foo 9999 99:99:99 GMT", " ", "٣"])
def test_a_malformed_retry_after_is_ignored_not_raised(value: str) -> None:
    from lazyfs.sources.transport import parse_retry_after

    assert parse_retry_after(value) is None
