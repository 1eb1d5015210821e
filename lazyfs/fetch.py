"""Range GETs from an HTTP origin: explicit timeouts, classified and bounded retries.

Everything httpx raises is mapped here to the project's SourceError tree; callers never see
an httpx exception.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import quote

import httpx
import trio

from lazyfs.errors import (
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one fetch tries before its read fails with EIO."""

    attempts: int = 4
    first_delay: float = 0.25
    max_delay: float = 4.0
    deadline: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff: float = min(self.max_delay, self.first_delay * 2.0 ** (attempt - 1))
        jittered: float = backoff * random.uniform(0.5, 1.0)
        if retry_after is not None:
            return min(self.max_delay * 4, max(jittered, retry_after))
        return jittered


def is_retryable(exc: SourceError) -> bool:
    if isinstance(exc, OriginHTTPError):
        return exc.status in RETRYABLE_STATUS
    return isinstance(exc, OriginUnreachable | OriginProtocolError)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _RetryLater(SourceError):
    def __init__(self, cause: SourceError, retry_after: float | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after


async def with_retries(
    policy: RetryPolicy, what: str, attempt_once: Callable[[], Awaitable[T]]
) -> T:
    """Run ``attempt_once`` until it succeeds, fails for good, or the policy runs out."""
    last: SourceError | None = None
    with trio.move_on_after(policy.deadline) as scope:
        for attempt in range(1, policy.attempts + 1):
            retry_after = None
            try:
                return await attempt_once()
            except _RetryLater as exc:
                last, retry_after = exc.cause, exc.retry_after
            except SourceError as exc:
                last = exc
            if not is_retryable(last) or attempt == policy.attempts:
                raise last
            pause = policy.delay(attempt, retry_after)
            level = logging.INFO if attempt == 1 else logging.WARNING
            log.log(level, "%s: %s; retry %d in %.2fs", what, last, attempt, pause)
            await trio.sleep(pause)
    if scope.cancelled_caught:
        raise OriginUnreachable(f"{what}: gave up after {policy.deadline:.0f}s ({last})")
    raise AssertionError("unreachable")  # pragma: no cover


def join_url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{quote(path)}"


class HttpOrigin:
    """A published tree at ``base_url``: files are fetched from ``base_url/PATH``."""

    def __init__(
        self, base_url: str, client: httpx.AsyncClient, policy: RetryPolicy | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.policy = policy or RetryPolicy()

    def url_for(self, path: str) -> str:
        return join_url(self.base_url, path)

    async def get(self, path: str) -> bytes:
        """GET a small whole file (the manifest)."""
        url = self.url_for(path)

        async def attempt() -> bytes:
            async with self._request("GET", url, None) as response:
                self._check_status(response, url, {200})
                return await response.aread()

        return await with_retries(self.policy, f"GET {url}", self._mapped(url, attempt))

    async def fetch_range(self, path: str, start: int, length: int) -> bytes:
        """Exactly ``length`` bytes of ``path`` from ``start``, in one range GET per attempt."""
        url = self.url_for(path)

        async def attempt() -> bytes:
            headers = {"Range": f"bytes={start}-{start + length - 1}"}
            async with self._request("GET", url, headers) as response:
                self._check_status(response, url, {200, 206})
                if response.status_code == 206:
                    _check_content_range(response, url, start, length)
                    return await _read_exactly(response, url, length, skip=0)
                # The origin ignored Range: take our bytes out of the stream and stop.
                return await _read_exactly(response, url, length, skip=start)

        what = f"GET {url} bytes {start}-{start + length - 1}"
        return await with_retries(self.policy, what, self._mapped(url, attempt))

    def _request(
        self, method: str, url: str, headers: dict[str, str] | None
    ) -> AbstractAsyncContextManager[httpx.Response]:
        # Compressed bodies would break byte ranges and the digests.
        return self.client.stream(
            method, url, headers={"Accept-Encoding": "identity", **(headers or {})}
        )

    @staticmethod
    def _check_status(response: httpx.Response, url: str, wanted: set[int]) -> None:
        if response.status_code in wanted:
            return
        error = OriginHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        raise _RetryLater(error, _retry_after(response))

    @staticmethod
    def _mapped(url: str, attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        async def run() -> T:
            try:
                return await attempt()
            except httpx.TimeoutException as exc:
                raise OriginUnreachable(f"{url}: timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                reason = str(exc) or type(exc).__name__
                raise OriginUnreachable(f"{url}: {reason}") from exc
            except httpx.HTTPError as exc:
                raise OriginProtocolError(f"{url}: {exc}") from exc

        return run


def _check_content_range(response: httpx.Response, url: str, start: int, length: int) -> None:
    header = response.headers.get("content-range", "")
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if not match or int(match[1]) != start or int(match[2]) != start + length - 1:
        raise OriginProtocolError(
            f"{url}: asked for bytes {start}-{start + length - 1}, got Content-Range {header!r}"
        )


async def _read_exactly(response: httpx.Response, url: str, length: int, skip: int) -> bytes:
    """Read ``length`` bytes after skipping ``skip``; a body that ends early is an error."""
    buffer = bytearray()
    async for chunk in response.aiter_raw():
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
        buffer += chunk
        if len(buffer) >= length:
            break
    if len(buffer) < length:
        raise OriginProtocolError(f"{url}: body ended after {len(buffer)} of {length} bytes")
    if response.status_code == 206 and len(buffer) > length:
        raise OriginProtocolError(f"{url}: body longer than the {length} bytes asked for")
    return bytes(buffer[:length])


def make_client(policy: RetryPolicy, max_connections: int = 32) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.deadline,
    )
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=16)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=True, max_redirects=5)
