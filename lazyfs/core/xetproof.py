"""Proving a window of a Xet file against the Hub's ``xetHash``, without the rest of the file.

The CAS answers ``file-chunk-hashes`` with the windows it chose around the bytes asked for and,
for the gaps between them, partly merged subtrees of the file's Merkle tree. The reader hashes
each window's chunks itself, builds the window's subtree, merges everything in file order and
compares the root with ``xetHash``. A subtree is kept as a "hump" (xet-core's
``MerkleHashSubtree``): per tree level, the nodes at its left edge not yet groupable without
knowing what precedes them and those at its right edge likewise, ascending to one peak. Groups
cut only where the cut cannot depend on unseen neighbours (``stable_start`` / ``stable_end``),
so merging humps left to right gives exactly the tree of the whole chunk list.

A root match commits every hash and size of the tree, so the window's chunks sit at the place
the gaps' sizes say; the checks here add that the gap before a window is exactly where the
window starts, that the sizes add up to the listed size, and that the merge closed into one
node (a hump that did not collapse would offer some node as a "root" without committing the
rest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lazyfs.core.xethash import (
    MAX_GROUP,
    MIN_GROUP,
    ZERO_HASH,
    Node,
    closes_group,
    file_hash_from_root,
    group_length,
    hash_from_hex,
    hash_hex,
    node_hash,
)
from lazyfs.errors import OriginProtocolError

# A hump holds O(log n) nodes per level; a CAS answer with more is not one.
MAX_SUBTREE_NODES = 100_000
# Each tree level at least halves the one below, so a file's tree has at most 64 levels; a
# hump with more is not one (merging costs the square of its levels).
MAX_SUBTREE_LEVELS = 64


class WindowProofError(OriginProtocolError):
    """The CAS's answer does not prove the window against the file's hash (asked again,
    bounded, as a bad block copy is)."""


def _valid_gap(gap: int) -> bool:
    return MIN_GROUP < gap < MAX_GROUP - 1


def stable_start(nodes: Sequence[Node]) -> int | None:
    """The first index that starts a group whatever precedes ``nodes``, if there is one:
    one past the middle of three natural cuts spaced so that no group can jump them."""
    if len(nodes) < MIN_GROUP + 1:
        return None
    return _past_middle_cut(i for i, (h, _) in enumerate(nodes) if closes_group(h))


def stable_end(nodes: Sequence[Node]) -> int | None:
    """The mirror of ``stable_start``: the last index where a group starts whatever follows."""
    if len(nodes) < MIN_GROUP + 1:
        return None
    cuts = (i for i in range(len(nodes) - 1, -1, -1) if closes_group(nodes[i][0]))
    return _past_middle_cut(cuts)


def _past_middle_cut(cuts: Iterable[int]) -> int | None:
    """One past the middle of the first three consecutive ``cuts`` (natural cut positions,
    scanned in either direction) whose two gaps are both valid."""
    first: int | None = None
    middle: int | None = None
    for cut in cuts:
        if (
            middle is not None
            and first is not None
            and _valid_gap(abs(cut - middle))
            and _valid_gap(abs(middle - first))
        ):
            return middle + 1
        first, middle = middle, cut
    return None


def split_and_promote(
    nodes: Sequence[Node], at_start: bool, at_end: bool
) -> tuple[int, int, list[Node]]:
    """One level: how many nodes stay on the left and right edges, and the groups between
    them merged into the next level's nodes."""
    if len(nodes) <= 1:
        return len(nodes), 0, []
    first = 0 if at_start else stable_start(nodes)
    if first is None:
        return len(nodes), 0, []
    if at_end:
        last: int | None = len(nodes)
    else:
        found = stable_end(nodes[first:])
        last = None if found is None else first + found
    if last is None or first >= last:
        return len(nodes), 0, []
    promoted = []
    position = first
    while position < last:
        length = group_length(nodes[first:last], position - first)
        promoted.append(node_hash(nodes[position : position + length]))
        position += length
    return first, len(nodes) - last, promoted


@dataclass(frozen=True)
class Subtree:
    """A contiguous run of a file's chunks, partly merged (see the module's docstring).

    ``nodes``: every level's left edge, levels ascending, then every level's right edge,
    levels descending; ``levels``: per level, how many nodes on each edge. ``at_start`` /
    ``at_end``: whether the run begins / ends the file.
    """

    nodes: tuple[Node, ...]
    levels: tuple[tuple[int, int], ...]
    at_start: bool
    at_end: bool

    @classmethod
    def from_chunks(cls, at_start: bool, chunks: Sequence[Node], at_end: bool) -> Subtree:
        """The run of ``chunks`` (hash, size), merged as far as its edges allow."""
        hump = _Hump(at_start, at_end)
        current = list(chunks)
        while True:
            promoted = hump.add_level(current)
            if len(promoted) <= 1:
                hump.add_peak(promoted)
                return hump.subtree()
            current = promoted

    @property
    def size(self) -> int:
        return sum(size for _, size in self.nodes)

    def edges(self, level: int) -> tuple[tuple[Node, ...], tuple[Node, ...]]:
        """The nodes on the left and right edge at ``level`` (none above the peak)."""
        if level >= len(self.levels):
            return (), ()
        left = sum(counts[0] for counts in self.levels[:level])
        right = sum(counts[0] for counts in self.levels) + sum(
            counts[1] for counts in self.levels[level + 1 :]
        )
        left_count, right_count = self.levels[level]
        return self.nodes[left : left + left_count], self.nodes[right : right + right_count]

    def merge(self, other: Subtree) -> Subtree:
        """This run followed by ``other``, the next run of the same file.

        Exact (the result is the run built whole) when this run begins the file, as in a
        proof merged left to right, and ``other`` was built whole. Merging two runs that both
        start mid-file may not be: each level's edges are merged as if adjacent, without the
        nodes above them (xet-core's merge has the same limit)."""
        if self.at_end or other.at_start:
            raise WindowProofError("the subtrees to merge are out of order")
        hump = _Hump(self.at_start, other.at_end)
        carry: list[Node] = []
        for level in range(max(len(self.levels), len(other.levels))):
            own_left, own_right = self.edges(level)
            next_left, next_right = other.edges(level)
            carry = hump.add_level([*own_left, *own_right, *carry, *next_left, *next_right])
        while len(carry) > 1:
            carry = hump.add_level(carry)
        hump.add_peak(carry)
        return hump.subtree(trim=True)

    def final_hash(self) -> bytes:
        """The root of the whole file's tree, once this run is the whole file and closed."""
        if not (self.at_start and self.at_end):
            raise WindowProofError("the merged subtrees do not span the file")
        if not self.nodes:
            return ZERO_HASH
        top = len(self.levels) - 1
        if any(counts != (0, 0) for counts in self.levels[:top]) or self.levels[top] != (1, 0):
            raise WindowProofError("the merged subtrees do not close into one root")
        return self.nodes[0][0]

    def to_json(self) -> dict[str, Any]:
        """The CAS's serialized form (xet-core's ``MerkleHashSubtree`` in JSON)."""
        return {
            "nodes": [{"hash": hash_hex(h), "size": size} for h, size in self.nodes],
            "levels": [list(counts) for counts in self.levels],
            "at_start": self.at_start,
            "at_end": self.at_end,
        }


def subtree_from_json(document: Any, where: str) -> Subtree:
    """A subtree from the CAS; anything malformed is a protocol error naming ``where``."""
    if not isinstance(document, dict):
        raise OriginProtocolError(f"{where}: a gap subtree is not an object")
    nodes, levels = document.get("nodes"), document.get("levels")
    at_start, at_end = document.get("at_start"), document.get("at_end")
    if not isinstance(nodes, list) or not isinstance(levels, list):
        raise OriginProtocolError(f"{where}: a gap subtree lacks nodes or levels")
    if not isinstance(at_start, bool) or not isinstance(at_end, bool):
        raise OriginProtocolError(f"{where}: a gap subtree lacks at_start or at_end")
    if len(nodes) > MAX_SUBTREE_NODES or len(levels) > MAX_SUBTREE_LEVELS:
        raise OriginProtocolError(f"{where}: a gap subtree is too large")
    parsed_nodes = []
    for node in nodes:
        if not isinstance(node, dict):
            raise OriginProtocolError(f"{where}: a gap subtree node is not an object")
        h, size = node.get("hash"), node.get("size")
        if not isinstance(h, str) or not isinstance(size, int) or not _is_count(size):
            raise OriginProtocolError(f"{where}: a gap subtree node lacks a hash or size")
        parsed_nodes.append((hash_from_hex(h), size))
    parsed_levels = []
    for counts in levels:
        if (
            not isinstance(counts, list)
            or len(counts) != 2
            or not all(_is_count(count) for count in counts)
        ):
            raise OriginProtocolError(f"{where}: a gap subtree level is not two counts")
        parsed_levels.append((counts[0], counts[1]))
    if sum(left + right for left, right in parsed_levels) != len(parsed_nodes):
        raise OriginProtocolError(f"{where}: a gap subtree's levels do not count its nodes")
    return Subtree(tuple(parsed_nodes), tuple(parsed_levels), at_start, at_end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Hump:
    """A hump under construction, one level at a time from the chunks up."""

    def __init__(self, at_start: bool, at_end: bool) -> None:
        self.at_start = at_start
        self.at_end = at_end
        self.lefts: list[Sequence[Node]] = []
        self.rights: list[Sequence[Node]] = []
        # A level knows its left (right) end only if nothing below stayed on that edge.
        self.lefts_empty = True
        self.rights_empty = True

    def add_level(self, nodes: Sequence[Node]) -> list[Node]:
        """Place ``nodes`` as the next level; returns what it promotes to the one above."""
        first, last_count, promoted = split_and_promote(
            nodes, self.at_start and self.lefts_empty, self.at_end and self.rights_empty
        )
        self.lefts.append(nodes[:first])
        self.rights.append(nodes[len(nodes) - last_count :])
        self.lefts_empty = self.lefts_empty and first == 0
        self.rights_empty = self.rights_empty and last_count == 0
        return promoted

    def add_peak(self, nodes: Sequence[Node]) -> None:
        if nodes:
            self.lefts.append(nodes)
            self.rights.append(())

    def subtree(self, trim: bool = False) -> Subtree:
        levels = [
            (len(left), len(right)) for left, right in zip(self.lefts, self.rights, strict=True)
        ]
        if trim:
            while len(levels) > 1 and levels[-1] == (0, 0):
                levels.pop()
        flat: list[Node] = []
        for left in self.lefts[: len(levels)]:
            flat += left
        for right in reversed(self.rights[: len(levels)]):
            flat += right
        return Subtree(tuple(flat), tuple(levels), self.at_start, self.at_end)


@dataclass(frozen=True)
class ChunkWindows:
    """A ``file-chunk-hashes`` answer: the windows the CAS chose (chunk-aligned byte ranges
    ``[start, end)``, in file order) and the gap subtrees before, between and after them
    (``None`` for an empty gap)."""

    file_size: int
    windows: tuple[tuple[int, int], ...]
    gaps: tuple[Subtree | None, ...]


def parse_chunk_windows(body: bytes, where: str) -> ChunkWindows:
    """The CAS's answer, checked for shape: windows ordered, inside the file, one gap more."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise OriginProtocolError(f"{where}: the chunk hashes answer is not JSON") from None
    if not isinstance(document, dict):
        raise OriginProtocolError(f"{where}: the chunk hashes answer is not an object")
    file_size, windows, gaps = (
        document.get("fileSize"),
        document.get("windows"),
        document.get("hashRanges"),
    )
    if (
        not isinstance(file_size, int)
        or not _is_count(file_size)
        or not isinstance(windows, list)
        or not isinstance(gaps, list)
    ):
        raise OriginProtocolError(f"{where}: the chunk hashes answer lacks its fields")
    spans = []
    end = 0
    for window in windows:
        span = window.get("dirtyByteRange") if isinstance(window, dict) else None
        if not isinstance(span, list) or len(span) != 2 or not all(map(_is_count, span)):
            raise OriginProtocolError(f"{where}: a window has no byte range")
        if not end <= span[0] < span[1] <= file_size:
            raise OriginProtocolError(f"{where}: windows overlap, are empty or pass the file")
        spans.append((span[0], span[1]))
        end = span[1]
    if len(gaps) != len(spans) + 1:
        raise OriginProtocolError(f"{where}: {len(spans)} windows need {len(spans) + 1} gaps")
    parsed = tuple(None if gap is None else subtree_from_json(gap, where) for gap in gaps)
    return ChunkWindows(file_size, tuple(spans), parsed)


def window_covering(answer: ChunkWindows, start: int, end: int) -> tuple[int, int]:
    """The answer's window holding bytes ``[start, end)``; a CAS that left them out broke
    the protocol."""
    for window in answer.windows:
        if window[0] <= start and end <= window[1]:
            return window
    raise OriginProtocolError(f"no window holds the bytes asked for ({start}-{end})")


def prove_windows(
    answer: ChunkWindows, window_chunks: Sequence[Sequence[Node]], xet_hash: bytes, size: int
) -> None:
    """Raise ``WindowProofError`` unless the windows' chunks (hashed by the reader, in order)
    with the answer's gaps make exactly the file whose hash is ``xet_hash`` and whose size is
    ``size``, each window at its stated place."""
    if answer.file_size != size:
        raise WindowProofError(f"the CAS says the file has {answer.file_size} bytes, not {size}")
    if len(window_chunks) != len(answer.windows):
        raise WindowProofError("a window's chunks are missing")
    runs: list[Subtree | Sequence[Node]] = []
    position = 0
    for (start, end), chunks, gap in zip(
        answer.windows, window_chunks, answer.gaps[:-1], strict=True
    ):
        gap_size = 0 if gap is None else gap.size
        if position + gap_size != start:
            raise WindowProofError(
                f"the gap before bytes {start}-{end} covers {gap_size} bytes, not "
                f"{start - position}"
            )
        chunk_bytes = sum(chunk_size for _, chunk_size in chunks)
        if chunk_bytes != end - start:
            raise WindowProofError(
                f"the chunks of bytes {start}-{end} hold {chunk_bytes} bytes, not {end - start}"
            )
        if gap is not None:
            runs.append(gap)
        runs.append(chunks)
        position = end
    last = answer.gaps[-1]
    if position + (0 if last is None else last.size) != size:
        raise WindowProofError(f"the gaps and windows do not add up to {size} bytes")
    if last is not None:
        runs.append(last)
    merged: Subtree | None = None
    for place, run in enumerate(runs):
        # Every run's edges are fixed by its place; the CAS's flags are not trusted.
        first, final = place == 0, place == len(runs) - 1
        if isinstance(run, Subtree):
            subtree = Subtree(run.nodes, run.levels, first, final)
        else:
            subtree = Subtree.from_chunks(first, run, final)
        merged = subtree if merged is None else merged.merge(subtree)
    assert merged is not None
    actual = file_hash_from_root(merged.final_hash())
    if actual != xet_hash:
        raise WindowProofError(
            f"the file hash from the chunks is {hash_hex(actual)}, the Hub's xetHash is "
            f"{hash_hex(xet_hash)}"
        )
