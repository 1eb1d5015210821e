"""BlockDigests (lazyfs.core.filehashes): block digests of a stream fed in pieces of any length."""

from __future__ import annotations

import hashlib
import itertools

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.filehashes import BlockDigests


def by_hand(data: bytes, block_size: int) -> tuple[str, ...]:
    return tuple(
        hashlib.sha256(data[i : i + block_size]).hexdigest()
        for i in range(0, len(data), block_size)
    )


@given(
    data=st.binary(max_size=700),
    block_size=st.integers(min_value=1, max_value=96),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=12),
)
def test_pieces_of_any_length_give_each_blocks_digest(
    data: bytes, block_size: int, cuts: list[int]
) -> None:
    blocks = BlockDigests(block_size)
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    buffer = bytearray(len(data))
    for start, end in itertools.pairwise(bounds):
        # Fed from one reused buffer, overwritten after each piece: nothing may be kept.
        buffer[: end - start] = data[start:end]
        blocks.update(memoryview(buffer)[: end - start])
        buffer[:] = bytes(len(buffer))
    assert blocks.digests() == by_hand(data, block_size)
