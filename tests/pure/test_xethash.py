"""Xet hashing: xet-core's own reference vectors, and the properties a proof over a window of a
file leans on (the root commits to every chunk hash, size and their order)."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.xethash import (
    MAX_GROUP,
    ZERO_HASH,
    Node,
    chunk_hash,
    closes_group,
    file_hash,
    groups,
    hash_from_hex,
    hash_hex,
    merkle_root,
    node_hash,
)
from lazyfs.errors import OriginProtocolError

# The reference list of xet-core's test_correctness in
# xet_core_structures/src/merklehash/aggregated_hashes.rs (huggingface/xet-core), as data:
# chunk (hash, size) lists, their xorb hash (our merkle_root) and file hashes under three salts.
VECTORS = json.loads(
    (Path(__file__).parent.parent / "support" / "xet_merkle_vectors.json").read_text()
)["cases"]

hashes = st.binary(min_size=32, max_size=32)
sizes = st.integers(0, 2**40)
nodes = st.tuples(hashes, sizes)
chunk_lists = st.lists(nodes, min_size=2, max_size=120)


def _chunks(case: dict[str, object]) -> list[Node]:
    return [(hash_from_hex(h), size) for h, size in case["chunks"]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", VECTORS, ids=lambda case: f"{len(case['chunks'])}-chunks")
def test_the_root_equals_xet_cores_xorb_hash(case: dict[str, object]) -> None:
    assert hash_hex(merkle_root(_chunks(case))) == case["root"]


@pytest.mark.parametrize("case", VECTORS, ids=lambda case: f"{len(case['chunks'])}-chunks")
def test_the_file_hash_equals_xet_cores(case: dict[str, object]) -> None:
    chunks = _chunks(case)
    salted = dict(case["salted_file_hashes"])  # type: ignore[call-overload]
    assert hash_hex(file_hash(chunks)) == salted["0" * 64]
    # The salted variants pin the last step (a keyed BLAKE3 of the root) apart from its key.
    for salt, expected in salted.items():
        if chunks:  # xet-core gives an empty file the zero hash whatever the salt
            keyed = blake3.blake3(merkle_root(chunks), key=hash_from_hex(salt)).digest()
            assert hash_hex(keyed) == expected


def test_the_vectors_cover_many_levels_and_the_empty_list() -> None:
    lengths = {len(case["chunks"]) for case in VECTORS}
    assert 0 in lengths and 1 in lengths and max(lengths) >= 100


def test_hex_is_four_little_endian_words() -> None:
    # xet-core data_hash.rs, test_hash_hex_string_endianness.
    raw = bytes(
        [22, 175, 58, 132, 4, 75, 131, 214, 190, 153, 138, 66, 226, 3, 153, 242,
         204, 86, 80, 234, 249, 153, 80, 99, 159, 80, 65, 138, 236, 231, 149, 78]
    )  # fmt: skip
    text = "d6834b04843aaf16f29903e2428a99be635099f9ea5056cc4e95e7ec8a41509f"
    assert hash_hex(raw) == text
    assert hash_from_hex(text) == raw


def test_a_small_files_hash_equals_hf_xets() -> None:
    # hf_xet 1.8.0 `hash_files` on an 11-byte file "hello world" (a single chunk).
    data = b"hello world"
    expected = "f15edd43b7e85cfd25e2758ffe13b99fdd09dfa817e8d9f6548722a7a126db7f"
    assert hash_hex(file_hash([(chunk_hash(data), len(data))])) == expected


def test_no_chunks_give_the_zero_root_and_the_zero_file_hash() -> None:
    assert merkle_root([]) == ZERO_HASH
    assert file_hash([]) == ZERO_HASH


@given(nodes)
def test_one_chunk_is_its_own_root(chunk: Node) -> None:
    assert merkle_root([chunk]) == chunk[0]
    assert groups([chunk]) == [[chunk]]


@given(hashes)
def test_hex_round_trips(h: bytes) -> None:
    text = hash_hex(h)
    assert len(text) == 64 and text == text.lower()
    assert hash_from_hex(text) == h
    assert hash_from_hex(text.upper()) == h


@pytest.mark.parametrize(
    "text", ["", "ab", "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63, "0" * 10 + " 00 00" + "0" * 48]
)
def test_bad_hex_is_a_protocol_error(text: str) -> None:
    with pytest.raises(OriginProtocolError, match="not a Xet hash"):
        hash_from_hex(text)


def test_bad_nodes_are_protocol_errors() -> None:
    with pytest.raises(OriginProtocolError, match="32 bytes"):
        merkle_root([(b"short", 1), (ZERO_HASH, 1)])
    with pytest.raises(OriginProtocolError, match="negative size"):
        merkle_root([(ZERO_HASH, -1), (ZERO_HASH, 1)])


@given(chunk_lists)
def test_groups_keep_order_and_bounds(level: list[Node]) -> None:
    cut = groups(level)
    assert [node for group in cut for node in group] == level
    for position, group in enumerate(cut):
        assert 1 <= len(group) <= MAX_GROUP
        last = position == len(cut) - 1
        if not last:
            # Only the level's last group may be shorter than three.
            assert len(group) >= 3
            # A group ends early only on a child that may close it, and never before index 2.
            if len(group) < MAX_GROUP:
                assert closes_group(group[-1][0])
            assert not any(closes_group(h) for h, _ in group[2:-1])
        else:
            assert len(group) <= 2 or not any(closes_group(h) for h, _ in group[2:-1])


@given(chunk_lists)
def test_each_level_at_least_halves(level: list[Node]) -> None:
    # Groups of three or more, but for the last: the tree has logarithmic depth.
    assert len(groups(level)) <= len(level) // 2 + 1


@given(chunk_lists, st.data())
def test_the_root_changes_with_any_chunk_hash(level: list[Node], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(level) - 1))
    other = data.draw(hashes.filter(lambda h: h != level[index][0]))
    changed = [*level]
    changed[index] = (other, level[index][1])
    assert merkle_root(changed) != merkle_root(level)


@given(chunk_lists, st.data())
def test_the_root_changes_with_any_chunk_size(level: list[Node], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(level) - 1))
    other = data.draw(sizes.filter(lambda s: s != level[index][1]))
    changed = [*level]
    changed[index] = (level[index][0], other)
    assert merkle_root(changed) != merkle_root(level)


@given(chunk_lists, st.data())
def test_the_root_changes_with_the_order(level: list[Node], data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(len(level))))
    shuffled = [level[i] for i in order]
    if shuffled != level:
        assert merkle_root(shuffled) != merkle_root(level)


@given(chunk_lists, st.data())
def test_the_root_changes_when_a_chunk_is_dropped(level: list[Node], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(level) - 1))
    assert merkle_root(level[:index] + level[index + 1 :]) != merkle_root(level)


@given(st.lists(nodes, min_size=0, max_size=MAX_GROUP + 3))
def test_a_node_carries_the_sum_of_its_childrens_sizes(children: list[Node]) -> None:
    assert node_hash(children)[1] == sum(size for _, size in children)


@given(st.binary(max_size=2048), st.binary(max_size=2048))
def test_chunk_hashes_differ_for_different_bytes(a: bytes, b: bytes) -> None:
    assert (chunk_hash(a) == chunk_hash(b)) == (a == b)
