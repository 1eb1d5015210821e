"""A hub repository as an origin: resolve the revision, list the files, fetch their bytes.

The API calls go through httpx (``HttpOrigin.get_small``: retries, redirects that never carry
the token to another host); block bodies go through rangeget like any origin's; both on the
one transport policy (proxies, CAs) of lazyfs.sources.transport.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from typing_extensions import Buffer

from lazyfs.core import hubs as hubs
from lazyfs.core.attempts import RetryPolicy
from lazyfs.core.filehashes import FileHashes
from lazyfs.core.hubs import HubFile, HubRepo, Snapshot
from lazyfs.core.listings import CachedListing
from lazyfs.core.manifest import (
    DEFAULT_BLOCK_SIZE,
    MANIFEST_NAME,
    Manifest,
    check_pin,
    parse_manifest,
)
from lazyfs.errors import (
    IntegrityError,
    MountError,
    OriginHTTPError,
    OriginOffline,
    OriginUnreachable,
    SourceError,
)
from lazyfs.sources.hubtoken import TokenSource, with_current_token
from lazyfs.sources.origin import HttpOrigin
from lazyfs.sources.transport import Transport, parse_retry_after, same_origin
from lazyfs.sources.xet import XetFile, XetSource

log = logging.getLogger(__name__)

T = TypeVar("T")

# The tree API pages at 1,000 entries; this bounds a listing at ten million files.
MAX_LISTING_PAGES = 10_000


@dataclass(frozen=True)
class OfflineMount:
    """A mount of a kept listing: its commit, when that was resolved, and why the hub was not
    asked (``forced``: it is not to be asked at all)."""

    commit: str
    resolved_at: float
    reason: str
    forced: bool

    def describe(self) -> str:
        resolved = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.resolved_at))
        return f"from the listing of commit {self.commit} resolved {resolved} ({self.reason})"


class HubOrigin(HttpOrigin):
    """One hub repository; once ``resolve`` has run, every URL names the resolved commit."""

    def __init__(
        self,
        repo: HubRepo,
        endpoint: str,
        token: TokenSource,
        client: httpx.AsyncClient,
        policy: RetryPolicy | None = None,
        *,
        transport: Transport,
    ) -> None:
        super().__init__(endpoint, client, policy, transport=transport)
        self.repo = repo
        self.endpoint = endpoint
        self.commit: str | None = None
        # Set when the mount serves a kept listing because the hub could not be asked.
        self.offline: OfflineMount | None = None
        # Read again when its file changes or the hub refuses it; every request asks it.
        self.token = token

    def request_headers(self) -> dict[str, str]:
        return {**self.headers, **hubs.token_headers(self.repo.hub, self.token.current())}

    def url_for(self, path: str) -> str:
        if self.commit is None:
            raise SourceError(f"{self.repo.name}: not resolved to a commit yet")
        if self.repo.hub == hubs.HF:
            return hubs.hf_file_url(self.endpoint, self.repo, self.commit, path)
        return hubs.modelscope_file_url(self.endpoint, self.repo, self.commit, path)

    def refuse(self, response: httpx.Response, body: bytes, url: str) -> None:
        status = response.status_code
        if self.repo.hub == hubs.HF:
            message = hubs.hf_error_message(
                self.repo,
                status,
                response.headers.get("x-error-code"),
                response.headers.get("x-error-message"),
            )
        else:
            message = hubs.modelscope_error_message(self.repo, status, body)
        # OriginHTTPError keeps 429 and 5xx retryable (Retry-After honoured); the rest fail.
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise OriginHTTPError(message, status, retry_after)

    async def get_small(self, url: str) -> tuple[bytes, httpx.Headers]:
        send = super().get_small
        return await self._with_current_token(lambda: send(url))

    async def probe(self, path: str) -> None:
        send = super().probe
        await self._with_current_token(lambda: send(path))

    async def _with_current_token(self, send: Callable[[], Awaitable[T]]) -> T:
        return await with_current_token(self.token, send, self.repo.name)

    async def resolve(self) -> Snapshot:
        """Resolve the revision to a commit, list the files there, and check access."""
        snapshot = await self.list_files()
        await self.probe_access(snapshot)
        return snapshot

    async def list_files(self) -> Snapshot:
        """Resolve the revision to a commit and list the files there (``OriginUnreachable``
        when the hub cannot be asked)."""
        try:
            if self.repo.hub == hubs.HF:
                snapshot = await self._resolve_hf()
            else:
                snapshot = await self._resolve_modelscope()
        except OriginUnreachable as exc:
            hub = hubs.HUB_NAMES[self.repo.hub]
            raise OriginUnreachable(f"{hub} unreachable at {self.endpoint}: {exc}") from None
        hubs.check_listing(snapshot)
        self.commit = snapshot.commit
        return snapshot

    async def probe_access(self, snapshot: Snapshot) -> None:
        nonempty = [file for file in snapshot.files if file.size > 0]
        if nonempty:
            # Listings are public for gated repositories (and on some hubs for private
            # ones); the bytes are not. One byte of one file says which this is.
            await self.probe(min(nonempty, key=lambda file: file.size).path)

    def go_offline(self, listing: CachedListing, reason: str, forced: bool) -> Snapshot:
        """Serve the commit of a kept listing without asking the hub for it. ``forced``: the
        hub is not to be asked at all (``HF_HUB_OFFLINE``), not even for blocks."""
        snapshot = listing.snapshot
        hubs.check_listing(snapshot)
        self.commit = snapshot.commit
        self.offline = OfflineMount(snapshot.commit, listing.resolved_at, reason, forced)
        return snapshot

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[Buffer, str]:
        if self.offline is not None and self.offline.forced:
            raise OriginOffline(
                f"{path}: bytes {start}-{start + length - 1} are not in the cache, and "
                f"{self.offline.reason}: the hub is not asked"
            )
        send = super().fetch_block
        return await self._with_current_token(lambda: send(path, start, length, no_cache=no_cache))

    async def _resolve_hf(self) -> Snapshot:
        url = hubs.hf_revision_url(self.endpoint, self.repo)
        body, _ = await self.get_small(url)
        commit, modified = hubs.parse_hf_revision(body, url)
        files: list[HubFile] = []
        page: str | None = hubs.hf_tree_url(self.endpoint, self.repo, commit)
        seen: set[str] = set()
        while page is not None:
            if page in seen or len(seen) >= MAX_LISTING_PAGES:
                raise SourceError(f"{self.repo.name}: the listing's pages do not end")
            seen.add(page)
            body, headers = await self.get_small(page)
            files += hubs.parse_hf_tree_page(body, page)
            page = self._next_page(page, headers)
        return Snapshot(self.repo, commit, hubs.sorted_files(files), modified)

    def _next_page(self, url: str, headers: httpx.Headers) -> str | None:
        link = headers.get("link")
        if not link:
            return None
        # httpx parses Link headers the way the hub's own client does.
        links = httpx.Response(200, headers={"link": link}, request=httpx.Request("GET", url))
        target = links.links.get("next", {}).get("url")
        if target is None:
            return None
        resolved = str(httpx.URL(url).join(target))
        # The token goes with it: the same scheme, host and port as the endpoint, or nothing.
        if not same_origin(resolved, self.endpoint):
            raise SourceError(f"{self.repo.name}: the listing's next page is on another host")
        return resolved

    async def _resolve_modelscope(self) -> Snapshot:
        url = hubs.modelscope_revisions_url(self.endpoint, self.repo)
        body, _ = await self.get_small(url)
        commit, modified = hubs.parse_modelscope_revision(body, self.repo, url)
        if commit is None:
            # Every ModelScope file is listed with its sha256, and reads are checked against
            # the listing taken now: if the branch moves, a changed file fails, it never
            # changes under a reader.
            log.warning(
                "%s: the hub names no commit for %s; files are pinned by their sha256",
                self.repo.name,
                self.repo.revision,
            )
            commit = self.repo.revision
        url = hubs.modelscope_files_url(self.endpoint, self.repo, commit)
        body, _ = await self.get_small(url)
        files = hubs.parse_modelscope_files(body, url)
        return Snapshot(self.repo, commit, hubs.sorted_files(files), modified)


def committed_manifest_file(snapshot: Snapshot) -> HubFile | None:
    """The listing's entry for a ``lazyfs-manifest.json`` committed to the repository."""
    return next((file for file in snapshot.files if file.path == MANIFEST_NAME), None)


def check_committed_manifest(snapshot: Snapshot, committed: HubFile, raw: bytes) -> None:
    """Its bytes may come from a CDN (or the cache): they count only if the hub's listing
    vouches for them."""
    hashes = FileHashes(committed.pending_entry())
    hashes.update(raw)
    check = committed.check
    if len(raw) != committed.size or hashes.digest(check.algorithm) != check.digest:
        raise IntegrityError(
            f"{snapshot.name}: the committed {MANIFEST_NAME} does not match the hub's "
            f"{check.algorithm}; refusing it"
        )


async def fetch_committed_manifest(
    origin: HubOrigin, snapshot: Snapshot, committed: HubFile
) -> bytes:
    """The repository's committed manifest from the hub, checked against the listing."""
    raw = await origin.get(MANIFEST_NAME)
    check_committed_manifest(snapshot, committed, raw)
    return raw


def hub_manifest(
    snapshot: Snapshot, raw: bytes | None, pin: str | None, signed: bool = False
) -> Manifest:
    """The mount's manifest: block mode from ``raw`` (given with --manifest, or committed to
    the repository), else whole-file mode; ``signed``: ``raw`` is the root of trust (a
    signature must cover it, see ``mount_entries``)."""
    if raw is None:
        if pin is not None:
            raise MountError(f"--manifest-sha256 given, but {snapshot.name} has no manifest")
        manifest = None
    else:
        check_pin(raw, pin)
        manifest = parse_manifest(raw)
    block_size, entries = hubs.mount_entries(snapshot, manifest, DEFAULT_BLOCK_SIZE, signed)
    whole = sum(1 for entry in entries if entry.check is not None)
    xet = sum(1 for entry in entries if entry.check is not None and entry.xet_hash is not None)
    log.info(
        "%s: %d files, %d with block digests, %d with a whole-file digest only (%d of them "
        "stored in Xet)",
        snapshot.name,
        len(entries),
        len(entries) - whole,
        whole,
        xet,
    )
    return Manifest(block_size, entries)


def xet_source_for(
    origin: HubOrigin, manifest: Manifest, client: httpx.AsyncClient, transport: Transport
) -> XetSource | None:
    """The Xet CAS of a resolved Hugging Face repository, for its files that have a
    ``xetHash`` and no block digests; None if there are none."""
    if origin.repo.hub != hubs.HF or origin.commit is None:
        return None
    files = {
        entry.path: XetFile(entry.path, entry.xet_hash, entry.size)
        for entry in manifest.files
        if entry.xet_hash is not None and entry.check is not None and entry.size > 0
    }
    if not files:
        return None
    log.info("%s: %d files stored in Xet are proven window by window", origin.repo.name, len(files))
    return XetSource(
        origin.repo,
        origin.commit,
        origin.endpoint,
        origin.token,
        client,
        transport,
        origin.pool,
        files,
        manifest.block_size,
        lambda: origin.offline.reason if origin.offline and origin.offline.forced else None,
    )
