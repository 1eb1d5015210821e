"""Xet storage as a source of proven blocks: a block's bytes come from the CAS and are served
only once their window is proven against the Hub's ``xetHash``.

One ``fetch_block`` is one attempt, as for any source (``sources.base``): ask the CAS which
window holds the block (``file-chunk-hashes``: the window and the subtrees of the gaps around
it), reconstruct the window (``reconstructions``, then the pre-signed xorb ranges), decode and
hash its chunks, merge with the gaps, compare the file hash (``core.xetproof``), and return the
block's bytes cut from the proven window. A CAS read token comes from the Hub with the user's
token and is refreshed before it expires and on a 401; it goes only to the CAS, never to the
pre-signed data URLs, and is never logged. A data URL that has expired (403) is asked for
again once. A CAS without ``file-chunk-hashes``, or a window far larger than its block, raises
``XetProofUnavailable``: the file is then verified whole (``read.xetfiles``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
import trio
from typing_extensions import Buffer

from lazyfs.core import hubs
from lazyfs.core.hubs import HubRepo
from lazyfs.core.xethash import Node, chunk_hash, hash_from_hex
from lazyfs.core.xetproof import (
    ChunkWindows,
    WindowProofError,
    parse_chunk_windows,
    prove_windows,
    window_covering,
)
from lazyfs.core.xetrecon import (
    Reconstruction,
    XorbFetch,
    parse_reconstruction,
    slice_ranges,
    split_byteranges,
    term_chunks,
)
from lazyfs.core.xorb import decode_chunk
from lazyfs.errors import OriginHTTPError, OriginOffline, OriginProtocolError, SourceError
from lazyfs.sources.hubtoken import TokenSource, with_current_token
from lazyfs.sources.rangeget import ConnectionPool, get_signed_range
from lazyfs.sources.transport import Transport, parse_retry_after, status_error

log = logging.getLogger(__name__)

# A token is renewed this long before the Hub says it expires.
TOKEN_MARGIN_SECONDS = 60.0
# A window may exceed its block by this much; more, and proving the file window by window
# would cost more than reading it whole (runs of constant data stretch windows).
MAX_WINDOW_SLACK = 16 * 1024 * 1024
# JSON answers of the CAS (proofs, reconstructions) are small; a larger one is not one.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
DEFAULT_CAS_TRANSFERS = 3


class XetProofUnavailable(OriginHTTPError):
    """This file cannot be proven window by window here (no ``file-chunk-hashes`` at the CAS,
    or windows that run away); asking again will not help."""


@dataclass(frozen=True)
class XetFile:
    path: str
    xet_hash: str
    size: int


@dataclass
class CasCounters:
    requests: int = 0
    proof_requests: int = 0
    reconstruction_requests: int = 0
    data_requests: int = 0
    data_bytes: int = 0
    token_refreshes: int = 0
    expired_urls: int = 0
    proof_failures: int = 0


@dataclass(frozen=True)
class _Token:
    value: str
    expires: float
    cas_url: str


class XetSource:
    """The Xet files of one hub repository at one commit (``files``, by path)."""

    def __init__(
        self,
        repo: HubRepo,
        commit: str,
        endpoint: str,
        hub_token: TokenSource,
        client: httpx.AsyncClient,
        transport: Transport,
        pool: ConnectionPool,
        files: Mapping[str, XetFile],
        block_size: int,
        offline: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``block_size``: the mount's (a fetch's digests are given per block); ``offline``
        says why nothing may be asked now (``HF_HUB_OFFLINE``), if so."""
        self.repo = repo
        self.commit = commit
        self.endpoint = endpoint
        self.client = client
        self.transport = transport
        self.files = dict(files)
        self.counters = CasCounters()
        self.max_transfers = DEFAULT_CAS_TRANSFERS
        self.block_size = block_size
        # Xorb bodies go through rangeget's worker threads, as block bodies do: reading
        # megabytes through httpx on the event loop would take it from the readers.
        self.pool = pool
        self._offline = offline
        self._data_threads = trio.CapacityLimiter(DEFAULT_CAS_TRANSFERS)
        self._hub_token = hub_token
        self._token: _Token | None = None
        self._token_lock = trio.Lock()

    def url_for(self, path: str) -> str:
        found = self.files[path]
        cas = self._token.cas_url if self._token is not None else "xet:"
        return f"{cas}/v2/reconstructions/{found.xet_hash} ({path})"

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[Buffer, str]:
        """Bytes ``[start, start + length)`` of ``path``, proven, and the sha256 of each
        ``block_size`` piece of them from ``start``, space-separated (``read.xetfiles`` proves
        several blocks in one window and keeps each under its own digest). ``no_cache`` is
        ignored: a proof that fails is the CAS's answer, which no cache header changes."""
        reason = self._offline()
        if reason is not None:
            raise OriginOffline(
                f"{path}: bytes {start}-{start + length - 1} are not in the cache, and "
                f"{reason}: the Xet CAS is not asked"
            )
        file = self.files[path]
        answer = await self.chunk_windows(file, start, start + length)
        window = window_covering(answer, start, start + length)
        if window[1] - window[0] > length + MAX_WINDOW_SLACK:
            raise XetProofUnavailable(
                f"{path}: the CAS's window for bytes {start}-{start + length} spans "
                f"{window[1] - window[0]} bytes",
                404,
            )
        data, nodes, xorbs = await self._window_chunks(file, window)
        expected = hash_from_hex(file.xet_hash)
        try:
            await trio.to_thread.run_sync(
                prove_windows, _only(answer, window), [nodes], expected, file.size
            )
        except WindowProofError as exc:
            self.counters.proof_failures += 1
            raise WindowProofError(
                f"{path} bytes {window[0]}-{window[1]} (xorbs {', '.join(sorted(xorbs))}) "
                f"do not prove against xetHash {file.xet_hash}: {exc}"
            ) from None
        block = memoryview(data)[start - window[0] : start - window[0] + length]
        digests = await trio.to_thread.run_sync(_sha256_pieces, block, self.block_size)
        return block, " ".join(digests)

    async def chunk_windows(self, file: XetFile, start: int, end: int) -> ChunkWindows:
        self.counters.proof_requests += 1
        body = await self._cas_get(
            f"/v2/file-chunk-hashes/{file.xet_hash}",
            {"X-Range-Dirty": f"bytes={start}-{end - 1}"},
            missing_means_unavailable=True,
        )
        return parse_chunk_windows(body, f"{file.path}: file-chunk-hashes")

    async def reconstruction(self, file: XetFile, start: int, end: int) -> Reconstruction:
        self.counters.reconstruction_requests += 1
        where = f"{file.path}: reconstruction of bytes {start}-{end}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        try:
            body = await self._cas_get(f"/v2/reconstructions/{file.xet_hash}", headers)
        except OriginHTTPError as exc:
            if exc.status not in (404, 501):
                raise
            body = await self._cas_get(f"/v1/reconstructions/{file.xet_hash}", headers)
        return parse_reconstruction(body, where)

    async def _window_chunks(
        self, file: XetFile, window: tuple[int, int]
    ) -> tuple[bytearray, list[Node], set[str]]:
        """The window's bytes, its chunks' (hash, size) and the xorbs they came from."""
        for asked in range(2):
            reconstruction = await self.reconstruction(file, *window)
            _check_fetch_size(reconstruction, window)
            try:
                fetched = {
                    (fetch.xorb, fetch.url): await self._fetch_xorb_ranges(fetch)
                    for fetch in reconstruction.needed()
                }
            except OriginHTTPError as exc:
                # A pre-signed URL that expired: the reconstruction hands out fresh ones.
                if exc.status != 403 or asked:
                    raise
                self.counters.expired_urls += 1
                log.info(
                    "%s: a Xet data URL expired; asking for the reconstruction again", file.path
                )
                continue
            return await trio.to_thread.run_sync(_decode_window, reconstruction, fetched, window)
        raise AssertionError("unreachable")

    async def _fetch_xorb_ranges(self, fetch: XorbFetch) -> list[bytes | bytearray]:
        """The bodies of a pre-signed URL's ranges, asked exactly as signed; no credentials."""
        self.counters.requests += 1
        self.counters.data_requests += 1
        if len(fetch.ranges) == 1:
            (part,) = fetch.ranges
            length = part.stop - part.start + 1
            limit = trio.current_effective_deadline() - trio.current_time()
            try:
                body = await trio.to_thread.run_sync(
                    get_signed_range,
                    self.pool,
                    fetch.url,
                    part.start,
                    length,
                    limit,
                    abandon_on_cancel=True,
                    limiter=self._data_threads,
                )
            except SourceError as exc:
                raise _without_signature(exc, fetch.url) from None
            self.counters.data_bytes += length
            return [body.data]
        return await self._fetch_multipart(fetch)

    async def _fetch_multipart(self, fetch: XorbFetch) -> list[bytes | bytearray]:
        headers = {"Range": fetch.range_header, "Accept-Encoding": "identity"}
        expected = sum(part.stop - part.start + 1 for part in fetch.ranges)
        try:
            async with self.client.stream(
                "GET", fetch.url, headers=headers, follow_redirects=False
            ) as response:
                status = response.status_code
                if status not in (200, 206):
                    raise status_error(
                        _shown(fetch.url), status, response.headers.get("retry-after")
                    )
                limit = expected + 64 * 1024 if status == 206 else MAX_ANSWER_BYTES * 8
                body = await _read_limited(response, limit, fetch.url)
                content_type = response.headers.get("content-type", "")
        except httpx.HTTPError as exc:
            raise self.transport.error(_shown(fetch.url), exc) from None
        self.counters.data_bytes += len(body)
        if status == 200:
            return slice_ranges(body, fetch.ranges)
        if content_type.lower().startswith("multipart/byteranges"):
            return split_byteranges(content_type, body, fetch.ranges)
        raise OriginProtocolError(
            f"{_shown(fetch.url)}: answered {len(body)} bytes, not multipart, for "
            f"{fetch.range_header}"
        )

    async def _cas_get(
        self, path: str, headers: Mapping[str, str], missing_means_unavailable: bool = False
    ) -> bytes:
        """A JSON answer of the CAS, with a token renewed once if the CAS refuses it."""
        for renewed in (False, True):
            token = await self._current_token(force=renewed)
            url = token.cas_url + path
            self.counters.requests += 1
            try:
                async with self.client.stream(
                    "GET",
                    url,
                    headers={**headers, "Authorization": f"Bearer {token.value}"},
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    if status == 200 or status == 206:
                        return await _read_limited(response, MAX_ANSWER_BYTES, url, decoded=True)
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            except httpx.HTTPError as exc:
                raise self.transport.error(url, exc) from None
            if status == 401 and not renewed:
                log.info("the Xet CAS refused its token; asking the Hub for a new one")
                continue
            if status == 404 and missing_means_unavailable:
                raise XetProofUnavailable(
                    f"{url}: the CAS has no file-chunk-hashes (HTTP 404)", 404
                )
            raise OriginHTTPError(f"{url}: HTTP {status}", status, retry_after)
        raise AssertionError("unreachable")

    async def _current_token(self, force: bool) -> _Token:
        async with self._token_lock:
            token = self._token
            if force or token is None or token.expires - TOKEN_MARGIN_SECONDS <= time.time():
                token = self._token = await self._new_token()
            return token

    async def _new_token(self) -> _Token:
        """A CAS read token from the Hub, asked with the user's Hub token as of now; once more
        if the Hub refuses that (401) and another is at hand (a rotated ``--token-file``)."""
        return await with_current_token(self._hub_token, self._ask_token, "a Xet read token")

    async def _ask_token(self) -> _Token:
        url = hubs.hf_xet_token_url(self.endpoint, self.repo, self.commit)
        self.counters.token_refreshes += 1
        try:
            async with self.client.stream(
                "GET",
                url,
                headers=hubs.token_headers(hubs.HF, self._hub_token.current()),
                follow_redirects=False,
            ) as response:
                status = response.status_code
                body = await _read_limited(response, MAX_ANSWER_BYTES, url, decoded=True)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
        except httpx.HTTPError as exc:
            raise self.transport.error(url, exc) from None
        if status != 200:
            raise OriginHTTPError(f"{url}: no Xet read token (HTTP {status})", status, retry_after)
        value, expires, cas_url = hubs.parse_xet_token(body, url)
        return _Token(value, expires, cas_url)


def _only(answer: ChunkWindows, window: tuple[int, int]) -> ChunkWindows:
    """The answer for one window: several windows only come back for several ranges asked."""
    if answer.windows == (window,):
        return answer
    raise OriginProtocolError("the CAS answered one range with several windows")


def _check_fetch_size(reconstruction: Reconstruction, window: tuple[int, int]) -> None:
    """Refuse xorb ranges far larger than the window they rebuild, before a buffer is made
    for them: stored chunks are at most a little larger than their bytes."""
    limit = 2 * (window[1] - window[0]) + MAX_WINDOW_SLACK
    if reconstruction.fetch_size() > limit:
        raise OriginProtocolError(
            f"the reconstruction of bytes {window[0]}-{window[1]} asks for "
            f"{reconstruction.fetch_size()} bytes of xorb data"
        )


def _decode_window(
    reconstruction: Reconstruction,
    fetched: Mapping[tuple[str, str], list[bytes | bytearray]],
    window: tuple[int, int],
) -> tuple[bytearray, list[Node], set[str]]:
    """Decode and hash the window's chunks (in a worker thread: LZ4 and BLAKE3 release the
    GIL); only chunks exactly covering ``window`` are kept."""
    chunks = term_chunks(reconstruction, fetched)
    # The reconstruction starts at a chunk boundary at or before the window.
    position = window[0] - reconstruction.offset
    data = bytearray(window[1] - window[0])
    nodes: list[Node] = []
    for chunk in chunks:
        end = position + chunk.size
        if position >= window[0] and end <= window[1]:
            decoded = decode_chunk(chunk)
            data[position - window[0] : end - window[0]] = decoded
            nodes.append((chunk_hash(decoded), chunk.size))
        elif position < window[1] and end > window[0]:
            break  # a chunk across the window's edge: not a window of this file
        position = end
    if sum(size for _, size in nodes) != len(data):
        raise OriginProtocolError(
            f"the reconstruction of bytes {window[0]}-{window[1]} does not fall on its chunks"
        )
    return data, nodes, {term.xorb for term in reconstruction.terms}


def _sha256_pieces(data: memoryview, size: int) -> list[str]:
    return [hashlib.sha256(data[at : at + size]).hexdigest() for at in range(0, len(data), size)]


async def _read_limited(
    response: httpx.Response, limit: int, url: str, decoded: bool = False
) -> bytes:
    """The body, at most ``limit`` bytes; ``decoded``: after any Content-Encoding (JSON
    answers may come gzipped; the limit then bounds what it inflates to)."""
    body = bytearray()
    pieces = response.aiter_bytes() if decoded else response.aiter_raw()
    async for piece in pieces:
        body += piece
        if len(body) > limit:
            raise OriginProtocolError(f"{_shown(url)}: the answer is larger than {limit} bytes")
    return bytes(body)


def _without_signature(exc: SourceError, url: str) -> SourceError:
    """``exc`` with ``url`` shown without its signature (the same error type and status)."""
    message = str(exc).replace(url, _shown(url))
    if isinstance(exc, OriginHTTPError):
        return type(exc)(message, exc.status, exc.retry_after)
    return type(exc)(message)


def _shown(url: str) -> str:
    """A pre-signed URL without its signature (it is a credential while it lasts)."""
    return url.split("?", 1)[0]
