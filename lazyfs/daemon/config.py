"""Everything one mount needs to know, as the CLI parsed it. A background mount's daemon is a
fork of the command that parsed it, so it serves this very object: no option is ever
re-spelled as command-line flags or re-parsed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.core.attempts import RetryPolicy
from lazyfs.core.ownership import Ownership
from lazyfs.sources.signatures import SignatureTrust


@dataclass(frozen=True)
class MountConfig:
    url: str
    mountpoint: Path
    cache_dir: Path
    cache_size: int
    # --read-ahead: the mount-wide read-ahead budget, in bytes.
    read_ahead: int = 64 * 1024 * 1024
    # --tensor-aware: reads follow safetensors/GGUF tensor maps.
    tensor_aware: bool = True
    # --xet: Hugging Face files stored in Xet are proven window by window through its CAS.
    xet: bool = True
    manifest_sha256: str | None = None
    allow_other: bool = False
    # Paths to fetch into the cache once mounted (empty: everything); None: nothing.
    prefetch: tuple[str, ...] | None = None
    metrics: tuple[str, int] | None = None
    # --manifest: a manifest file or URL to use instead of the source's own.
    manifest_source: str | None = None
    token_file: Path | None = None
    # --mirror: the same published tree at other addresses; blocks only (not the manifest).
    mirrors: tuple[str, ...] = ()
    # --tier: groups of caches in front of the URL, the nearest first; blocks only.
    tiers: tuple[tuple[str, ...], ...] = ()
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # --ca-file: the CAs to trust for https instead of the system's.
    ca_file: Path | None = None
    # --uid, --gid, --file-mode, --dir-mode: what the mount shows (None: the mounting user,
    # 0444 for files, 0555 for folders and executables).
    ownership: Ownership | None = None
    # --subdir (or a hub URL's path): the repository folder the mount shows.
    subdir: str | None = None
    # --signature-key and friends: whom the repository's signature must come from (None: no
    # signature is asked for).
    signature: SignatureTrust | None = None
