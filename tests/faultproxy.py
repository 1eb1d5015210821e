"""A fault-injecting HTTP proxy for tests: stands in front of any origin on 127.0.0.1.

Each GET is forwarded to the upstream; at the configured rates the answer is spoiled. A
fault is drawn per request from ``Faults`` (rates are fractions of requests):

    flip          one byte of the body inverted (headers intact)
    reset         headers and half the body, then a TCP reset
    status_503    503 Service Unavailable
    status_429    429 Too Many Requests, Retry-After: 0
    stall         no answer for ``stall_seconds`` (longer than the client's timeout)
    truncate      the full Content-Length promised, half the body sent, connection closed
    ignore_range  the whole file with 200, whatever Range asked for
    drip          the headers, then the body one byte every ``drip_seconds`` (each byte within
                  the client's read timeout, the whole far beyond its deadline)

Draws come from one seeded generator, so a run's faults are reproducible in kind and rate.

As a stale cache: a Range header in ``bad_copies`` is answered with its first byte inverted
until a request for it carries ``Cache-Control: no-cache`` (then "refetched", it is good from
then on). ``seen`` lists every GET as (path, Range, Cache-Control).

Apart from the drawn faults, ``hold(predicate)`` stalls every request whose path and Range
header the predicate picks until ``release_held()`` (then it is forwarded as usual); ``held``
counts the requests stalled now.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Faults:
    flip: float = 0.0
    reset: float = 0.0
    status_503: float = 0.0
    status_429: float = 0.0
    stall: float = 0.0
    truncate: float = 0.0
    ignore_range: float = 0.0
    drip: float = 0.0
    stall_seconds: float = 3.0
    drip_seconds: float = 0.1

    def draw(self, generator: random.Random) -> str | None:
        roll = generator.random()
        for item in fields(self):
            if item.name.endswith("_seconds"):
                continue
            rate = getattr(self, item.name)
            if roll < rate:
                return item.name
            roll -= rate
        return None

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self) if not f.name.endswith("_seconds"))


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults | None = None, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_path = parts.path.rstrip("/")
        self.faults = faults or Faults()
        self.generator = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.held = 0
        self.bad_copies: set[str] = set()
        self.seen: list[tuple[str, str | None, str | None]] = []
        self._hold: Callable[[str, str | None], bool] | None = None
        self._released = threading.Event()
        self.server = _QuietServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.upstream_path}"

    def next_fault(self) -> tuple[str | None, float]:
        """The fault for the next request, and a number in [0, 1) for where it strikes."""
        with self.lock:
            self.requests += 1
            fault = self.faults.draw(self.generator)
            if fault is not None:
                self.injected[fault] += 1
            return fault, self.generator.random()

    def serves_bad_copy(self, range_header: str | None, cache_control: str | None) -> bool:
        """Whether this request gets the stale cache's bad copy (see the module's text)."""
        with self.lock:
            if range_header not in self.bad_copies:
                return False
            if "no-cache" in (cache_control or ""):
                self.bad_copies.discard(range_header)  # refetched from upstream: repaired
                return False
            return True

    def hold(self, predicate: Callable[[str, str | None], bool]) -> None:
        """Stall the requests ``predicate(path, range_header)`` picks until ``release_held``."""
        self._released.clear()
        self._hold = predicate

    def release_held(self) -> None:
        self._hold = None
        self._released.set()

    def wait_if_held(self, path: str, range_header: str | None) -> None:
        hold = self._hold
        if hold is None or not hold(path, range_header):
            return
        with self.lock:
            self.held += 1
        try:
            # Bounded: a test that forgets to release must not leave a thread behind forever.
            self._released.wait(120)
        finally:
            with self.lock:
                self.held -= 1

    def close(self) -> None:
        self.release_held()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fault_proxy(upstream: str, faults: Faults | None = None, seed: int = 0) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, faults, seed)
    try:
        yield proxy
    finally:
        proxy.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (timed out, moved on) resets its connection: expected here.
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    @property
    def proxy(self) -> FaultProxy:
        return self.server.proxy  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        proxy = self.proxy
        range_header, cache_control = self.headers.get("Range"), self.headers.get("Cache-Control")
        with proxy.lock:
            proxy.seen.append((self.path, range_header, cache_control))
        proxy.wait_if_held(self.path, range_header)
        fault, where = proxy.next_fault()
        if fault in ("status_503", "status_429"):
            status = 503 if fault == "status_503" else 429
            self._send(status, b"injected\n", {"Retry-After": "0"})
            return
        if fault == "stall":
            time.sleep(proxy.faults.stall_seconds)
            self.close_connection = True
            return
        headers = {"Accept-Encoding": "identity"}
        if self.headers.get("Range") and fault != "ignore_range":
            headers["Range"] = self.headers["Range"]
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            upstream.request("GET", self.path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
            passed = {
                name: value
                for name, value in response.getheaders()
                if name.lower() in ("content-range", "etag", "last-modified", "location")
            }
            status = response.status
        finally:
            upstream.close()
        if proxy.serves_bad_copy(range_header, cache_control) and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        if fault == "flip" and body:
            position = int(where * len(body))
            body = body[:position] + bytes([body[position] ^ 0x5A]) + body[position + 1 :]
        if fault == "drip":
            self.send_response(status)
            for name, value in passed.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for position in range(len(body)):
                self.wfile.write(body[position : position + 1])
                time.sleep(proxy.faults.drip_seconds)
            return
        if fault in ("reset", "truncate") and len(body) > 1:
            self.send_response(status)
            for name, value in passed.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "reset":
                # SO_LINGER with a zero timeout, closed before the server's own shutdown
                # (which would send a FIN first): the client sees a reset.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            self.close_connection = True
            return
        self._send(status, body, passed)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
