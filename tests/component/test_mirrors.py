"""The order sources are tried in, and a reader failing over between them (in memory)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.cache.store import BlockStore
from lazyfs.core.attempts import AttemptLimits
from lazyfs.core.rotation import SourceRotation
from lazyfs.errors import BlockIntegrityError, SourceError
from lazyfs.read.reader import BlockReader
from tests.component.test_reader import BS, DATA, ENTRY, FakeSource


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failed_sources_go_last_until_their_penalty_ends() -> None:
    clock = Clock()
    rotation = SourceRotation(["primary", "a", "b"], penalty=30, clock=clock)
    assert rotation.order() == ["primary", "a", "b"]
    rotation.failed("primary")
    assert rotation.order() == ["a", "b", "primary"]
    clock.now += 10
    rotation.failed("a")
    assert rotation.order() == ["b", "primary", "a"]
    clock.now += 25
    assert rotation.order() == ["primary", "b", "a"]
    clock.now += 10
    assert rotation.order() == ["primary", "a", "b"]


@given(st.integers(1, 6), st.sets(st.integers(0, 5)))
def test_the_order_keeps_every_source_healthy_ones_first(count: int, failed: set[int]) -> None:
    sources = [f"s{i}" for i in range(count)]
    rotation = SourceRotation(sources, clock=lambda: 0.0)
    for i in failed & set(range(count)):
        rotation.failed(sources[i])
    order = rotation.order()
    assert sorted(order) == sorted(sources)
    benched = [source for source in order if int(source[1:]) in failed]
    assert order == [s for s in sources if s not in benched] + benched


def reader_with(sources: list[FakeSource], tmp_path: Path, attempts: int) -> BlockReader:
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    limits = AttemptLimits(attempts=attempts)
    return BlockReader(sources[0], store, BS, mirrors=sources[1:], limits=limits)


def test_reader_fails_over_on_errors_and_bad_copies(tmp_path: Path) -> None:
    failing, corrupt, good = (FakeSource({ENTRY.path: DATA}) for _ in range(3))
    failing.errors[(ENTRY.path, 1)] = SourceError("HTTP 503")
    corrupt.corrupt_always.add((ENTRY.path, 1))
    reader = reader_with([failing, corrupt, good], tmp_path, attempts=2)
    assert bytes(trio.run(reader.read, ENTRY, BS, 10)) == DATA[BS : BS + 10]
    assert failing.calls and corrupt.calls and good.calls
    assert reader.counters.verification_failures == 1
    # Each bad source was tried once for the block, and both are benched: the next block
    # goes to the good one first.
    assert failing.calls == [(ENTRY.path, 1)] and corrupt.calls == [(ENTRY.path, 1)]
    assert bytes(trio.run(reader.read, ENTRY, 2 * BS, 10)) == DATA[2 * BS : 2 * BS + 10]
    assert good.calls[-1] == (ENTRY.path, 2)
    assert (ENTRY.path, 2) not in failing.calls + corrupt.calls


def test_a_bad_copy_is_asked_for_again_and_benched_only_if_that_is_bad_too(
    tmp_path: Path,
) -> None:
    stale, corrupt, good = (FakeSource({ENTRY.path: DATA}) for _ in range(3))
    stale.corrupt_once.add((ENTRY.path, 0))  # repaired by asking again
    corrupt.corrupt_always.add((ENTRY.path, 1))
    reader = reader_with([stale, good], tmp_path, attempts=4)
    assert bytes(trio.run(reader.read, ENTRY, 0, 10)) == DATA[:10]
    assert stale.calls == [(ENTRY.path, 0)] * 2 and stale.uncached == [(ENTRY.path, 0)]
    assert bytes(trio.run(reader.read, ENTRY, BS, 10)) == DATA[BS : BS + 10]
    assert stale.calls[-1] == (ENTRY.path, 1) and not good.calls  # still first

    reader = reader_with([corrupt, good], tmp_path / "2", attempts=4)
    assert bytes(trio.run(reader.read, ENTRY, BS, 10)) == DATA[BS : BS + 10]
    assert corrupt.calls == [(ENTRY.path, 1)] * 2 and corrupt.uncached == [(ENTRY.path, 1)]
    assert reader.counters.verification_failures == 2
    # Its re-ask was bad too: benched, the next block goes to the good source first.
    assert bytes(trio.run(reader.read, ENTRY, 2 * BS, 10)) == DATA[2 * BS : 2 * BS + 10]
    assert (ENTRY.path, 2) not in corrupt.calls


def test_reader_with_every_copy_bad_names_every_source(tmp_path: Path) -> None:
    sources = [FakeSource({ENTRY.path: DATA}) for _ in range(2)]
    for source in sources:
        source.corrupt_always.add((ENTRY.path, 0))
    sources[1].url_for = lambda path: f"http://mirror.test/{path}"  # type: ignore[method-assign]
    reader = reader_with(sources, tmp_path, attempts=3)
    with pytest.raises(BlockIntegrityError) as raised:
        trio.run(reader.read, ENTRY, 0, 10)
    assert "http://origin.test/repo/" in str(raised.value)
    assert "http://mirror.test/" in str(raised.value)
    assert "after 3 fetches" in str(raised.value)


def test_a_hung_source_gets_only_its_share_of_the_deadline(tmp_path: Path) -> None:
    hung, good = (FakeSource({ENTRY.path: DATA}) for _ in range(2))
    hung.gate_all = trio.Event()  # never set: accepts, never answers
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    limits = AttemptLimits(attempts=2, deadline=2.0)
    reader = BlockReader(hung, store, BS, mirrors=[good], limits=limits)

    async def main() -> bytes:
        with trio.fail_after(10):
            return bytes(await reader.read(ENTRY, 0, 10))

    assert trio.run(main) == DATA[:10]
    assert hung.calls == [(ENTRY.path, 0)] and good.calls == [(ENTRY.path, 0)]
    # Benched now: the next block is asked of the good source first.
    assert trio.run(main) == DATA[:10]
    assert bytes(trio.run(reader.read, ENTRY, BS, 10)) == DATA[BS : BS + 10]
    assert hung.calls == [(ENTRY.path, 0)]


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(0, 1000))
def test_a_tiers_members_share_blocks_and_a_change_moves_only_its_own(
    members: int, seed: int
) -> None:
    names = [f"http://cache{n}.{seed}/repo" for n in range(members)]
    keys = [f"{seed}-{n}" for n in range(600)]

    def first_choice(labels: list[str]) -> dict[str, str]:
        rotation = SourceRotation(
            [*labels, "origin"], tiers=[1] * len(labels) + [0], labels=[*labels, "origin"]
        )
        chosen = {}
        for key in keys:
            order = rotation.order(key)
            # Every member once, the tier before the origin.
            assert sorted(order[:-1]) == sorted(labels) and order[-1] == "origin"
            chosen[key] = order[0]
        return chosen

    before = first_choice(names)
    counts = Counter(before.values())
    assert all(abs(counts[name] - len(keys) / members) < len(keys) / members / 2 for name in names)
    # One member leaves: only the blocks it ranked first move.
    after = first_choice(names[1:])
    assert {key for key in keys if before[key] != after[key]} == {
        key for key in keys if before[key] == names[0]
    }
