"""Manifest v1, sans-I/O: parse and validate strictly into frozen values, and serialize.

The format is specified in docs/manifest.md. Every validation failure raises
``ManifestError`` with one line that names the problem and, where there is one, the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lazyfs.core.blocks import block_count
from lazyfs.errors import ManifestError, MountError

MANIFEST_NAME = "lazyfs-manifest.json"
FORMAT_NAME = "lazyfs-manifest"
FORMAT_VERSION = 1
HASH_ALGORITHM = "sha256"
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 64 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

_TOP_KEYS = {"format", "version", "block_size", "hash", "files"}
_FILE_KEYS = {"path", "size", "executable", "sha256", "blocks"}
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class FileCheck:
    """A digest of a whole file, for files known only by a hub's listing: ``sha256`` (Git LFS
    and ModelScope) or ``git-sha1`` (the Git blob id of a file stored in Git itself)."""

    algorithm: str
    digest: str


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    executable: bool
    sha256: str
    blocks: tuple[str, ...]
    # Set when the block digests are not known yet: the file is verified whole on first read,
    # which yields them.
    check: FileCheck | None = None
    # Files stored in Xet (hub listings): the Hub's Merkle root over the file's chunks, which
    # proves windows of the file before its block digests are known.
    xet_hash: str | None = None


@dataclass(frozen=True)
class Manifest:
    block_size: int
    files: tuple[FileEntry, ...]

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> bytes:
        """Canonical serialization: files sorted by path, stable key order, trailing newline."""
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "block_size": self.block_size,
            "hash": HASH_ALGORITHM,
            "files": [
                {
                    "path": entry.path,
                    "size": entry.size,
                    "executable": entry.executable,
                    "sha256": entry.sha256,
                    "blocks": list(entry.blocks),
                }
                for entry in sorted(self.files, key=lambda e: e.path)
            ],
        }
        return (json.dumps(document, indent=1) + "\n").encode()


def manifest_digest(raw: bytes) -> str:
    """The sha256 a user pins a manifest with (``--manifest-sha256``)."""
    return hashlib.sha256(raw).hexdigest()


def check_pin(raw: bytes, pin: str | None) -> None:
    """``--manifest-sha256``: the manifest's exact bytes must have this digest."""
    if pin is not None and manifest_digest(raw) != pin:
        raise MountError(
            f"manifest sha256 {manifest_digest(raw)} does not match --manifest-sha256 {pin}"
        )


def check_block_size(block_size: int) -> None:
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise ManifestError(
            f"block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} "
            f"(64 KiB) to {MAX_BLOCK_SIZE} (64 MiB)"
        )


def check_path(path: str) -> None:
    """A relative POSIX path that stays inside the mount, with no surprises for any tool."""
    if not path:
        raise ManifestError("file path is empty")
    shown = json.dumps(path)
    if "\x00" in path:
        raise ManifestError(f"file path {shown} contains NUL")
    if "\\" in path:
        raise ManifestError(f"file path {shown} contains a backslash")
    if path.startswith("/"):
        raise ManifestError(f"file path {shown} is absolute")
    try:
        encoded = path.encode()
    except UnicodeEncodeError:
        raise ManifestError(f"file path {shown} is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise ManifestError(f"file path {shown[:80]}... is longer than {MAX_PATH_BYTES} bytes")
    for component in path.split("/"):
        if component == "":
            raise ManifestError(f"file path {shown} has an empty component")
        if component in (".", ".."):
            raise ManifestError(f"file path {shown} contains '{component}'")
        if len(component.encode()) > MAX_NAME_BYTES:
            raise ManifestError(f"file path {shown} has a name longer than {MAX_NAME_BYTES} bytes")


def _show(value: object, limit: int = 80) -> str:
    """A value as short one-line JSON, for a message (any parsed value, however deep)."""
    try:
        return json.dumps(value)[:limit]
    except (RecursionError, ValueError):
        return f"a deeply nested {type(value).__name__}"


def _check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise ManifestError(f"{what} is not 64 lowercase hex digits: {_show(value)}")
    return value


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{what} is not an integer: {_show(value)}")
    return value


def _parse_entry(raw: object, position: int, block_size: int) -> FileEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"files[{position}] is not an object")
    missing = sorted(_FILE_KEYS - raw.keys())
    if missing:
        raise ManifestError(f"files[{position}] lacks {', '.join(missing)}")
    unknown = sorted(raw.keys() - _FILE_KEYS)
    if unknown:
        shown = ", ".join(map(_show, unknown))
        raise ManifestError(f"files[{position}] has unknown field {shown}")
    path = raw["path"]
    if not isinstance(path, str):
        raise ManifestError(f"files[{position}].path is not a string")
    check_path(path)
    where = f"file {json.dumps(path)}"
    size = _require_int(raw["size"], f"{where}: size")
    if size < 0:
        raise ManifestError(f"{where}: size {size} is negative")
    executable = raw["executable"]
    if not isinstance(executable, bool):
        raise ManifestError(f"{where}: executable is not true or false")
    sha256 = _check_digest(raw["sha256"], f"{where}: sha256")
    blocks = raw["blocks"]
    if not isinstance(blocks, list):
        raise ManifestError(f"{where}: blocks is not a list")
    expected = block_count(size, block_size)
    if len(blocks) != expected:
        raise ManifestError(
            f"{where}: {len(blocks)} block digests for {size} bytes, expected {expected}"
        )
    digests = tuple(_check_digest(d, f"{where}: block {i}") for i, d in enumerate(blocks))
    return FileEntry(path, size, executable, sha256, digests)


def check_tree(paths: Iterable[str]) -> None:
    seen: set[str] = set()
    directories: set[str] = set()
    for path in paths:
        if path in seen:
            raise ManifestError(f"file path {json.dumps(path)} appears twice")
        seen.add(path)
        parts = path.split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clashes = sorted(seen & directories)
    if clashes:
        raise ManifestError(f"{json.dumps(clashes[0])} is both a file and a directory")


def _reject_constant(name: str) -> Any:
    raise ManifestError(f"manifest contains {name}, which is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError(f"manifest has the key {json.dumps(key)} twice in one object")
        result[key] = value
    return result


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate a manifest; raise ManifestError with one line on any problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest is not UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ManifestError("manifest is nested too deeply") from None
    except ValueError:  # an integer beyond int's string-conversion limit (4300 digits)
        raise ManifestError("manifest has a number with too many digits") from None
    return manifest_from_document(document)


def manifest_from_document(document: object) -> Manifest:
    if not isinstance(document, dict):
        raise ManifestError("manifest is not a JSON object")
    if document.get("format") != FORMAT_NAME:
        raise ManifestError(f'manifest "format" is not "{FORMAT_NAME}"')
    version = document.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ManifestError(
            f"unknown manifest version {_show(version)} (this lazyfs reads {FORMAT_VERSION})"
        )
    missing = sorted(_TOP_KEYS - document.keys())
    if missing:
        raise ManifestError(f"manifest lacks {', '.join(missing)}")
    unknown = sorted(document.keys() - _TOP_KEYS)
    if unknown:
        raise ManifestError(f"manifest has unknown field {', '.join(map(_show, unknown))}")
    if document["hash"] != HASH_ALGORITHM:
        raise ManifestError(
            f"unsupported hash algorithm {_show(document['hash'], 40)} (expected sha256)"
        )
    block_size = _require_int(document["block_size"], "block_size")
    check_block_size(block_size)
    files = document["files"]
    if not isinstance(files, list):
        raise ManifestError("manifest files is not a list")
    entries = tuple(_parse_entry(raw, i, block_size) for i, raw in enumerate(files))
    check_tree(entry.path for entry in entries)
    return Manifest(block_size, entries)


def make_manifest(block_size: int, entries: Iterable[FileEntry]) -> Manifest:
    """Build a manifest from computed entries, with the same checks a parsed one gets."""
    check_block_size(block_size)
    ordered = tuple(sorted(entries, key=lambda e: e.path))
    document: Mapping[str, object] = json.loads(Manifest(block_size, ordered).to_json())
    return manifest_from_document(document)
