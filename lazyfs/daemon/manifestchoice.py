"""Which manifest a published origin's mount uses: --manifest, the origin's, or the cached copy."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from lazyfs.cache.store import load_cached_manifest, store_manifest
from lazyfs.core.manifest import MANIFEST_NAME, Manifest, check_pin, parse_manifest
from lazyfs.daemon.config import MountConfig
from lazyfs.errors import (
    ManifestError,
    OriginCertificateError,
    OriginHTTPError,
    SourceError,
    UsageError,
)
from lazyfs.sources.origin import HttpOrigin
from lazyfs.sources.transport import Transport

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedManifest:
    """The manifest a mount serves, its timestamp, and the exact bytes it was parsed from
    (None: a hub repository without one, served file by file)."""

    manifest: Manifest
    mtime: float
    raw: bytes | None


async def open_manifest(
    origin: HttpOrigin, config: MountConfig, given: bytes | None = None
) -> OpenedManifest:
    """The manifest given with ``--manifest``, else the origin's, or, when the origin is
    unreachable, the cached copy."""
    if given is not None:
        check_pin(given, config.manifest_sha256)
        return OpenedManifest(parse_manifest(given), time.time(), given)
    url = origin.url_for(MANIFEST_NAME)
    try:
        raw = await origin.get(MANIFEST_NAME)
    except OriginHTTPError as exc:
        if exc.status in (404, 410):
            raise ManifestError(
                f"no manifest at {url} (HTTP {exc.status}); publish one with: "
                "lazyfs manifest build DIR"
            ) from None
        raw = _cached_manifest_or_raise(config, exc)
    except OriginCertificateError:
        raise  # not an outage: mounting from the cache would only defer the failure to reads
    except SourceError as exc:
        raw = _cached_manifest_or_raise(config, exc)
    else:
        check_pin(raw, config.manifest_sha256)
        manifest = parse_manifest(raw)
        return OpenedManifest(manifest, store_manifest(config.cache_dir, config.url, raw), raw)
    check_pin(raw, config.manifest_sha256)
    cached = load_cached_manifest(config.cache_dir, config.url)
    assert cached is not None
    return OpenedManifest(parse_manifest(raw), cached[1], raw)


def _cached_manifest_or_raise(config: MountConfig, cause: SourceError) -> bytes:
    cached = load_cached_manifest(config.cache_dir, config.url)
    if cached is None:
        raise SourceError(f"cannot fetch the manifest: {cause}") from None
    log.warning("origin unavailable (%s); mounting from the cached manifest", cause)
    return cached[0]


async def load_manifest_source(
    source: str, client: httpx.AsyncClient, transport: Transport, option: str = "--manifest"
) -> bytes:
    """The manifest given with ``--manifest`` (or the signature given with ``--signature``):
    a local file, or a URL (fetched without any hub token: it is not the hub)."""
    if source.startswith(("http://", "https://")):
        origin = HttpOrigin(source, client, transport=transport)
        try:
            body, _ = await origin.get_small(source)
        finally:
            origin.close()
        return body
    try:
        return await trio.Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {source}: {exc.strerror}") from None
