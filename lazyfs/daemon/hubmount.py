"""What a hub mount serves: the revision's listing and manifest from the hub, kept in the cache
directory for later; or, when the hub cannot be asked, the kept ones (docs/hubs.md, "Offline").

Offline means: the hub is unreachable when the revision is resolved, or ``HF_HUB_OFFLINE`` says
not to ask it at all. Either way the mount serves the listing last resolved for that revision
(a pinned commit: that commit's), with one warning naming the commit and when it was
resolved; blocks verified before are read from the cache as on any mount.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from lazyfs.cache.listings import ListingCache
from lazyfs.cache.store import load_cached_manifest, store_manifest
from lazyfs.core.hubs import HubFile, Snapshot
from lazyfs.core.listings import CachedListing
from lazyfs.core.manifest import MANIFEST_NAME
from lazyfs.daemon.config import MountConfig
from lazyfs.daemon.manifestchoice import OpenedManifest
from lazyfs.errors import CacheError, IntegrityError, MountError, OriginUnreachable, SourceError
from lazyfs.sources.hub import (
    HubOrigin,
    check_committed_manifest,
    committed_manifest_file,
    fetch_committed_manifest,
    hub_manifest,
)
from lazyfs.sources.hubsettings import hub_offline

log = logging.getLogger(__name__)

LISTINGS = "listings"


async def open_hub_mount(
    origin: HubOrigin, config: MountConfig, given: bytes | None
) -> OpenedManifest:
    """The mount's manifest and timestamp: block mode from ``given`` or the repository's
    committed manifest, else whole-file mode."""
    snapshot = await _listed(origin, ListingCache(config.cache_dir / LISTINGS))
    raw = given
    committed = committed_manifest_file(snapshot)
    if raw is None and committed is not None:
        raw = await _committed_manifest(origin, snapshot, committed, config.cache_dir)
        if raw is None and config.manifest_sha256 is not None:
            raise MountError(
                f"--manifest-sha256 given, but the {MANIFEST_NAME} committed to "
                f"{snapshot.name} is not in the cache and the hub is not asked"
            )
    manifest = hub_manifest(snapshot, raw, config.manifest_sha256, config.signature is not None)
    return OpenedManifest(manifest, snapshot.modified or time.time(), raw)


async def _listed(origin: HubOrigin, listings: ListingCache) -> Snapshot:
    """The revision's listing: from the hub (then kept), or a kept one when the hub cannot
    be asked."""
    repo = origin.repo
    variable = hub_offline(repo.hub)
    if variable is not None:
        kept = await trio.to_thread.run_sync(listings.load, repo, origin.endpoint)
        if kept is None:
            raise SourceError(
                f"{repo.name}: {variable} is set and no listing of this revision is cached "
                "(mount it once with the hub reachable)"
            )
        return _offline(origin, kept, f"{variable} is set", forced=True)
    try:
        snapshot = await origin.list_files()
    except OriginUnreachable as exc:
        kept = await trio.to_thread.run_sync(listings.load, repo, origin.endpoint)
        if kept is None:
            raise
        return _offline(origin, kept, str(exc), forced=False)
    await origin.probe_access(snapshot)
    try:
        listing = CachedListing(snapshot, time.time())
        await trio.to_thread.run_sync(listings.store, listing, origin.endpoint)
    except CacheError as exc:
        log.warning("%s", exc)
    return snapshot


def _offline(origin: HubOrigin, kept: CachedListing, reason: str, forced: bool) -> Snapshot:
    snapshot = origin.go_offline(kept, reason, forced)
    assert origin.offline is not None
    log.warning("%s: mounted offline, %s", origin.repo.name, origin.offline.describe())
    return snapshot


async def _committed_manifest(
    origin: HubOrigin, snapshot: Snapshot, committed: HubFile, cache_dir: Path
) -> bytes | None:
    """The committed manifest: the kept copy if the listing vouches for it, else from the hub
    (then kept); None when offline without a good kept copy (files are then verified whole)."""
    key = f"hub:{committed.check.algorithm}:{committed.check.digest}"
    try:
        kept = await trio.to_thread.run_sync(load_cached_manifest, cache_dir, key)
    except CacheError as exc:
        log.warning("%s", exc)
        kept = None
    if kept is not None:
        try:
            check_committed_manifest(snapshot, committed, kept[0])
        except IntegrityError as exc:
            log.warning("ignoring the cached copy of a committed manifest: %s", exc)
        else:
            log.info("%s: using the manifest committed to the repository", snapshot.name)
            return kept[0]
    if origin.offline is not None:
        log.warning(
            "%s: the %s committed to it is not in the cache: every file is verified whole",
            snapshot.name,
            MANIFEST_NAME,
        )
        return None
    raw = await fetch_committed_manifest(origin, snapshot, committed)
    log.info("%s: using the manifest committed to the repository", snapshot.name)
    try:
        await trio.to_thread.run_sync(store_manifest, cache_dir, key, raw)
    except CacheError as exc:
        log.warning("%s", exc)
    return raw
