"""The mount-wide read-ahead budget, sans-I/O: never exceeded, fair between open files, and
every grant released on each way a block can end (read, failed, dropped, expired)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.aheadbudget import ReadAheadBudget

MIB = 1024 * 1024


def test_a_take_that_does_not_fit_is_refused_not_queued() -> None:
    budget = ReadAheadBudget(3 * MIB)
    assert budget.take("a", "k0", 0, MIB)
    assert budget.take("a", "k1", 1, MIB)
    assert budget.take("a", "k2", 2, MIB)
    assert not budget.take("a", "k3", 3, MIB)
    budget.release("k0")  # a reader took block 0
    assert budget.take("a", "k3", 3, MIB)
    assert budget.used == 3 * MIB and budget.peak == 3 * MIB


def test_one_fast_reader_leaves_room_for_another() -> None:
    budget = ReadAheadBudget(8 * MIB)
    assert budget.take("fast", "f0", 0, MIB)
    assert budget.take("slow", "s0", 0, MIB)
    taken = sum(budget.take("fast", f"f{index}", index, MIB) for index in range(1, 20))
    assert budget.owned("fast") == 4 * MIB, "an equal share of two, no more"
    assert taken == 3
    assert budget.take("slow", "s1", 1, MIB)


def test_a_block_that_arrives_after_its_reader_left_is_dropped_and_released() -> None:
    budget = ReadAheadBudget(4 * MIB)
    assert budget.take("a", "k5", 5, MIB)
    assert budget.take("a", "k6", 6, MIB)
    assert budget.fetched("k5", now=0.0)
    # The reader jumped back to block 0: block 5, fetched, goes now; block 6 when it arrives.
    assert budget.outside("a", 0, 2) == ["k5"]
    assert budget.used == MIB
    assert not budget.fetched("k6", now=1.0)
    assert budget.used == 0 and "k6" not in budget


def test_closing_the_file_and_time_release_unread_blocks() -> None:
    budget = ReadAheadBudget(4 * MIB, hold_seconds=10)
    assert budget.take("a", "k1", 1, MIB) and budget.fetched("k1", now=0.0)
    assert budget.take("b", "k2", 2, MIB) and budget.fetched("k2", now=5.0)
    assert budget.expire(now=10.0) == []
    assert budget.expire(now=10.5) == ["k1"]
    assert budget.forget("b") == ["k2"]
    assert budget.used == 0


OWNERS = st.sampled_from(["a", "b", "c", "d"])
KEYS = st.integers(0, 11).map(lambda n: f"k{n}")
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("take"), OWNERS, KEYS, st.integers(0, 40), st.integers(1, 3 * MIB)),
        st.tuples(st.just("fetched"), KEYS, st.floats(0, 100)),
        st.tuples(st.just("release"), KEYS),
        st.tuples(st.just("outside"), OWNERS, st.integers(0, 40), st.integers(0, 40)),
        st.tuples(st.just("forget"), OWNERS),
        st.tuples(st.just("expire"), st.floats(0, 200)),
    ),
    max_size=60,
)


@given(capacity=st.integers(0, 16 * MIB), operations=OPERATIONS)
def test_the_budget_is_never_exceeded_and_each_owner_keeps_to_its_share(
    capacity: int, operations: list[tuple[object, ...]]
) -> None:
    budget = ReadAheadBudget(capacity, hold_seconds=30)
    sizes: dict[str, tuple[str, int]] = {}  # the model: key -> (owner, size)
    fetched: set[str] = set()
    for operation in operations:
        kind, *args = operation
        if kind == "take":
            owner, key, index, size = args
            assert isinstance(owner, str) and isinstance(key, str)
            assert isinstance(index, int) and isinstance(size, int)
            before = budget.owned(owner)
            share = budget.share(owner)
            room = budget.used + size <= capacity and key not in sizes
            granted = budget.take(owner, key, index, size)
            # An owner holding nothing gets a block whenever there is room for it; one holding
            # some grows only within an equal share among the owners holding budget.
            assert granted == (room and (before == 0 or before + size <= share))
            if granted:
                sizes[key] = (owner, size)
        elif kind == "fetched":
            (key, now) = args
            assert isinstance(key, str) and isinstance(now, float)
            if budget.fetched(key, now):
                fetched.add(key)
        elif kind == "release":
            (key,) = args
            assert isinstance(key, str)
            budget.release(key)
        elif kind == "outside":
            owner, first, last = args
            assert isinstance(first, int) and isinstance(last, int)
            dropped = budget.outside(owner, first, last)
            assert set(dropped) <= fetched
        elif kind == "forget":
            (owner,) = args
            assert set(budget.forget(owner)) <= fetched
            # Nothing fetched is left for it; what is still fetching goes when it arrives.
            assert all(sizes[key][0] != owner for key in fetched if key in budget)
        else:
            (now,) = args
            assert isinstance(now, float)
            assert set(budget.expire(now)) <= fetched
        for key in list(sizes):
            if key not in budget:
                del sizes[key]
                fetched.discard(key)
        assert budget.used == sum(size for _, size in sizes.values()) <= capacity
        assert budget.used <= budget.peak <= capacity
        for owner in "abcd":
            assert budget.owned(owner) == sum(s for o, s in sizes.values() if o == owner)
