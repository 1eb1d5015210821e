"""The block body path: one range GET, read straight into a preallocated buffer and hashed as
it arrives, on a blocking keep-alive connection in a worker thread.

httpx reads bodies 64 KiB at a time through a pure-Python parser on the event loop, which
caps a block download far below what the wire and hashlib can do. Here the stdlib's
http.client reads into one buffer (``readinto``, a C loop over ``recv_into``) and hashlib
updates per chunk while the bytes are still in the CPU cache; both release the GIL, so two
worker threads keep both cores busy. Everything raised is the project's SourceError tree.

How a request travels (proxy or not, TLS, redirects, credentials, what a failure means) is
the transport module's policy, the same one the httpx side follows; a direct plain-http
connection costs nothing for it beyond one dictionary look-up per request.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import http.client
import itertools
import math
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from lazyfs.errors import OriginProtocolError, OriginUnreachable, SourceError
from lazyfs.sources.buffers import BufferPool
from lazyfs.sources.transport import (
    RedirectChain,
    Route,
    Timeouts,
    Transport,
    same_origin,
    status_error,
    transport_error,
)

CHUNK = 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class RangeBody:
    data: bytearray
    sha256: str
    url: str


Key = tuple[str, str, int | None]


REDIRECT_SECONDS = 300.0
MAX_REMEMBERED_REDIRECTS = 4096


class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port), shared by worker threads; each
    key's route (direct, tunnelled or forwarded through a proxy) comes from ``transport``."""

    def __init__(
        self, timeouts: Timeouts, transport: Transport, max_idle_per_host: int = 8
    ) -> None:
        self.timeouts = timeouts
        self.transport = transport
        self.max_idle_per_host = max_idle_per_host
        self.buffers = BufferPool()
        self._idle: defaultdict[Key, list[http.client.HTTPConnection]] = defaultdict(list)
        self._routes: dict[Key, Route] = {}
        self._lock = threading.Lock()
        # Where a URL redirected to lately (a hub's signed CDN URL), and until when to go
        # there directly: one round trip per block instead of two.
        self._redirects: dict[str, tuple[str, float]] = {}
        # URLs whose redirect one thread is finding out now; the others wait for it.
        self._resolving: dict[str, threading.Event] = {}

    @contextmanager
    def resolving(self, url: str) -> Iterator[None]:
        """Ask ``url`` itself (no redirect remembered) one thread at a time: the first
        fetches of a hub file's blocks, many at once, cost one trip to the hub, not one
        each. A thread that waits longer than a connect timeout goes ahead anyway."""
        with self._lock:
            running = self._resolving.get(url)
            if running is None:
                mine = self._resolving[url] = threading.Event()
        if running is not None:
            running.wait(self.timeouts.connect)
            yield
            return
        try:
            yield
        finally:
            with self._lock:
                del self._resolving[url]
            mine.set()

    def redirect_for(self, url: str) -> str | None:
        with self._lock:
            target, until = self._redirects.get(url, ("", 0.0))
        return target if until > time.monotonic() else None

    def remember_redirect(self, url: str, target: str) -> None:
        with self._lock:
            if len(self._redirects) >= MAX_REMEMBERED_REDIRECTS:
                self._redirects.clear()
            self._redirects[url] = (target, time.monotonic() + REDIRECT_SECONDS)

    def forget_redirect(self, url: str) -> None:
        with self._lock:
            self._redirects.pop(url, None)

    def route(self, key: Key) -> Route:
        # A route depends on its key alone: two threads racing here store the same one.
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = self.transport.route(*key)
        return found

    def acquire(self, key: Key, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for ``key`` and whether it was reused (and so may have gone stale)."""
        with self._lock:
            if self._idle[key] and not fresh:
                return self._idle[key].pop(), True
        # This timeout bounds the connect; _send sets the read timeout once connected.
        return self.route(key).connection(self.transport.tls, self.timeouts.connect), False

    def release(self, key: Key, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle[key]) < self.max_idle_per_host:
                self._idle[key].append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            for connections in self._idle.values():
                for connection in connections:
                    connection.close()
            self._idle.clear()


class _Deadlines:
    """One thread that fires every request's deadline when it passes. A ``threading.Timer``
    per request would start (and wait for) a new thread for every block fetched."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watchdog]] = []
        self._cancelled: set[int] = set()
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, when: float, watchdog: _Watchdog) -> int:
        with self._changed:
            number = next(self._order)
            heapq.heappush(self._heap, (when, number, watchdog))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lazyfs-deadlines")
                self._thread.daemon = True
                self._thread.start()
            if self._heap[0][1] == number:
                self._changed.notify()
            return number

    def cancel(self, number: int) -> None:
        with self._changed:
            self._cancelled.add(number)
            if len(self._cancelled) > max(64, len(self._heap) // 2):
                # Requests end long before their deadlines: drop their entries in one go.
                self._heap = [item for item in self._heap if item[1] not in self._cancelled]
                heapq.heapify(self._heap)
                self._cancelled.clear()

    def _run(self) -> None:
        while True:
            with self._changed:
                due = self._next_due()
            due._fire()

    def _next_due(self) -> _Watchdog:
        while True:
            while self._heap and self._heap[0][1] in self._cancelled:
                self._cancelled.discard(heapq.heappop(self._heap)[1])
            if not self._heap:
                self._changed.wait()
                continue
            delay = self._heap[0][0] - time.monotonic()
            if delay <= 0:
                return heapq.heappop(self._heap)[2]
            self._changed.wait(delay)


_DEADLINES = _Deadlines()


class _Watchdog:
    """Shuts the current connection's socket at the request deadline: per-read timeouts
    alone let a server that drips a byte at a time hold a fetch (and its thread) forever."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._seconds = seconds
        self._entry: int | None = None

    def __enter__(self) -> _Watchdog:
        if math.isfinite(self._seconds):
            self._entry = _DEADLINES.add(time.monotonic() + self._seconds, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._entry is not None:
            _DEADLINES.cancel(self._entry)

    def watch(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connection = connection
        if self.fired:
            self._fire()

    def release(self) -> bool:
        """Stop watching the connection; True if it may go back to the pool (the deadline
        did not shut it down). After this, firing cannot touch it."""
        with self._lock:
            self._connection = None
            return not self.fired

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._connection.sock if self._connection is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown: SSLSocket.shutdown would unwrap TLS first,
                    # and the reading thread would then take ciphertext for body.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def get_range(
    pool: ConnectionPool,
    url: str,
    start: int,
    length: int,
    headers: dict[str, str] | None = None,
    limit: float = math.inf,
    no_cache: bool = False,
) -> RangeBody:
    """Exactly ``length`` bytes of ``url`` from ``start`` and their sha256 (blocking), within
    ``limit`` seconds or the pool's request timeout, whichever is shorter. ``no_cache``: ask
    past any cache on the way (``Cache-Control: no-cache``, at every hop: unlike credentials
    it is meant for the CDN a URL redirects to too)."""
    return _watched(
        pool,
        url,
        limit,
        lambda watchdog: _get_range_via_redirects(
            pool, url, start, length, headers, watchdog, no_cache
        ),
    )


def get_signed_range(
    pool: ConnectionPool, url: str, start: int, length: int, limit: float = math.inf
) -> RangeBody:
    """Like ``get_range``, for a pre-signed URL asked once for the one range it is signed
    for: no credentials go with it and nothing about it is remembered. Its bytes are not
    hashed (they are checked once decoded) and land in a buffer of their own (their sizes
    vary, so pooled block buffers would only be pushed out)."""
    return _watched(
        pool,
        url,
        limit,
        lambda watchdog: _get_range(pool, url, start, length, None, watchdog, hashed=False),
    )


def _watched(
    pool: ConnectionPool, url: str, limit: float, get: Callable[[_Watchdog], RangeBody]
) -> RangeBody:
    limit = max(0.0, min(limit, pool.timeouts.request))
    with _Watchdog(limit) as watchdog:
        try:
            return get(watchdog)
        except (ValueError, UnicodeError) as exc:
            # A URL (or a redirect's Location) with a bad port or host name.
            raise OriginProtocolError(f"{url}: unusable URL ({exc})") from None
        except SourceError:
            if watchdog.fired:
                raise OriginUnreachable(f"{url}: no complete answer within {limit:g}s") from None
            raise


def _get_range_via_redirects(
    pool: ConnectionPool,
    url: str,
    start: int,
    length: int,
    headers: dict[str, str] | None,
    watchdog: _Watchdog,
    no_cache: bool = False,
) -> RangeBody:
    """Go straight to where ``url`` redirected lately, if anywhere; if that fails in any
    way, forget it and ask ``url`` again. Not known yet: find out, one thread at a time."""
    target = pool.redirect_for(url)
    if target is None:
        with pool.resolving(url):
            target = pool.redirect_for(url)
            if target is None:
                return _get_range_and_remember(
                    pool, url, start, length, headers, watchdog, no_cache
                )
    if target == url:
        # It answers itself (a published origin): nothing to fall back to.
        return _get_range(pool, url, start, length, headers, watchdog, no_cache=no_cache)
    # Headers are for url's own origin only, as when following the redirect.
    try:
        own = headers if same_origin(target, url) else None
        return _get_range(pool, target, start, length, own, watchdog, no_cache=no_cache)
    except SourceError:
        if watchdog.fired:
            raise
        pool.forget_redirect(url)
    return _get_range_and_remember(pool, url, start, length, headers, watchdog, no_cache)


def _get_range_and_remember(
    pool: ConnectionPool,
    url: str,
    start: int,
    length: int,
    headers: dict[str, str] | None,
    watchdog: _Watchdog,
    no_cache: bool = False,
) -> RangeBody:
    body = _get_range(pool, url, start, length, headers, watchdog, no_cache=no_cache)
    # Also where it did not redirect: the next fetches need not ask one at a time.
    pool.remember_redirect(url, body.url)
    return body


def _get_range(
    pool: ConnectionPool,
    url: str,
    start: int,
    length: int,
    headers: dict[str, str] | None,
    watchdog: _Watchdog,
    hashed: bool = True,
    no_cache: bool = False,
) -> RangeBody:
    chain = RedirectChain(url)
    # Past every cache on the way, the CDN a URL redirects to included (it is no credential).
    past_caches = {"Cache-Control": "no-cache"} if no_cache else {}
    while True:
        url = chain.url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise OriginProtocolError(f"{url}: unsupported URL scheme")
        key: Key = (parts.scheme, parts.hostname or "", parts.port)
        route = pool.route(key)
        request_headers = {
            "Range": f"bytes={start}-{start + length - 1}",
            "Accept-Encoding": "identity",
            "User-Agent": "lazyfs",
            # Credentials go only to the host (and scheme) they were given for, never across
            # a redirect to another.
            **chain.credentials(headers),
            **past_caches,
            **route.headers,
        }
        connection, response = _send(pool, key, route, request_headers, url, watchdog)
        try:
            if chain.follow(response.status, response.getheader("location")):
                _discard(pool, key, connection, response, watchdog)
                continue
            body = _read_body(response, url, start, length, pool.buffers if hashed else None)
        except BaseException:
            connection.close()
            raise
        # http.client closes a response once its whole body is read: only then may the
        # connection carry another request.
        if watchdog.release() and response.status == 206 and response.isclosed():
            pool.release(key, connection)
        else:
            connection.close()
        return body


def _send(
    pool: ConnectionPool,
    key: Key,
    route: Route,
    headers: dict[str, str],
    url: str,
    watchdog: _Watchdog,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    # A reused connection may have been closed by the server while idle; that costs one
    # silent retry on a fresh connection, not an attempt.
    for retry in range(2):
        connection, reused = pool.acquire(key, fresh=retry > 0)
        watchdog.watch(connection)
        try:
            if connection.sock is None:
                connection.connect()
                assert connection.sock is not None
                connection.sock.settimeout(pool.timeouts.read)
                watchdog.watch(connection)
            connection.request("GET", route.target(url), headers=headers)
            return connection, connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            connection.close()
            if not reused:
                raise _failure(pool, route, url, exc) from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _failure(pool, route, url, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _failure(pool: ConnectionPool, route: Route, url: str, exc: BaseException) -> SourceError:
    return transport_error(url, exc, route.proxy, pool.transport.trusted)


def _discard(
    pool: ConnectionPool,
    key: Key,
    connection: http.client.HTTPConnection,
    response: http.client.HTTPResponse,
    watchdog: _Watchdog,
) -> None:
    # A small redirect body is read so the connection can be reused; anything else, or any
    # trouble reading it, just closes the connection: the redirect is followed either way.
    if response.length is not None and response.length <= 64 * 1024:
        try:
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            return
        if watchdog.release():
            pool.release(key, connection)
            return
    connection.close()


def _read_body(
    response: http.client.HTTPResponse,
    url: str,
    start: int,
    length: int,
    buffers: BufferPool | None,
) -> RangeBody:
    """The body, hashed as it arrives into a pooled buffer; without ``buffers``, into a
    buffer of its own and not hashed (``sha256`` is then empty)."""
    if response.status not in (200, 206):
        raise status_error(url, response.status, response.getheader("retry-after"))
    if response.status == 206:
        header = response.getheader("content-range") or ""
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if not match or int(match[1]) != start or int(match[2]) != start + length - 1:
            raise OriginProtocolError(
                f"{url}: asked for bytes {start}-{start + length - 1}, got Content-Range {header!r}"
            )
    data = bytearray(length) if buffers is None else buffers.take(length)
    view = memoryview(data)
    digest = None if buffers is None else hashlib.sha256()
    received = 0
    try:
        if response.status == 200:
            # The origin ignored Range: skip to our bytes through a small scratch buffer.
            _skip(response, url, start)
        while received < length:
            count = response.readinto(view[received : received + CHUNK])
            if not count:
                raise OriginProtocolError(f"{url}: body ended after {received} of {length} bytes")
            if digest is not None:
                digest.update(view[received : received + count])
            received += count
    except TimeoutError:
        raise OriginUnreachable(f"{url}: timed out after {received} of {length} bytes") from None
    except (OSError, http.client.HTTPException) as exc:
        raise OriginProtocolError(
            f"{url}: body broken after {received} of {length} bytes ({type(exc).__name__})"
        ) from None
    finally:
        view.release()
    if response.status == 206 and response.length:
        raise OriginProtocolError(f"{url}: body longer than the {length} bytes asked for")
    return RangeBody(data, "" if digest is None else digest.hexdigest(), url)


def _skip(response: http.client.HTTPResponse, url: str, count: int) -> None:
    scratch = memoryview(bytearray(min(count, CHUNK) or 1))
    remaining = count
    while remaining:
        read = response.readinto(scratch[: min(remaining, len(scratch))])
        if not read:
            raise OriginProtocolError(f"{url}: body ended before byte {count}")
        remaining -= read
