"""Building a block manifest for a hub repository by streaming each file once, checked against the
hub."""

from __future__ import annotations

import time
from collections.abc import Callable

from lazyfs.core.manifest import MANIFEST_NAME, Manifest, make_manifest
from lazyfs.core.sizes import format_size
from lazyfs.read.fetcher import BlockFetcher
from lazyfs.read.wholefile import stream_whole_file
from lazyfs.sources.hub import HubOrigin


async def build_hub_manifest(
    origin: HubOrigin, block_size: int, report: Callable[[str], None]
) -> Manifest:
    """Stream every file of the repository once, check each against the hub's digest, and
    return the block manifest of the resolved commit."""
    snapshot = await origin.resolve()
    fetcher = BlockFetcher([origin], origin.policy.limits)
    report(f"{snapshot.name}: {len(snapshot.files)} files")
    entries = []
    for file in snapshot.files:
        if file.path == MANIFEST_NAME:
            continue
        pending = file.pending_entry()
        began = time.monotonic()
        entries.append(await stream_whole_file(fetcher, pending, block_size))
        elapsed = time.monotonic() - began
        report(f"{file.path}: {format_size(file.size)}, {file.check.algorithm} ok ({elapsed:.1f}s)")
    return make_manifest(block_size, entries)
