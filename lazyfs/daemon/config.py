"""Everything one mount needs to know, as the CLI parsed it, and its form on the wire: a
background mount's daemon receives the parent's ``MountConfig`` whole (``DaemonStart``), so no
option is ever re-spelled as command-line flags."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.core.attempts import RetryPolicy


@dataclass(frozen=True)
class MountConfig:
    url: str
    mountpoint: Path
    cache_dir: Path
    cache_size: int
    # --read-ahead: the mount-wide read-ahead budget, in bytes.
    read_ahead: int = 64 * 1024 * 1024
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
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # --ca-file: the CAs to trust for https instead of the system's.
    ca_file: Path | None = None


def _decode(kind: typing.Any, value: typing.Any) -> typing.Any:
    """``value`` (from JSON) as ``kind``: every field is rebuilt from its type, so a new field
    of ``MountConfig`` needs no code here."""
    if value is None:
        return None
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        return kind(**{name: _decode(hints[name], item) for name, item in value.items()})
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _decode(inner, value)
    if origin is tuple:
        arguments = typing.get_args(kind)
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_decode(arguments[0], item) for item in value)
        return tuple(
            _decode(argument, item) for argument, item in zip(arguments, value, strict=True)
        )
    if kind is Path:
        return Path(value)
    return kind(value)


@dataclass(frozen=True)
class DaemonStart:
    """What a background mount's parent hands its daemon on stdin: the mount and its log."""

    config: MountConfig
    log_file: Path
    log_level: str

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), default=str).encode()

    @classmethod
    def decode(cls, data: bytes) -> DaemonStart:
        decoded: DaemonStart = _decode(cls, json.loads(data))
        return decoded
