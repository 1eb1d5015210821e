"""Hub listings kept for offline mounts: ``CACHE_DIR/listings/KEY.json`` (see core.listings)."""

from __future__ import annotations

import logging
from pathlib import Path

from lazyfs.cache.atomic import write_atomically
from lazyfs.core.hubs import HubRepo
from lazyfs.core.listings import (
    CachedListing,
    decode_listing,
    encode_listing,
    listing_key,
    listing_keys,
)
from lazyfs.errors import CacheError

log = logging.getLogger(__name__)


class ListingCache:
    """The last listing resolved for each revision of a hub repository, and each commit's."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def store(self, listing: CachedListing, endpoint: str) -> None:
        data = encode_listing(listing, endpoint)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for key in listing_keys(listing.snapshot, endpoint):
                write_atomically(self.directory / f"{key}.json", data, mode=0o600)
        except OSError as exc:
            name = listing.snapshot.repo.name
            raise CacheError(f"cannot keep the listing of {name}: {exc}") from None

    def load(self, repo: HubRepo, endpoint: str) -> CachedListing | None:
        """The listing kept for ``repo`` at its revision (a branch's or tag's last resolved
        one, or a commit's own), or None; a damaged one is ignored with a warning."""
        path = self.directory / f"{listing_key(repo, endpoint, repo.revision)}.json"
        try:
            return decode_listing(path.read_bytes(), repo, endpoint)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring the cached listing of %s (%s: %s)", repo.name, path, exc.strerror)
        except CacheError as exc:
            log.warning("ignoring the damaged cached listing of %s (%s: %s)", repo.name, path, exc)
        return None
