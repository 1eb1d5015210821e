"""Proving windows of a Xet file: subtrees of any split merge to the plain Merkle root, and
any change to a hash, a size or the order fails the proof."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.core.xethash import Node, chunk_hash, file_hash, merkle_root
from lazyfs.core.xetproof import (
    ChunkWindows,
    Subtree,
    WindowProofError,
    parse_chunk_windows,
    prove_windows,
    subtree_from_json,
    window_covering,
)
from lazyfs.errors import OriginProtocolError


def make_chunks(seed: int, count: int) -> list[Node]:
    return [
        (chunk_hash(b"%d/%d" % (seed, index)), 1 + (seed * 7919 + index * 104729) % 131072)
        for index in range(count)
    ]


chunk_lists = st.builds(make_chunks, st.integers(0, 10**6), st.integers(1, 400))


def answer_for(chunks: list[Node], cuts: list[int]) -> tuple[ChunkWindows, list[list[Node]]]:
    """The answer an honest CAS gives for windows over chunks ``[cuts[0], cuts[1])``,
    ``[cuts[2], cuts[3])``...: gaps built as subtrees, serialized and parsed back."""
    offsets = [0]
    for _, size in chunks:
        offsets.append(offsets[-1] + size)
    bounds = [0, *cuts, len(chunks)]
    gaps = []
    for place in range(0, len(bounds), 2):
        low, high = bounds[place], bounds[place + 1]
        gap = Subtree.from_chunks(low == 0, chunks[low:high], high == len(chunks))
        gaps.append(None if not gap.nodes else gap.to_json())
    windows = [
        {"dirtyByteRange": [offsets[cuts[k]], offsets[cuts[k + 1]]]} for k in range(0, len(cuts), 2)
    ]
    body = json.dumps(
        {"totalChunks": len(chunks), "fileSize": offsets[-1], "windows": windows,
         "hashRanges": gaps, "gapVerification": []}
    ).encode()  # fmt: skip
    window_chunks = [chunks[cuts[k] : cuts[k + 1]] for k in range(0, len(cuts), 2)]
    return parse_chunk_windows(body, "test"), window_chunks


def cut_points(draw: st.DrawFn, count: int) -> list[int]:
    windows = draw(st.integers(1, 3))
    points = sorted(
        draw(st.lists(st.integers(0, count), min_size=2 * windows, max_size=2 * windows))
    )
    # Windows are non-empty: drop pairs that collapse.
    cuts = []
    for k in range(0, len(points), 2):
        if points[k] < points[k + 1] and (not cuts or cuts[-1] <= points[k]):
            cuts += [points[k], points[k + 1]]
    return cuts or [0, count]


@st.composite
def split_files(draw: st.DrawFn) -> tuple[list[Node], list[int]]:
    chunks = draw(chunk_lists)
    return chunks, cut_points(draw, len(chunks))


@settings(max_examples=80, deadline=None)
@given(chunk_lists)
def test_a_whole_run_closes_to_the_plain_root(chunks: list[Node]) -> None:
    assert Subtree.from_chunks(True, chunks, True).final_hash() == merkle_root(chunks)


@settings(max_examples=80, deadline=None)
@given(chunk_lists, st.data())
def test_any_split_merges_to_the_plain_root(chunks: list[Node], data: st.DataObject) -> None:
    cuts = (
        sorted(data.draw(st.lists(st.integers(1, len(chunks) - 1), max_size=4, unique=True)))
        if len(chunks) > 1
        else []
    )
    bounds = [0, *cuts, len(chunks)]
    runs = [
        Subtree.from_chunks(low == 0, chunks[low:high], high == len(chunks))
        for low, high in itertools.pairwise(bounds)
    ]
    merged = runs[0]
    for run in runs[1:]:
        merged = merged.merge(run)
    assert merged.final_hash() == merkle_root(chunks)
    assert merged.size == sum(size for _, size in chunks)


@settings(max_examples=80, deadline=None)
@given(split_files())
def test_an_honest_answer_proves_its_windows(case: tuple[list[Node], list[int]]) -> None:
    chunks, cuts = case
    answer, window_chunks = answer_for(chunks, cuts)
    size = sum(s for _, s in chunks)
    prove_windows(answer, window_chunks, file_hash(chunks), size)
    start, end = answer.windows[0]
    assert window_covering(answer, start, end) == (start, end)


@settings(max_examples=60, deadline=None)
@given(split_files(), st.data())
def test_any_change_to_a_window_chunk_fails(
    case: tuple[list[Node], list[int]], data: st.DataObject
) -> None:
    chunks, cuts = case
    answer, window_chunks = answer_for(chunks, cuts)
    size = sum(s for _, s in chunks)
    which = data.draw(st.integers(0, len(window_chunks) - 1))
    run = list(window_chunks[which])
    position = data.draw(st.integers(0, len(run) - 1))
    change = data.draw(st.sampled_from(["hash", "size", "order"]))
    h, chunk_size = run[position]
    if change == "hash":
        run[position] = (chunk_hash(h), chunk_size)
    elif change == "size":
        # Moved between two chunks so the window's length still adds up.
        if len(run) == 1:
            run[position] = (h, chunk_size + 1)
        else:
            other = (position + 1) % len(run)
            run[position] = (h, chunk_size + 1)
            run[other] = (run[other][0], run[other][1] - 1)
    else:
        if len(run) == 1 or run[0] == run[-1]:
            run[position] = (chunk_hash(h), chunk_size)
        else:
            run[0], run[-1] = run[-1], run[0]
    window_chunks[which] = run
    with pytest.raises(WindowProofError):
        prove_windows(answer, window_chunks, file_hash(chunks), size)


@settings(max_examples=60, deadline=None)
@given(split_files(), st.data())
def test_a_forged_gap_fails(case: tuple[list[Node], list[int]], data: st.DataObject) -> None:
    chunks, cuts = case
    answer, window_chunks = answer_for(chunks, cuts)
    present = [k for k, gap in enumerate(answer.gaps) if gap is not None]
    if not present:
        return
    which = data.draw(st.sampled_from(present))
    gap = answer.gaps[which]
    assert gap is not None
    nodes = list(gap.nodes)
    position = data.draw(st.integers(0, len(nodes) - 1))
    h, node_size = nodes[position]
    if data.draw(st.booleans()):
        nodes[position] = (chunk_hash(h), node_size)
    elif len(nodes) > 1:
        other = (position + 1) % len(nodes)
        nodes[position] = (h, node_size + 1)
        nodes[other] = (nodes[other][0], nodes[other][1] - 1)
    else:
        nodes[position] = (h, node_size + 1)
    forged = Subtree(tuple(nodes), gap.levels, gap.at_start, gap.at_end)
    gaps = tuple(forged if k == which else g for k, g in enumerate(answer.gaps))
    forged_answer = ChunkWindows(answer.file_size, answer.windows, gaps)
    with pytest.raises(WindowProofError):
        prove_windows(forged_answer, window_chunks, file_hash(chunks), sum(s for _, s in chunks))


def test_a_window_placed_elsewhere_fails() -> None:
    chunks = make_chunks(7, 120)
    answer, window_chunks = answer_for(chunks, [40, 60])
    start, end = answer.windows[0]
    shifted = ChunkWindows(answer.file_size, ((start + 1, end + 1),), answer.gaps)
    with pytest.raises(WindowProofError):
        prove_windows(shifted, window_chunks, file_hash(chunks), answer.file_size)
    with pytest.raises(WindowProofError):
        prove_windows(answer, window_chunks, file_hash(chunks), answer.file_size + 1)


def test_a_root_that_does_not_close_is_refused() -> None:
    chunks = make_chunks(3, 200)
    open_run = Subtree.from_chunks(True, chunks[:150], False)
    # Claiming the open run ends the file must not let its peak pose as the root.
    claimed = Subtree(open_run.nodes, open_run.levels, True, True)
    with pytest.raises(WindowProofError):
        claimed.final_hash()


def test_subtrees_round_trip_through_json() -> None:
    run = Subtree.from_chunks(False, make_chunks(11, 300), False)
    assert subtree_from_json(json.loads(json.dumps(run.to_json())), "test") == run


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"nodes": [], "levels": [], "at_start": True},
        {
            "nodes": [{"hash": "00" * 32, "size": -1}],
            "levels": [[1, 0]],
            "at_start": True,
            "at_end": False,
        },
        {
            "nodes": [{"hash": "zz" * 32, "size": 1}],
            "levels": [[1, 0]],
            "at_start": True,
            "at_end": False,
        },
        {
            "nodes": [{"hash": "00" * 32, "size": 1}],
            "levels": [[2, 0]],
            "at_start": True,
            "at_end": False,
        },
        {"nodes": [], "levels": [[0]], "at_start": True, "at_end": False},
    ],
)
def test_malformed_subtrees_are_protocol_errors(document: object) -> None:
    with pytest.raises(OriginProtocolError):
        subtree_from_json(document, "test")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"fileSize": 10, "windows": [{"dirtyByteRange": [0, 11]}], "hashRanges": [null, null]}',
        b'{"fileSize": 10, "windows": [{"dirtyByteRange": [5, 5]}], "hashRanges": [null, null]}',
        b'{"fileSize": 10, "windows": [{"dirtyByteRange": [0, 5]}], "hashRanges": [null]}',
        b'{"fileSize": 10, "windows": [{"dirtyByteRange": [4, 8]}, {"dirtyByteRange": [6, 9]}],'
        b' "hashRanges": [null, null, null]}',
    ],
)
def test_malformed_answers_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(OriginProtocolError):
        parse_chunk_windows(body, "test")


def test_a_gap_subtree_with_more_levels_than_a_tree_can_have_is_refused_at_once() -> None:
    """A hump's merge costs the square of its levels: 50,000 empty ones held a read for
    minutes."""
    gap = {"nodes": [], "levels": [[0, 0]] * 50_000, "at_start": True, "at_end": False}
    with pytest.raises(OriginProtocolError, match="too large"):
        subtree_from_json(gap, "test")
