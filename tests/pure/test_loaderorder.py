"""The order loaders take a model's tensors in, how far ahead of them to fetch, and the shards a
``*.safetensors.index.json`` names."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.loaderorder import (
    ENTERED_BYTES,
    SLACK,
    VISITS_REMEMBERED,
    LoaderCursor,
    LoaderOrder,
    PlacedTensor,
    TensorVisits,
    index_shards,
)
from lazyfs.core.tensormap import Tensor, TensorMap

MIB = 1024 * 1024


def tensor_map(*names: str) -> TensorMap:
    """A file of ``names``, in this order, 10 bytes each after a 100-byte header."""
    return TensorMap(
        100,
        tuple(Tensor(name, 100 + 10 * index, 110 + 10 * index) for index, name in enumerate(names)),
    )


FIRST = tensor_map("model.layers.0.w", "model.layers.10.w", "model.layers.2.w", "lm_head.w")
SECOND = tensor_map("model.layers.1.w", "model.embed.w", "model.layers.11.w")
ONE, TWO = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
MODEL = {ONE: FIRST, TWO: SECOND}


def test_shards_interleave_in_natural_name_order() -> None:
    order = LoaderOrder(MODEL)
    assert [(item.path, item.tensor.name) for item in order.tensors] == [
        (ONE, "lm_head.w"),
        (TWO, "model.embed.w"),
        (ONE, "model.layers.0.w"),
        (TWO, "model.layers.1.w"),
        (ONE, "model.layers.2.w"),
        (ONE, "model.layers.10.w"),
        (TWO, "model.layers.11.w"),
    ]
    assert len(order) == 7
    assert order.paths == frozenset(MODEL)
    for rank, item in enumerate(order.tensors):
        assert order.rank(item.path, item.tensor) == rank


def test_a_tensor_of_no_shard_has_no_rank() -> None:
    order = LoaderOrder(MODEL)
    assert order.rank("model-00003.safetensors", FIRST.tensors[0]) is None
    assert order.rank(ONE, Tensor("x", 5, 6)) is None


def test_following_gives_the_tensors_after_a_rank() -> None:
    order = LoaderOrder(MODEL)
    rank = order.rank(TWO, SECOND.tensors[0])  # model.layers.1.w
    assert rank == 3
    assert [item.tensor.name for item in order.following(rank)] == [
        "model.layers.2.w",
        "model.layers.10.w",
        "model.layers.11.w",
    ]
    assert list(order.following(len(order) - 1)) == []
    assert list(order.following(-1)) == list(order.tensors)


def test_a_name_in_two_shards_comes_first_from_the_first_path() -> None:
    order = LoaderOrder({"b.safetensors": tensor_map("w"), "a.safetensors": tensor_map("w")})
    assert order.tensors == (
        PlacedTensor("a.safetensors", Tensor("w", 100, 110)),
        PlacedTensor("b.safetensors", Tensor("w", 100, 110)),
    )


def test_no_maps_make_an_empty_order() -> None:
    order = LoaderOrder({})
    assert len(order) == 0
    assert list(order.following(-1)) == []


# --- the cursor ----------------------------------------------------------------------------


def windows(ranks: list[int], max_window: int = 64) -> list[int]:
    cursor = LoaderCursor()
    return [cursor.record(rank, max_window) for rank in ranks]


def test_a_first_read_fetches_nothing_ahead() -> None:
    assert windows([0]) == [0]
    assert windows([500]) == [0]


def test_reads_in_order_double_the_window_up_to_the_most() -> None:
    assert windows(list(range(10)), max_window=64) == [0, 1, 2, 4, 8, 16, 32, 64, 64, 64]
    assert windows(list(range(6)), max_window=5) == [0, 1, 2, 4, 5, 5]
    assert windows([0, 1, 2], max_window=0) == [0, 0, 0]


def test_reads_that_skip_a_few_tensors_are_still_in_order() -> None:
    assert windows([0, 3, 3 + SLACK, 3 + 2 * SLACK]) == [0, 1, 2, 4]


def test_a_jump_starts_again() -> None:
    assert windows([0, 1, 2, 3, 4 + SLACK, 5 + SLACK, 6 + SLACK]) == [0, 1, 2, 4, 0, 1, 2]
    # Back by more than SLACK: another pass, or another file of the model.
    assert windows([100, 101, 102, 103, 103 - SLACK - 1, 103 - SLACK]) == [0, 1, 2, 4, 0, 1]


def test_reads_just_behind_the_furthest_keep_the_window() -> None:
    cursor = LoaderCursor()
    assert [cursor.record(rank, 64) for rank in (10, 11, 12, 13)] == [0, 1, 2, 4]
    # Other loader threads, a few tensors behind: in order, but nothing new read ahead.
    assert [cursor.record(rank, 64) for rank in (12, 13 - SLACK, 11, 13)] == [4, 4, 4, 4]
    assert cursor.furthest == 13
    assert cursor.record(14, 64) == 8


def test_reading_one_tensor_again_and_again_does_not_grow_the_window() -> None:
    assert windows([7] * 10) == [0] * 10
    assert windows([7, 8] + [8] * 10) == [0] + [1] * 11


@given(st.lists(st.integers(0, 200), max_size=60), st.integers(0, 100))
def test_the_window_is_never_more_than_the_most(ranks: list[int], max_window: int) -> None:
    cursor = LoaderCursor()
    for rank in ranks:
        window = cursor.record(rank, max_window)
        assert window == 0 or window == max_window or window & (window - 1) == 0
        assert 0 <= window <= max_window
        # The furthest read moves to this one, or this one is just behind it.
        assert cursor.furthest == rank or 0 < cursor.furthest - rank <= SLACK


# --- index files ---------------------------------------------------------------------------


def index(weight_map: object) -> bytes:
    return json.dumps({"metadata": {"total_size": 40}, "weight_map": weight_map}).encode()


def test_an_index_names_its_shards_beside_it() -> None:
    document = index(
        {
            "model.layers.0.w": "model-00002-of-00002.safetensors",
            "model.layers.1.w": "model-00001-of-00002.safetensors",
            "lm_head.w": "model-00002-of-00002.safetensors",
        }
    )
    assert index_shards("org/repo/model.safetensors.index.json", document) == [
        "org/repo/model-00001-of-00002.safetensors",
        "org/repo/model-00002-of-00002.safetensors",
    ]
    assert index_shards("model.safetensors.index.json", document) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_shards_in_a_subdirectory_and_numbered_shards_sort_naturally() -> None:
    document = index({"a": "parts/shard-10.safetensors", "b": "parts/shard-9.safetensors"})
    assert index_shards("m/x.safetensors.index.json", document) == [
        "m/parts/shard-9.safetensors",
        "m/parts/shard-10.safetensors",
    ]


def test_shards_whose_numbers_are_equal_come_in_one_order() -> None:
    """``shard-01`` and ``shard-1`` have one key: the order must not come from a set."""
    names = [f"shard-{'0' * zeros}1.safetensors" for zeros in range(8)]
    expected = sorted(names)
    for seed in range(3):
        random.Random(seed).shuffle(names)
        document = index({f"w{index}": name for index, name in enumerate(names)})
        assert index_shards("x.safetensors.index.json", document) == expected


@pytest.mark.parametrize(
    "shard",
    ["../x.safetensors", "a/../../x", "/abs.safetensors", "a//b", "", ".", "a/./b", "a/", 3, None],
)
def test_an_index_naming_a_file_outside_its_directory_gives_no_shards(shard: object) -> None:
    document = index({"a": "model-00001.safetensors", "b": shard})
    assert index_shards("repo/model.safetensors.index.json", document) is None


@pytest.mark.parametrize(
    "document",
    [
        b"{not json",
        b"\xff\xfe{",
        b"[1]",
        b'"weight_map"',
        b"{}",
        b'{"weight_map": ["a.safetensors"]}',
        b'{"weight_map": "a.safetensors"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=lambda document: repr(document[:24]),
)
def test_what_is_no_index_gives_no_shards(document: bytes) -> None:
    assert index_shards("model.safetensors.index.json", document) is None


def test_an_index_of_no_weights_names_no_shards() -> None:
    assert index_shards("model.safetensors.index.json", index({})) == []


def test_a_tensor_is_entered_once_more_than_kernel_read_ahead_of_it_is_read() -> None:
    visits = TensorVisits()
    big, small = ("a", 0), ("b", 0)
    # Three kernel read-ahead windows into a large tensor are not a loader in it...
    for _ in range(3):
        assert not visits.read(big, 100 * MIB, MIB)
    assert not visits.entered(big)
    # ...a fourth and a page more is, once.
    assert visits.read(big, 100 * MIB, ENTERED_BYTES - 3 * MIB)
    assert visits.entered(big)
    assert not visits.read(big, 100 * MIB, MIB)
    # A smaller tensor: all of it.
    assert not visits.read(small, 1000, 999)
    assert visits.read(small, 1000, 1)


def test_visits_forget_the_oldest_tensors_beyond_their_bound() -> None:
    visits = TensorVisits()
    for number in range(VISITS_REMEMBERED + 1):
        visits.read(number, 1000, 10)
    # Tensor 0 was forgotten: its 10 bytes no longer count towards all of it.
    assert not visits.read(0, 1000, 990)
    assert visits.read(VISITS_REMEMBERED, 1000, 990)
