"""A signed mount: the repository's signature fetched, verified, and checked to cover the
manifest (or, for a hub revision without one, made the digest of every signed file) before
anything is served (docs/signing.md).

The signature comes from ``--signature`` (a file or URL) or as ``model.sig`` from the mount's
own source; a copy is kept in the cache directory so that a mount from the cached manifest,
with the origin down, still checks it. A kept copy needs no trust: it is verified every time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from lazyfs.cache.store import load_cached_manifest, store_manifest
from lazyfs.core.manifest import MANIFEST_NAME, Manifest
from lazyfs.core.signedfiles import SIGNATURE_NAME, check_signed_manifest, sign_whole_files
from lazyfs.daemon.config import MountConfig
from lazyfs.daemon.manifestchoice import OpenedManifest, load_manifest_source
from lazyfs.errors import (
    CacheError,
    OriginCertificateError,
    OriginHTTPError,
    SignatureError,
    SourceError,
)
from lazyfs.sources.hub import HubOrigin
from lazyfs.sources.origin import HttpOrigin
from lazyfs.sources.signatures import SignatureTrust, verify_signature

if TYPE_CHECKING:
    import httpx

    from lazyfs.sources.transport import Transport

log = logging.getLogger(__name__)


async def signed_manifest(
    origin: HttpOrigin,
    config: MountConfig,
    trust: SignatureTrust,
    opened: OpenedManifest,
    client: httpx.AsyncClient,
    transport: Transport,
) -> Manifest:
    """The manifest to serve once the signature verifies with ``trust`` and covers it; else
    ``SignatureError`` (one line) refuses the mount. A hub revision without a block manifest
    is served file by file, each signed file against its signed sha256."""
    bundle, fetched_as = await _signature(origin, config, trust, client, transport)
    signed = await trio.to_thread.run_sync(verify_signature, bundle, trust)
    if fetched_as is not None:
        # Kept only once it verified: a bad copy never replaces a good one.
        try:
            await trio.to_thread.run_sync(store_manifest, config.cache_dir, fetched_as, bundle)
        except CacheError as exc:
            log.warning("%s", exc)
    if opened.raw is None:
        manifest = sign_whole_files(signed, opened.manifest, config.url)
        covered = "every signed file verified whole against it"
    else:
        check_signed_manifest(signed, opened.raw)
        manifest = opened.manifest
        covered = f"{MANIFEST_NAME} among them"
    log.info(
        "signature verified with %s: %d signed files, %s",
        trust.describe(),
        len(signed.sha256),
        covered,
    )
    return manifest


async def _signature(
    origin: HttpOrigin,
    config: MountConfig,
    trust: SignatureTrust,
    client: httpx.AsyncClient,
    transport: Transport,
) -> tuple[bytes, str | None]:
    """The signature, and the cache key to keep it under once verified (None: not fetched
    from the repository, nothing to keep)."""
    if trust.location is not None:
        given = await load_manifest_source(trust.location, client, transport, "--signature")
        return given, None
    url = origin.url_for(SIGNATURE_NAME)
    key = f"signature:{url}"
    if isinstance(origin, HubOrigin) and origin.offline is not None:
        # The mount serves a kept listing: the hub is not asked for anything else either.
        return _kept_or_raise(config, key, origin.offline.describe()), None
    try:
        bundle = await origin.get(SIGNATURE_NAME)
    except OriginHTTPError as exc:
        if exc.status in (404, 410):
            raise SignatureError(f"no signature at {url} (HTTP {exc.status})") from None
        return _kept_or_raise(config, key, str(exc)), None
    except OriginCertificateError:
        raise
    except SourceError as exc:
        return _kept_or_raise(config, key, str(exc)), None
    return bundle, key


def _kept_or_raise(config: MountConfig, key: str, cause: str) -> bytes:
    kept = load_cached_manifest(config.cache_dir, key)
    if kept is None:
        raise SourceError(f"cannot fetch the signature ({cause}) and none is kept") from None
    log.warning("cannot fetch the signature (%s); checking the kept copy", cause)
    return kept[0]
