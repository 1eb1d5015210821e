"""An HTTP origin: the manifest through httpx, block bodies through rangeget's threads.

Small documents (manifests, API answers) are retried here (``with_retries``); a block body is
one attempt (``fetch_block``), retried by the read path's fetcher on the policy of
``lazyfs.core.attempts``, within the block's one deadline.

Both clients follow one transport policy (lazyfs.sources.transport: proxies, TLS, timeouts,
redirects, credentials); everything httpx raises is mapped there to the project's SourceError
tree, so callers never see an httpx exception.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar
from urllib.parse import quote

import httpx
import trio
from typing_extensions import Buffer

from lazyfs.core.attempts import RetryPolicy, is_retryable
from lazyfs.errors import (
    ManifestError,
    OriginHTTPError,
    OriginUnreachable,
    SourceError,
)
from lazyfs.sources.rangeget import ConnectionPool, get_range
from lazyfs.sources.transport import RedirectChain, Timeouts, Transport, status_error

log = logging.getLogger(__name__)

T = TypeVar("T")

# Block GETs in flight at once: on two cores, three keep the wire and both hashers busy.
DEFAULT_FETCH_THREADS = 3
# A manifest of a terabyte of 4 MiB blocks is about 20 MB; anything far larger is not one.
MAX_SMALL_FILE = 256 * 1024 * 1024
ERROR_BODY_LIMIT = 64 * 1024


async def with_retries(
    policy: RetryPolicy,
    what: str,
    attempt_once: Callable[[], Awaitable[T]],
    on_retry: Callable[[], None] = lambda: None,
) -> T:
    """Run ``attempt_once`` until it succeeds, fails for good, or the policy runs out."""
    last: SourceError | None = None
    attempt, answering = 0, False
    with trio.move_on_after(policy.deadline):
        for attempt in range(1, policy.attempts + 1):
            answering = True
            try:
                return await attempt_once()
            except SourceError as exc:
                last = exc
            answering = False
            if not is_retryable(last) or attempt == policy.attempts:
                raise last
            retry_after = last.retry_after if isinstance(last, OriginHTTPError) else None
            pause = policy.delay(attempt, retry_after)
            level = logging.INFO if attempt == 1 else logging.WARNING
            log.log(level, "%s: %s; retry %d in %.2fs", what, last, attempt, pause)
            on_retry()
            await trio.sleep(pause)
    # Only the deadline ends the loop without a return or a raise.
    raise OriginUnreachable(
        f"{what}: gave up after {policy.deadline:g}s: {_why_given_up(attempt, answering, last)}"
    )


def _why_given_up(attempt: int, answering: bool, last: SourceError | None) -> str:
    if not answering:  # cut short in the pause after a failure
        return f"attempt {attempt} failed: {last}"
    # Every read came within the read timeout, yet the answer was not complete: a slow or
    # trickling origin (or a connect slower than the deadline).
    why = f"attempt {attempt} had no complete answer by then"
    return why if last is None else f"{why}; attempt {attempt - 1} failed: {last}"


def join_url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{quote(path)}"


class HttpOrigin:
    """A published tree at ``base_url``: files are fetched from ``base_url/PATH``.

    ``client`` comes from ``make_client`` with the same ``transport``: small files and block
    bodies then travel by the same proxies, CAs and rules."""

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        policy: RetryPolicy | None = None,
        fetch_threads: int = DEFAULT_FETCH_THREADS,
        *,
        transport: Transport,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.transport = transport
        self.policy = policy or RetryPolicy()
        self.pool = ConnectionPool(Timeouts.of(self.policy), transport)
        self.fetch_threads = trio.CapacityLimiter(fetch_threads)
        # The read path keeps one of these for reads: read-ahead gets the others.
        self.max_transfers = fetch_threads
        # Sent with every request to the origin itself, never to a host it redirects to.
        self.headers: dict[str, str] = {}

    def close(self) -> None:
        self.pool.close()

    def url_for(self, path: str) -> str:
        return join_url(self.base_url, path)

    def request_headers(self) -> dict[str, str]:
        """The headers for a request about to be sent to the origin (a hub's carry its token
        as of now)."""
        return self.headers

    async def get(self, path: str) -> bytes:
        """GET a small whole file (the manifest)."""
        body, _ = await self.get_small(self.url_for(path))
        return body

    async def get_small(self, url: str) -> tuple[bytes, httpx.Headers]:
        """GET a small whole document (a manifest, an API answer), with retries; redirects
        are followed, and ``headers`` go only to ``url``'s own scheme and host."""

        async def attempt() -> tuple[bytes, httpx.Headers]:
            async with self._following(url, {}) as response:
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_SMALL_FILE:
                        raise ManifestError(f"{url} is larger than {MAX_SMALL_FILE} bytes")
                return bytes(body), response.headers

        return await with_retries(self.policy, f"GET {url}", self._mapped(url, attempt))

    async def probe(self, path: str) -> None:
        """Ask for the first byte of ``path``: the origin's refusal (private, gated, missing)
        is found at mount, not at the first read."""
        url = self.url_for(path)

        async def attempt() -> None:
            async with self._following(url, {"Range": "bytes=0-0"}, {200, 206}):
                return None

        await with_retries(self.policy, f"GET {url}", self._mapped(url, attempt))

    @asynccontextmanager
    async def _following(
        self, url: str, extra: dict[str, str], wanted: frozenset[int] | set[int] = frozenset({200})
    ) -> AsyncIterator[httpx.Response]:
        chain = RedirectChain(url)
        while True:
            headers = {**chain.credentials(self.request_headers()), **extra}
            async with self._request("GET", chain.url, headers) as response:
                if chain.follow(response.status_code, response.headers.get("location")):
                    continue
                if response.status_code not in wanted:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk[: max(0, ERROR_BODY_LIMIT - len(body))]
                    self.refuse(response, bytes(body), url)
                yield response
                return

    def refuse(self, response: httpx.Response, body: bytes, url: str) -> None:
        """Raise the error for a response that is not what was asked for (hubs say more)."""
        raise status_error(url, response.status_code, response.headers.get("retry-after"))

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[Buffer, str]:
        """Exactly ``length`` bytes of ``path`` from ``start`` and their sha256: one range GET
        in a worker thread (see rangeget), no retries (the caller's policy decides those);
        ``no_cache``: past any cache on the way."""
        # The caller's time limit for this attempt also bounds the thread: abandoned when the
        # limit passes, it must not hold its worker and connection any longer.
        limit = trio.current_effective_deadline() - trio.current_time()
        body = await trio.to_thread.run_sync(
            get_range,
            self.pool,
            self.url_for(path),
            start,
            length,
            self.request_headers(),
            limit,
            no_cache,
            # A cancelled read must not wait for the socket: the thread ends on its own within
            # the limit or the pool's timeouts.
            abandon_on_cancel=True,
            limiter=self.fetch_threads,
        )
        return body.data, body.sha256

    def _request(
        self, method: str, url: str, headers: dict[str, str] | None
    ) -> AbstractAsyncContextManager[httpx.Response]:
        # Compressed bodies would break byte ranges and the digests.
        return self.client.stream(
            method,
            url,
            headers={"Accept-Encoding": "identity", **(headers or {})},
            follow_redirects=False,
        )

    def _mapped(self, url: str, attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        async def run() -> T:
            try:
                return await attempt()
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self.transport.error(url, exc) from exc

        return run


def make_client(
    policy: RetryPolicy, transport: Transport, max_connections: int = 32
) -> httpx.AsyncClient:
    """The httpx client for manifests and API calls, on ``transport``'s policy."""
    return transport.open_client(Timeouts.of(policy), max_connections)
