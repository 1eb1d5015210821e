"""Xet's content hashes: chunk hashes, the Merkle tree over them and the file hash.

The Hub names each Xet file by a Merkle root over its chunks (``xetHash``). Recomputing that
root from chunk hashes and sizes is what lets a reader prove a chunk-aligned window of a file
without reading the rest, which the whole-file sha256 cannot do. The rules follow xet-core
(``xet_core_structures/src/merklehash``), the authority where the public docs are silent: the
grouping below is only written down there.

Hashes are the raw 32 bytes BLAKE3 gives. xet-core keeps them as four native (little-endian)
u64 words and prints each word as 16 hex digits, so the hex form reverses every 8-byte group;
``hash_hex`` and ``hash_from_hex`` are the only places that know this.
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3

from lazyfs.errors import OriginProtocolError

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)

# Keys from xet-core's data_hash.rs. Distinct keys keep a chunk's hash from ever equalling an
# internal node's, so no chunk can pose as a subtree.
CHUNK_KEY = bytes(
    [102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
     157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41]
)  # fmt: skip
INTERNAL_NODE_KEY = bytes(
    [1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
     93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63]
)  # fmt: skip
# A file hash is the root keyed once more; Hub files use no salt, i.e. an all-zero key.
FILE_KEY = ZERO_HASH

# Grouping: a group closes on a child whose hash is 0 mod MEAN_BRANCHING, but never before it
# holds MIN_GROUP children nor after MAX_GROUP, so each level at least halves.
MEAN_BRANCHING = 4
MIN_GROUP = 2
MAX_GROUP = 2 * MEAN_BRANCHING + 1

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

Node = tuple[bytes, int]
"""A tree node: its hash and the number of file bytes below it."""


def chunk_hash(data: bytes | memoryview) -> bytes:
    """The hash of one chunk's uncompressed bytes: a leaf of the file's tree."""
    return blake3.blake3(data, key=CHUNK_KEY).digest()


def hash_hex(h: bytes) -> str:
    """The hex form xet-core prints and the Hub lists (each 8-byte word byte-reversed)."""
    _check_hash(h)
    return "".join(h[i : i + 8][::-1].hex() for i in range(0, HASH_SIZE, 8))


def hash_from_hex(s: str) -> bytes:
    """The raw hash behind a hex form from the Hub or CAS; bad text is a protocol error."""
    # bytes.fromhex alone would skip spaces and give a short hash: check every digit first.
    if len(s) != 2 * HASH_SIZE or not set(s) <= _HEX_DIGITS:
        raise OriginProtocolError(f"not a Xet hash (want 64 hex digits): {s[:80]!r}")
    words = [bytes.fromhex(s[i : i + 16]) for i in range(0, 2 * HASH_SIZE, 16)]
    return b"".join(word[::-1] for word in words)


def node_hash(children: Sequence[Node]) -> Node:
    """An internal node over ``children``: it commits to every child's hash, size and place."""
    text = []
    total = 0
    for h, size in children:
        _check_node(h, size)
        text.append(f"{hash_hex(h)} : {size}\n")
        total += size
    return blake3.blake3("".join(text).encode("ascii"), key=INTERNAL_NODE_KEY).digest(), total


def closes_group(h: bytes) -> bool:
    """Whether a child with this hash may end its group (xet-core reads word 3, little endian)."""
    return int.from_bytes(h[24:32], "little") % MEAN_BRANCHING == 0


def group_length(nodes: Sequence[Node], start: int = 0) -> int:
    """How many of ``nodes``, from ``start``, form the next group of one tree level.

    Up to two nodes left are one group. Otherwise the group ends after the first node at
    index ``MIN_GROUP`` or later that ``closes_group``, and after ``MAX_GROUP`` nodes at most;
    only the level's last group can be shorter than three.
    """
    left = len(nodes) - start
    if left <= MIN_GROUP:
        return left
    limit = min(MAX_GROUP, left)
    for index in range(MIN_GROUP, limit):
        if closes_group(nodes[start + index][0]):
            return index + 1
    return limit


def groups(nodes: Sequence[Node]) -> list[Sequence[Node]]:
    """One tree level cut into the groups that become the next level's nodes."""
    cut = []
    start = 0
    while start < len(nodes):
        length = group_length(nodes, start)
        cut.append(nodes[start : start + length])
        start += length
    return cut


def merkle_root(chunks: Sequence[Node]) -> bytes:
    """The root over the chunks' (hash, size), in file order; xet-core's ``xorb_hash``.

    One chunk is its own root; no chunks give the all-zero hash, as in xet-core.
    """
    if not chunks:
        return ZERO_HASH
    for h, size in chunks:
        _check_node(h, size)
    level: Sequence[Node] = chunks
    while len(level) > 1:
        level = [node_hash(group) for group in groups(level)]
    return level[0][0]


def file_hash(chunks: Sequence[Node]) -> bytes:
    """The file's ``xetHash``: its root keyed with the zero salt; an empty file is all zeros."""
    if not chunks:
        return ZERO_HASH
    return file_hash_from_root(merkle_root(chunks))


def file_hash_from_root(root: bytes) -> bytes:
    """The file hash of a non-empty file whose tree has root ``root``."""
    _check_hash(root)
    return blake3.blake3(root, key=FILE_KEY).digest()


def _check_hash(h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise OriginProtocolError(f"a Xet hash has {HASH_SIZE} bytes, not {len(h)}")


def _check_node(h: bytes, size: int) -> None:
    _check_hash(h)
    if size < 0:
        raise OriginProtocolError(f"a Xet chunk or node cannot have a negative size ({size})")
