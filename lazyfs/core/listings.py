"""Hub listings kept for offline mounts, sans-I/O: the document, its checks and its names.

When a hub mount resolves a revision, its ``Snapshot`` (the commit and every file's size and
digests) is kept in the cache directory, named after the hub, the endpoint, the repository
and the revision asked for, and again after the commit. A later mount that cannot ask the
hub (unreachable, or told not to by ``HF_HUB_OFFLINE``) mounts from it.

The cache directory is trusted against accidents only: a document carries the sha256 of its
own body, and anything that does not parse, check or describe the repository asked for is
refused with ``CacheError`` (the caller ignores the file).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from lazyfs.core.hubs import MAX_FILE_SIZE, HubFile, HubRepo, Snapshot
from lazyfs.errors import CacheError

FORMAT_NAME = "lazyfs-hub-listing"
FORMAT_VERSION = 1
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BODY_KEYS = {
    "format",
    "version",
    "hub",
    "endpoint",
    "repo",
    "dataset",
    "revision",
    "commit",
    "modified",
    "resolved_at",
    "files",
}
_FILE_KEYS = ("path", "size", "sha256", "git_sha1", "executable", "xet_hash")


@dataclass(frozen=True)
class CachedListing:
    """A snapshot as it was resolved at ``resolved_at`` (seconds since the epoch)."""

    snapshot: Snapshot
    resolved_at: float


def listing_key(repo: HubRepo, endpoint: str, revision: str) -> str:
    """The file name (without suffix) of the listing of ``repo`` at ``revision`` on
    ``endpoint``: a digest, so any revision (``refs/pr/3``) makes a safe name."""
    named = [repo.hub, endpoint, repo.dataset, repo.repo_id, revision]
    return hashlib.sha256(json.dumps(named).encode()).hexdigest()[:40]


def listing_keys(snapshot: Snapshot, endpoint: str) -> tuple[str, ...]:
    """The names a resolved snapshot is kept under: its revision's, and its commit's."""
    names = (snapshot.repo.revision, snapshot.commit)
    return tuple(dict.fromkeys(listing_key(snapshot.repo, endpoint, name) for name in names))


def encode_listing(listing: CachedListing, endpoint: str) -> bytes:
    snapshot = listing.snapshot
    body = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "hub": snapshot.repo.hub,
        "endpoint": endpoint,
        "repo": snapshot.repo.repo_id,
        "dataset": snapshot.repo.dataset,
        "revision": snapshot.repo.revision,
        "commit": snapshot.commit,
        "modified": snapshot.modified,
        "resolved_at": listing.resolved_at,
        "files": [
            [f.path, f.size, f.sha256, f.git_sha1, f.executable, f.xet_hash] for f in snapshot.files
        ],
    }
    return json.dumps({**body, "check": document_checksum(body)}, separators=(",", ":")).encode()


def decode_listing(raw: bytes, repo: HubRepo, endpoint: str) -> CachedListing:
    """The listing in ``raw`` if it is whole and describes ``repo`` (its revision, or the
    commit ``repo.revision`` names) on ``endpoint``; else ``CacheError`` saying why."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise CacheError("not JSON") from None
    if not isinstance(document, dict) or set(document) != _BODY_KEYS | {"check"}:
        raise CacheError("not a listing document")
    check = document.pop("check")
    if check != document_checksum(document):
        raise CacheError("its checksum does not match")
    if (document["format"], document["version"]) != (FORMAT_NAME, FORMAT_VERSION):
        raise CacheError("an unknown format")
    kept = (document["hub"], document["endpoint"], document["repo"], document["dataset"])
    if kept != (repo.hub, endpoint, repo.repo_id, repo.dataset):
        raise CacheError("it describes another repository")
    commit = document["commit"]
    if (
        not isinstance(commit, str)
        or not commit
        or repo.revision
        not in (
            document["revision"],
            commit,
        )
    ):
        raise CacheError("it describes another revision")
    modified, resolved_at = document["modified"], document["resolved_at"]
    if modified is not None and not _is_time(modified):
        raise CacheError("a malformed modification time")
    if not _is_time(resolved_at):
        raise CacheError("a malformed resolution time")
    if not isinstance(document["files"], list):
        raise CacheError("no file list")
    files = tuple(_file(item) for item in document["files"])
    snapshot = Snapshot(repo, commit, files, modified)
    return CachedListing(snapshot, float(resolved_at))


def _file(item: Any) -> HubFile:
    if not isinstance(item, list) or len(item) != len(_FILE_KEYS):
        raise CacheError("a malformed file entry")
    path, size, sha256, git_sha1, executable, xet_hash = item
    if not isinstance(path, str) or not path:
        raise CacheError("a file without a path")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
        raise CacheError(f"{json.dumps(path)} has a malformed size")
    if sha256 is None and git_sha1 is None:
        raise CacheError(f"{json.dumps(path)} has no digest")
    if not (_optional(sha256, _SHA256) and _optional(git_sha1, _COMMIT)):
        raise CacheError(f"{json.dumps(path)} has a malformed digest")
    if not _optional(xet_hash, _SHA256):
        raise CacheError(f"{json.dumps(path)} has a malformed xet hash")
    if not isinstance(executable, bool):
        raise CacheError(f"{json.dumps(path)} has a malformed executable flag")
    return HubFile(path, size, sha256, git_sha1, executable, xet_hash)


def _optional(value: object, form: re.Pattern[str]) -> bool:
    return value is None or (isinstance(value, str) and form.fullmatch(value) is not None)


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11


def document_checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
