"""A fake Xet CAS on 127.0.0.1, filled by the real ``hf_xet`` client and read as the Hub's is.

Write side (what ``hf_xet.upload_files`` uses): ``POST /v1/xorbs/default/{hash}`` stores a
xorb, ``POST /v1/shards`` stores a shard (``/v2/shards`` answers 404 so the client falls back),
``GET /v1/chunks/...`` (global dedup) and ``POST /v1/xorb-grants/...`` answer 404. Shards are
parsed (file info: a file's segments; CAS info: each xorb's chunk hashes, offsets and sizes), so
what the fake serves is what the real client wrote.

Read side, as the Hub's CAS answers (xet-core's ``cas_types`` and simulation server are the
reference): ``GET /v2/reconstructions/{file}`` and ``/v1/reconstructions/{file}`` (``Range`` on
file bytes), ``GET /v2/file-chunk-hashes/{file}`` (``X-Range-Dirty``), and pre-signed data URLs
``/xorb-data/{xorb}?sig=..&exp=..`` on the same server, each signed for exactly the byte ranges
listed with it (a request for other ranges is a 403, as a signed ``Range`` header would be),
several ranges answered as ``multipart/byteranges``. Every request but a data URL needs
``Authorization: Bearer`` with a token this CAS minted and has not expired.

Knobs (attributes and methods) let tests expire tokens and URLs, switch endpoints off, damage
a stored chunk, forge a gap subtree and inject 429/5xx answers; counters say what was asked
and how many xorb bytes went out.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import lz4.frame

from lazyfs.core.xethash import group_length, hash_hex, node_hash
from lazyfs.core.xetproof import Subtree, stable_start
from lazyfs.core.xorb import HEADER_SIZE, XorbChunk, decode_chunk, group4, parse_chunks

TOKEN_TTL = 3600  # seconds a minted CAS token lives, as the Hub's read tokens roughly do
URL_TTL = 3600
BOOKEND = b"\xff" * 32
SHARD_HEADER_SIZE = 48  # 32-byte tag, version, footer size
SHARD_ENTRY_SIZE = 48  # every file-info and xorb-info record
WITH_VERIFICATION = 1 << 31
WITH_METADATA_EXT = 1 << 30
# xet-core's chunker: target 64 KiB, minimum 8 KiB, maximum 128 KiB. A window closes on the
# right only after two chunks whose sizes show the content-defined chunker has re-synced.
MIN_CHUNK = 64 * 1024 // 8
MAX_CHUNK = 64 * 1024 * 2
_RANGE_ITEM = re.compile(r"(\d+)-(\d*)")


def is_stable_chunk_size(size: int) -> bool:
    return 2 * MIN_CHUNK <= size < MAX_CHUNK - MIN_CHUNK


@dataclass(frozen=True)
class ChunkEntry:
    """One chunk of a xorb as a shard lists it: hash (raw), offset of its first byte among the
    xorb's uncompressed bytes, and uncompressed size."""

    hash: bytes
    offset: int
    size: int


@dataclass(frozen=True)
class Segment:
    """A run of one xorb's chunks ``[start, end)`` that is part of a file, ``size`` bytes."""

    xorb: str  # hex
    start: int
    end: int
    size: int


@dataclass
class XetFile:
    hash: str  # hex, as the Hub lists it
    segments: list[Segment]
    verification: list[str] = field(default_factory=list)  # range hashes, hex, per segment

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)


@dataclass
class StoredXorb:
    """A xorb's bytes as served (maybe damaged by a knob) and each chunk's ``[start, end)`` in
    them, header included."""

    data: bytes
    spans: list[tuple[int, int]]

    @classmethod
    def walk(cls, data: bytes, count: int) -> StoredXorb:
        """Find the first ``count`` chunks by their headers (the shard gives offsets in
        uncompressed bytes, not where a chunk sits in the xorb; a footer may follow them)."""
        spans = []
        position = 0
        for _ in range(count):
            stored = int.from_bytes(data[position + 1 : position + 4], "little")
            end = position + HEADER_SIZE + stored
            if end > len(data):
                raise ValueError(f"xorb holds fewer than {count} chunks")
            spans.append((position, end))
            position = end
        return cls(data, spans)

    def span(self, index: int) -> tuple[int, int]:
        return self.spans[index]


@dataclass
class SignedUrl:
    xorb: str
    ranges: tuple[tuple[int, int], ...]  # inclusive byte ranges, as signed
    exp: int
    expired: bool = False


@dataclass
class Failure:
    status: int
    retry_after: str | None
    kinds: frozenset[str] | None  # None: any read request


@dataclass
class Request:
    kind: str
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


READ_KINDS = frozenset(
    {"reconstructions-v2", "reconstructions-v1", "file-chunk-hashes", "xorb-data"}
)


class FakeXetCas:
    """A Xet CAS on a free loopback port; see the module docstring for what it serves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.xorbs: dict[str, bytes] = {}  # as uploaded
        self.xorb_chunks: dict[str, list[ChunkEntry]] = {}
        self.served: dict[str, StoredXorb] = {}  # as served: corruption lands here
        self.files: dict[str, XetFile] = {}
        # Every xorb (its hash) and shard ("") as uploaded, in order: what ``replay`` needs to
        # fill another CAS the same way without the client.
        self.received: list[tuple[str, bytes]] = []
        self.tokens: dict[str, int] = {}  # token -> exp (unix seconds)
        self.expired_tokens: set[str] = set()
        self.urls: dict[str, SignedUrl] = {}
        # Knobs.
        self.v2_reconstructions = True  # False: /v2/reconstructions answers 404 (v1 fallback)
        self.gzip_json = False  # True: JSON answers gzipped for clients that accept it
        self.file_chunk_hashes = True  # False: /v2/file-chunk-hashes answers 404 (an old CAS)
        self.max_ranges_per_url = 64  # a v2 URL lists at most this many byte ranges
        self.forge_gap: str | None = None  # "hash" or "size": alter the first gap subtree
        # A hostile CAS: per kind ("reconstructions-v2", "file-chunk-hashes", ...), a function
        # that rewrites each JSON answer before it is sent.
        self.rewrite: dict[str, Callable[[Any], Any]] = {}
        self.failures: list[Failure] = []
        self._pieces: dict[tuple[str, int, int, bool, bool], Subtree] = {}
        self._levels: dict[str, TreeLevels] = {}
        # Counters.
        self.counts: Counter[str] = Counter()  # requests by kind
        self.statuses: Counter[tuple[str, int]] = Counter()  # (kind, status) answered
        self.xorb_bytes_sent = 0  # xorb data bytes sent on data URLs
        self.data_authorizations: list[str] = []  # Authorization headers sent to data URLs
        self.requests: list[Request] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _CasHandler)
        self.server.daemon_threads = True
        self.server.cas = self  # type: ignore[attr-defined]
        # A short poll interval: shutdown() waits for the loop to look, 0.5 s by default.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # Tokens and URLs

    def mint_token(self, ttl: int = TOKEN_TTL) -> tuple[str, int]:
        """A new CAS access token and its expiry (unix seconds), as ``xet-read-token`` gives."""
        token = "xet_" + secrets.token_hex(16)
        exp = int(time.time()) + ttl
        with self.lock:
            self.tokens[token] = exp
        return token, exp

    def token_valid(self, token: str | None) -> bool:
        with self.lock:
            exp = self.tokens.get(token or "")
            return exp is not None and token not in self.expired_tokens and exp > time.time()

    def expire_tokens(self) -> None:
        """Every token minted so far is refused from now on (401); new ones work."""
        with self.lock:
            self.expired_tokens.update(self.tokens)

    def expire_urls(self) -> None:
        """Every data URL issued so far is refused from now on (403); new ones work."""
        with self.lock:
            for url in self.urls.values():
                url.expired = True

    def sign(self, xorb: str, ranges: Sequence[tuple[int, int]]) -> str:
        sig = secrets.token_hex(16)
        exp = int(time.time()) + URL_TTL
        with self.lock:
            self.urls[sig] = SignedUrl(xorb, tuple(ranges), exp)
        return f"{self.endpoint}/xorb-data/{xorb}?sig={sig}&exp={exp}"

    # Fault knobs

    def fail(
        self,
        status: int,
        times: int = 1,
        retry_after: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        """The next ``times`` read requests (of ``kinds``, default any) answer ``status``."""
        failure = Failure(status, retry_after, frozenset(kinds) if kinds else None)
        with self.lock:
            self.failures.extend([failure] * times)

    def corrupt(self, file_hash: str, offset: int) -> str:
        """Flip file byte ``offset`` of ``file_hash`` in the xorb chunk that stores it.

        The chunk is decoded, the byte flipped and the chunk encoded again with its own scheme,
        so it still decompresses and only that byte of the file differs (the chunk hash in the
        shard no longer matches). Returns the xorb's hash. ``heal`` undoes it.
        """
        xet_file = self.files[file_hash]
        position = 0
        for segment in xet_file.segments:
            for index in range(segment.start, segment.end):
                size = self.xorb_chunks[segment.xorb][index].size
                if position <= offset < position + size:
                    self._flip(segment.xorb, index, offset - position)
                    return segment.xorb
                position += size
        raise ValueError(f"offset {offset} is past the end of {file_hash} ({position} bytes)")

    def heal(self) -> None:
        """Every xorb served as it was uploaded again."""
        with self.lock:
            self.served = {
                name: StoredXorb.walk(data, len(self.xorb_chunks[name]))
                for name, data in self.xorbs.items()
                if name in self.xorb_chunks
            }

    def _flip(self, xorb: str, index: int, at: int) -> None:
        with self.lock:
            stored = self.served[xorb]
            start, end = stored.span(index)
            (chunk,) = parse_chunks(stored.data[start:end])
            plain = bytearray(decode_chunk(chunk))
            plain[at] ^= 0xFF
            encoded = _encode_chunk(chunk.scheme, bytes(plain))
            data = stored.data[:start] + encoded + stored.data[end:]
            self.served[xorb] = StoredXorb.walk(data, len(stored.spans))

    # Uploads

    def store_xorb(self, name: str, data: bytes) -> None:
        with self.lock:
            self.received.append((name, data))
            self.xorbs[name] = data
            if name in self.xorb_chunks:
                self.served[name] = StoredXorb.walk(data, len(self.xorb_chunks[name]))

    def store_shard(self, data: bytes) -> None:
        files, xorbs = parse_shard(data)
        with self.lock:
            self.received.append(("", data))
            for name, chunks in xorbs.items():
                self.xorb_chunks[name] = chunks
                if name in self.xorbs:
                    self.served[name] = StoredXorb.walk(self.xorbs[name], len(chunks))
            for xet_file in files:
                self.files[xet_file.hash] = xet_file

    def replay(self, received: Sequence[tuple[str, bytes]]) -> None:
        """Store what another CAS received (its ``received``, or a part of it) as if the
        client had uploaded it here: the same parsing, the same state."""
        for name, data in received:
            if name:
                self.store_xorb(name, data)
            else:
                self.store_shard(data)

    # Read side, sans HTTP

    def file_chunks(self, file_hash: str) -> list[tuple[bytes, int]]:
        """The file's chunks (raw hash, size), in file order, as the shards list them."""
        chunks = []
        for segment in self.files[file_hash].segments:
            for entry in self.xorb_chunks[segment.xorb][segment.start : segment.end]:
                chunks.append((entry.hash, entry.size))
        return chunks

    def reconstruction(
        self, file_hash: str, start: int, end: int | None
    ) -> tuple[int, list[dict[str, object]], dict[str, list[tuple[int, int, int, int]]]] | None:
        """Terms for file bytes ``[start, end)`` (``end`` None: to the end), pruned to the
        chunks that hold them, and per xorb the merged (chunk start, chunk end, byte start,
        byte end exclusive) ranges to fetch; None when ``start`` is past the end (a 416)."""
        xet_file = self.files[file_hash]
        total = xet_file.size
        if start >= total:
            return (0, [], {}) if total == 0 and start == 0 else None
        end = total if end is None else min(end, total)
        terms: list[dict[str, object]] = []
        wanted: dict[str, list[tuple[int, int]]] = {}
        first_chunk_start: int | None = None
        position = 0
        with self.lock:
            served = dict(self.served)
        for segment in xet_file.segments:
            if position >= end:
                break
            chunks = self.xorb_chunks[segment.xorb]
            lo, hi = segment.start, segment.end
            seg_start = position
            position += segment.size
            if position <= start:
                continue
            while seg_start + chunks[lo].size <= start:
                seg_start += chunks[lo].size
                lo += 1
            seg_end = position
            while seg_end - chunks[hi - 1].size >= end:
                seg_end -= chunks[hi - 1].size
                hi -= 1
            if first_chunk_start is None:
                first_chunk_start = seg_start
            terms.append(
                {
                    "hash": segment.xorb,
                    "unpacked_length": seg_end - seg_start,
                    "range": {"start": lo, "end": hi},
                }
            )
            wanted.setdefault(segment.xorb, []).append((lo, hi))
        fetches: dict[str, list[tuple[int, int, int, int]]] = {}
        for xorb, ranges in wanted.items():
            merged: list[list[int]] = []
            for lo, hi in sorted(ranges):
                if merged and lo <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            stored = served[xorb]
            fetches[xorb] = [
                (lo, hi, stored.span(lo)[0], stored.span(hi - 1)[1]) for lo, hi in merged
            ]
        assert first_chunk_start is not None
        return start - first_chunk_start, terms, fetches

    def reconstruction_v2(self, file_hash: str, start: int, end: int | None) -> object | None:
        found = self.reconstruction(file_hash, start, end)
        if found is None:
            return None
        offset, terms, fetches = found
        xorbs: dict[str, list[dict[str, object]]] = {}
        for xorb, ranges in fetches.items():
            entries: list[dict[str, object]] = []
            for first in range(0, len(ranges), self.max_ranges_per_url):
                batch = ranges[first : first + self.max_ranges_per_url]
                url = self.sign(xorb, [(b0, b1 - 1) for _, _, b0, b1 in batch])
                descriptors: list[dict[str, object]] = [
                    {
                        "chunks": {"start": lo, "end": hi},
                        "bytes": {"start": b0, "end": b1 - 1},
                    }
                    for lo, hi, b0, b1 in batch
                ]
                entries.append({"url": url, "ranges": descriptors})
            xorbs[xorb] = entries
        return {"offset_into_first_range": offset, "terms": terms, "xorbs": xorbs}

    def reconstruction_v1(self, file_hash: str, start: int, end: int | None) -> object | None:
        found = self.reconstruction(file_hash, start, end)
        if found is None:
            return None
        offset, terms, fetches = found
        fetch_info = {
            xorb: [
                {
                    "range": {"start": lo, "end": hi},
                    "url": self.sign(xorb, [(b0, b1 - 1)]),
                    "url_range": {"start": b0, "end": b1 - 1},
                }
                for lo, hi, b0, b1 in ranges
            ]
            for xorb, ranges in fetches.items()
        }
        return {"offset_into_first_range": offset, "terms": terms, "fetch_info": fetch_info}

    def chunk_hashes(self, file_hash: str, dirty: Sequence[tuple[int, int]]) -> object | None:
        """The ``file-chunk-hashes`` answer for the dirty ranges ``[start, end)``, built as
        xet-core's ``ChunkWindowBuilder`` builds it; None when no range overlaps the file."""

        xet_file = self.files[file_hash]
        chunks = self.file_chunks(file_hash)
        windows, gaps = build_windows(chunks, xet_file.size, dirty)
        if not windows:
            return None
        # Gaps are the chunks before, between and after the windows, by chunk index.
        offsets = list(itertools.accumulate((size for _, size in chunks), initial=0))
        index_of = {offset: index for index, offset in enumerate(offsets)}
        bounds = [0, *(index_of[edge] for window in windows for edge in window), len(chunks)]
        hash_ranges: list[object] = []
        for place in range(0, len(bounds), 2):
            low, high = bounds[place], bounds[place + 1]
            at_start, at_end = place == 0, place == len(bounds) - 2
            hash_ranges.append(
                None
                if low == high
                else self._gap_subtree(file_hash, chunks, low, high, at_start, at_end).to_json()
            )
        assert [gap is None for gap in hash_ranges] == [chunks is None for _, chunks, _ in gaps]
        if self.forge_gap is not None:
            _forge(hash_ranges, self.forge_gap)
        return {
            "totalChunks": len(chunks),
            "fileSize": xet_file.size,
            "windows": [{"dirtyByteRange": [s, e]} for s, e in windows],
            "hashRanges": hash_ranges,
            "gapVerification": _gap_verification(xet_file, windows),
        }

    def _gap_subtree(
        self,
        file_hash: str,
        chunks: Sequence[tuple[bytes, int]],
        low: int,
        high: int,
        at_start: bool,
        at_end: bool,
    ) -> Subtree:
        """The subtree of chunks ``[low, high)``, as xet-core's builder makes it.

        A gap that starts the file is merged left to right from pieces of GAP_PIECE aligned
        chunks, each built once per file and kept (a run that begins the file merges exactly
        as one built whole), so its answer costs O(pieces), not a pass over the file. Any
        other gap is built whole: merging two runs that both start mid-file does not give
        the run built whole (in xet-core as here), so a client cannot be handed one."""
        if not at_start and at_end:
            levels = self._levels.get(file_hash)
            if levels is None or len(levels.nodes[0]) != len(chunks):
                levels = self._levels[file_hash] = TreeLevels.of(chunks)
            return levels.trailing_gap(low)
        if not at_start:
            return Subtree.from_chunks(at_start, chunks[low:high], at_end)
        cuts = [low, *range((low // GAP_PIECE + 1) * GAP_PIECE, high, GAP_PIECE), high]
        merged: Subtree | None = None
        for place, (start, end) in enumerate(itertools.pairwise(cuts)):
            first, last = place == 0, at_end and end == high
            key = (file_hash, start, end, first, last)
            piece = self._pieces.get(key)
            if piece is None:
                piece = Subtree.from_chunks(first, chunks[start:end], last)
                if end - start == GAP_PIECE:
                    self._pieces[key] = piece
            merged = piece if merged is None else merged.merge(piece)
        assert merged is not None
        return merged


GAP_PIECE = 512  # chunks per cached piece of a gap subtree


@dataclass
class TreeLevels:
    """A file's whole Merkle tree, level by level: what a CAS keeps so that the subtree of
    any tail of the file is read off it instead of built."""

    nodes: list[list[tuple[bytes, int]]]
    # Per level: the index of each group's first node -> that group's node one level up.
    group_of: list[dict[int, int]]

    @classmethod
    def of(cls, chunks: Sequence[tuple[bytes, int]]) -> TreeLevels:
        level = list(chunks)
        nodes, group_of = [level], []
        while len(level) > 1:
            starts: dict[int, int] = {}
            upper: list[tuple[bytes, int]] = []
            position = 0
            while position < len(level):
                length = group_length(level, position)
                starts[position] = len(upper)
                upper.append(node_hash(level[position : position + length]))
                position += length
            group_of.append(starts)
            nodes.append(upper)
            level = upper
        return cls(nodes, group_of)

    def trailing_gap(self, low: int) -> Subtree:
        """``Subtree.from_chunks(False, chunks[low:], True)``, read off the tree: at each level
        the nodes before the tail's first stable group start stay on the edge, and from there
        on the tail groups exactly as the whole file does (that start is a group start
        whatever precedes it), so the next level is the tree's own from that group on."""
        lefts: list[list[tuple[bytes, int]]] = []
        first, level = low, 0
        while True:
            current = self.nodes[level][first:]
            start = stable_start(current) if len(current) > 1 else None
            if start is None:
                lefts.append(current)
                break
            lefts.append(current[:start])
            group = self.group_of[level][first + start]
            if len(self.nodes[level + 1]) - group == 1:
                lefts.append(self.nodes[level + 1][group:])
                break
            first, level = group, level + 1
        flat = tuple(node for left in lefts for node in left)
        return Subtree(flat, tuple((len(left), 0) for left in lefts), False, True)


def build_windows(
    chunks: Sequence[tuple[bytes, int]], file_size: int, dirty: Sequence[tuple[int, int]]
) -> tuple[list[tuple[int, int]], list[tuple[bool, list[tuple[bytes, int]] | None, bool]]]:
    """Windows (chunk-aligned ``[start, end)``) around the dirty ranges, and the N+1 gaps as
    (at_start, chunks or None when empty, at_end), following xet-core's chunk_window_builder:
    a window opens on the first chunk touching a dirty range, swallows later dirty ranges it
    reaches, and closes only after two clean chunks of stable size (or at the file's end)."""
    ranges = sorted((s, min(e, file_size)) for s, e in dirty if s < min(e, file_size))
    windows: list[list[int]] = []
    gaps: list[tuple[bool, list[tuple[bytes, int]] | None, bool]] = []
    gap: list[tuple[bytes, int]] = []
    gap_is_first = True
    in_window = False
    index = 0  # the dirty range the open window (or the next one) is about
    tail_previous: int | None = None
    cursor = 0

    def overlaps(i: int, start: int, end: int) -> bool:
        return i < len(ranges) and end > ranges[i][0] and start < ranges[i][1]

    def merge_ahead(end: int) -> None:
        nonlocal index
        while index + 1 < len(ranges) and end > ranges[index + 1][0]:
            index += 1

    for chunk_hash, size in chunks:
        end = cursor + size
        dirty_here = overlaps(index, cursor, end)
        if not in_window:
            if dirty_here:
                gaps.append((gap_is_first, list(gap) or None, False))
                gap.clear()
                windows.append([cursor, end])
                merge_ahead(end)
                in_window = True
                tail_previous = None
            else:
                gap.append((chunk_hash, size))
        elif dirty_here or overlaps(index + 1, cursor, end):
            if not dirty_here:
                index += 1
            windows[-1][1] = end
            merge_ahead(end)
            tail_previous = None
        else:
            windows[-1][1] = end
            stable = tail_previous is not None and (
                is_stable_chunk_size(tail_previous) and is_stable_chunk_size(size)
            )
            tail_previous = size
            if stable:
                index += 1
                gap_is_first = False
                in_window = False
                tail_previous = None
        cursor = end
    gaps.append((gap_is_first, list(gap) or None, True))
    return [(s, e) for s, e in windows], gaps


def _gap_verification(xet_file: XetFile, windows: Sequence[tuple[int, int]]) -> list[str]:
    """The verification range hash of every segment no window touches (none without them)."""
    if len(xet_file.verification) != len(xet_file.segments):
        return []
    found = []
    position = 0
    for segment, range_hash in zip(xet_file.segments, xet_file.verification, strict=True):
        start, end = position, position + segment.size
        position = end
        if not any(s < end and start < e for s, e in windows):
            found.append(range_hash)
    return found


def _forge(hash_ranges: list[object], how: str) -> None:
    """Alter the first node of the first non-empty gap: its hash (one digit) or its size."""
    for subtree in hash_ranges:
        if isinstance(subtree, dict) and subtree.get("nodes"):
            node = subtree["nodes"][0]
            if how == "hash":
                digit = node["hash"][0]
                node["hash"] = ("1" if digit == "0" else "0") + node["hash"][1:]
            else:
                node["size"] += 1
            return
    raise ValueError("no gap subtree to forge: every gap is empty")


def _encode_chunk(scheme: int, plain: bytes) -> bytes:
    """A xorb chunk (header and payload) holding ``plain`` with compression ``scheme``."""
    if scheme == 0:
        payload = plain
    elif scheme == 1:
        payload = lz4.frame.compress(plain)
    else:
        payload = lz4.frame.compress(group4(plain))
    return (
        bytes([0])
        + len(payload).to_bytes(3, "little")
        + bytes([scheme])
        + len(plain).to_bytes(3, "little")
        + payload
    )


def parse_shard(data: bytes) -> tuple[list[XetFile], dict[str, list[ChunkEntry]]]:
    """The files and xorbs a shard describes (xet-core ``shard_format.rs``, ``file_structs.rs``,
    ``xorb_structs.rs``): a 48-byte header, file records up to a bookend, xorb records up to a
    bookend; lookup tables and footer after that are not needed. Hashes are kept as the raw
    32 bytes they are stored as and named in hex."""
    position = SHARD_HEADER_SIZE

    def record() -> bytes:
        nonlocal position
        chunk = data[position : position + SHARD_ENTRY_SIZE]
        if len(chunk) < SHARD_ENTRY_SIZE:
            raise ValueError(f"shard ends inside a record at {position}")
        position += SHARD_ENTRY_SIZE
        return chunk

    def u32(raw: bytes, at: int) -> int:
        return int.from_bytes(raw[at : at + 4], "little")

    files = []
    while (header := record())[:32] != BOOKEND:
        flags, count = u32(header, 32), u32(header, 36)
        segments = []
        for _ in range(count):
            entry = record()
            segments.append(
                Segment(hash_hex(entry[:32]), u32(entry, 40), u32(entry, 44), u32(entry, 36))
            )
        verification = []
        if flags & WITH_VERIFICATION:
            verification = [hash_hex(record()[:32]) for _ in range(count)]
        if flags & WITH_METADATA_EXT:
            record()
        files.append(XetFile(hash_hex(header[:32]), segments, verification))
    xorbs = {}
    while (header := record())[:32] != BOOKEND:
        chunks = []
        for _ in range(u32(header, 36)):
            entry = record()
            chunks.append(ChunkEntry(entry[:32], u32(entry, 32), u32(entry, 36)))
        xorbs[hash_hex(header[:32])] = chunks
    return files, xorbs


@contextmanager
def fake_xet_cas() -> Iterator[FakeXetCas]:
    cas = FakeXetCas()
    try:
        yield cas
    finally:
        cas.close()


_UPLOADER = """
import json, sys
import hf_xet
endpoint, token, exp, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
infos = hf_xet.upload_files(paths, endpoint, (token, exp), None, None, "model")
print(json.dumps([info.hash for info in infos]))
"""


def upload(cas: FakeXetCas, files: dict[str, bytes], timeout: float = 120) -> dict[str, str]:
    """Upload ``files`` (name -> bytes) to ``cas`` with the real hf_xet client; name -> xetHash.

    The client runs in a child process with a fresh HF_HOME, so its local shard cache cannot
    deduplicate against an earlier upload (to this or another fake) and skip what this CAS
    has never seen.
    """
    if not files:
        return {}
    with tempfile.TemporaryDirectory(prefix="fakexet-upload-") as scratch:
        root = Path(scratch)
        names = sorted(files)
        paths = []
        for number, name in enumerate(names):
            path = root / "files" / str(number)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[name])
            paths.append(str(path))
        token, exp = cas.mint_token()
        env = {
            **os.environ,
            "HF_HOME": str(root / "hf-home"),
            "HF_XET_CACHE": str(root / "hf-home" / "xet"),
            "HF_XET_TELEMETRY_ENABLED": "false",
        }
        done = subprocess.run(
            [sys.executable, "-c", _UPLOADER, cas.endpoint, token, str(exp), *paths],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"hf_xet upload failed: {done.stderr.strip()[-2000:]}")
        hashes = json.loads(done.stdout.strip().splitlines()[-1])
    result = dict(zip(names, hashes, strict=True))
    missing = sorted(name for name, h in result.items() if h not in cas.files and files[name])
    if missing:
        raise RuntimeError(f"hf_xet upload left no file record in the fake CAS for {missing}")
    return result


class _CasHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def cas(self) -> FakeXetCas:
        return self.server.cas  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: object) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK hold every answer back for ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_HEAD(self) -> None:
        self.dispatch()

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.request_record.status = status
        with self.cas.lock:
            self.cas.statuses[(self.request_record.kind, status)] += 1
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(
        self, status: int, document: object, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(document).encode()
        extra = dict(headers or {})
        if self.cas.gzip_json and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            extra["Content-Encoding"] = "gzip"
        self.send(status, body, {"Content-Type": "application/json", **extra})

    def dispatch(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        kind, name = _route(self.command, path)
        self.request_record = Request(
            kind, self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
        )
        with self.cas.lock:
            self.cas.counts[kind] += 1
            self.cas.requests.append(self.request_record)
        body = self.read_body() if self.command == "POST" else b""
        failure = self.take_failure(kind)
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            self.send_json(failure.status, {"error": "injected"}, headers)
            return
        if kind == "xorb-data":
            self.serve_data(name, parse_qs(parts.query))
            return
        authorization = self.headers.get("Authorization", "")
        if not self.cas.token_valid(authorization.removeprefix("Bearer ").strip() or None):
            self.send_json(401, {"error": "unauthorized: missing, unknown or expired token"})
            return
        if kind == "xorb-upload":
            self.cas.store_xorb(name, body)
            self.send_json(200, {"was_inserted": True})
        elif kind == "shard-upload":
            self.cas.store_shard(body)
            self.send_json(200, {"result": 1})
        elif kind in ("reconstructions-v2", "reconstructions-v1"):
            self.serve_reconstruction(kind, name)
        elif kind == "file-chunk-hashes":
            self.serve_chunk_hashes(name)
        else:  # dedup queries, grants, /v2/shards and anything unknown
            self.send_json(404, {"error": "not found"})

    def take_failure(self, kind: str) -> Failure | None:
        with self.cas.lock:
            for index, failure in enumerate(self.cas.failures):
                if (failure.kinds is None and kind in READ_KINDS) or (
                    failure.kinds is not None and kind in failure.kinds
                ):
                    return self.cas.failures.pop(index)
        return None

    def serve_reconstruction(self, kind: str, file_hash: str) -> None:
        if kind == "reconstructions-v2" and not self.cas.v2_reconstructions:
            self.send_json(404, {"error": "not found"})
            return
        if file_hash not in self.cas.files:
            self.send_json(404, {"error": "file not found"})
            return
        start, end = 0, None
        header = self.headers.get("Range")
        if header is not None:
            ranges = _parse_ranges(header)
            if ranges is None or len(ranges) != 1:
                self.send_json(416, {"error": f"bad Range {header!r}"})
                return
            start, last = ranges[0]
            end = None if last is None else last + 1
        if kind == "reconstructions-v2":
            answer = self.cas.reconstruction_v2(file_hash, start, end)
        else:
            answer = self.cas.reconstruction_v1(file_hash, start, end)
        if answer is None:
            self.send_json(416, {"error": "range not satisfiable"})
            return
        self.send_json(200, self.cas.rewrite.get(kind, _unchanged)(answer))

    def serve_chunk_hashes(self, file_hash: str) -> None:
        if not self.cas.file_chunk_hashes:
            self.send_json(404, {"error": "not found"})
            return
        if file_hash not in self.cas.files:
            self.send_json(404, {"error": "file not found"})
            return
        header = self.headers.get("X-Range-Dirty", "")
        ranges = _parse_ranges(header)
        if not ranges or any(last is None for _, last in ranges):
            self.send_json(400, {"error": f"bad X-Range-Dirty {header!r}"})
            return
        dirty = [(first, last + 1) for first, last in ranges if last is not None]
        answer = self.cas.chunk_hashes(file_hash, dirty)
        if answer is None:
            self.send_json(416, {"error": "no dirty range overlaps the file"})
            return
        self.send_json(200, self.cas.rewrite.get("file-chunk-hashes", _unchanged)(answer))

    def serve_data(self, xorb: str, query: dict[str, list[str]]) -> None:
        authorization = self.headers.get("Authorization")
        if authorization is not None:
            with self.cas.lock:
                self.cas.data_authorizations.append(authorization)
        sig = query.get("sig", [""])[0]
        with self.cas.lock:
            signed = self.cas.urls.get(sig)
            stored = self.cas.served.get(xorb)
        if signed is None or signed.xorb != xorb or stored is None:
            self.send(403, b"<Error>AccessDenied: not signed</Error>")
            return
        if signed.expired or signed.exp <= time.time():
            self.send(403, b"<Error>AccessDenied: Request has expired</Error>")
            return
        ranges = _parse_ranges(self.headers.get("Range", ""))
        if ranges is None or tuple(ranges) != signed.ranges:
            self.send(403, b"<Error>AccessDenied: Range is not the signed range</Error>")
            return
        data = stored.data
        pieces = [data[first : last + 1] for first, last in signed.ranges]
        with self.cas.lock:
            self.cas.xorb_bytes_sent += sum(len(piece) for piece in pieces)
        if len(pieces) == 1:
            first, last = signed.ranges[0]
            content_range = f"bytes {first}-{last}/{len(data)}"
            self.send(206, pieces[0], {"Content-Range": content_range})
            return
        boundary = "fakexet" + secrets.token_hex(8)
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {first}-{last}/{len(data)}\r\n\r\n"
            ).encode()
            + piece
            + b"\r\n"
            for (first, last), piece in zip(signed.ranges, pieces, strict=True)
        )
        body += f"--{boundary}--\r\n".encode()
        self.send(206, body, {"Content-Type": f"multipart/byteranges; boundary={boundary}"})


def _unchanged(answer: Any) -> Any:
    return answer


def _route(method: str, path: str) -> tuple[str, str]:
    """A request's kind (the counters' key) and the hash it names."""
    patterns = (
        ("POST", r"/v1/xorbs/[^/]+/([0-9a-f]{64})", "xorb-upload"),
        ("POST", r"/v1/shards", "shard-upload"),
        ("POST", r"/v2/shards", "shard-upload-v2"),
        ("GET", r"/v1/chunks/.*", "chunk-query"),
        ("POST", r"/v1/xorb-grants/.*", "xorb-grant"),
        ("GET", r"/v2/reconstructions/([0-9a-f]{64})", "reconstructions-v2"),
        ("GET", r"/v1/reconstructions/([0-9a-f]{64})", "reconstructions-v1"),
        ("GET", r"/v2/file-chunk-hashes/([0-9a-f]{64})", "file-chunk-hashes"),
        ("GET", r"/xorb-data/([0-9a-f]{64})", "xorb-data"),
    )
    for wanted, pattern, kind in patterns:
        match = re.fullmatch(pattern, path)
        if match is not None and method in (wanted, "HEAD" if wanted == "GET" else wanted):
            return kind, match[1] if match.groups() else ""
    return "other", ""


def _parse_ranges(header: str) -> list[tuple[int, int | None]] | None:
    """``bytes=a-b[,c-d...]`` as (first, last or None) pairs; None when malformed."""
    header = header.strip()
    if not header.startswith("bytes="):
        return None
    ranges: list[tuple[int, int | None]] = []
    for item in header.removeprefix("bytes=").split(","):
        match = _RANGE_ITEM.fullmatch(item.strip())
        if match is None:
            return None
        first, last = int(match[1]), int(match[2]) if match[2] else None
        if last is not None and last < first:
            return None
        ranges.append((first, last))
    return ranges


__all__ = [
    "READ_KINDS",
    "ChunkEntry",
    "FakeXetCas",
    "Segment",
    "XetFile",
    "XorbChunk",
    "build_windows",
    "fake_xet_cas",
    "parse_shard",
    "upload",
]
