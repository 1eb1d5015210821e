"""Model-aware reads: fetch tensors, not pages, in the order loaders want them.

A ``.safetensors`` or ``.gguf`` file's tensor map (``core.tensormap``) is read once, from the
verified blocks that hold its header, when the file is first opened; opening a sharded model's
``*.safetensors.index.json`` reads every shard's. From then on, once a loader has entered a
tensor (read 4 MiB of it, or all of a smaller one: ``core.loaderorder.TensorVisits``), the
rest of that tensor's blocks are fetched at a demand fetch's priority (a loader in a tensor
will want all of it), and once it has entered two large tensors in loader order (natural
name order, across shards) the next tensors in that order are read ahead, behind any demand
fetch. Both go through
``ReadAhead``, so they share its mount-wide budget (a tensor larger than the budget is fetched
in a sliding window as it is read) and its single flight with readers.

A map only changes which blocks are asked for, never how they are verified; a file whose
header does not parse is read as plain blocks.
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import trio
from typing_extensions import Buffer

from lazyfs.core.loaderorder import (
    ENTERED_BYTES,
    INDEX_SUFFIX,
    LoaderCursor,
    LoaderOrder,
    PlacedTensor,
    TensorVisits,
    index_shards,
)
from lazyfs.core.manifest import FileEntry
from lazyfs.core.tensormap import (
    MAX_HEADER_BYTES,
    NeedBytes,
    Tensor,
    TensorMap,
    has_tensor_map,
    parse_tensor_map,
)
from lazyfs.errors import LazyfsError
from lazyfs.read.readahead import ReadAhead
from lazyfs.read.singleflight import SingleFlight

log = logging.getLogger(__name__)

# Shards whose headers one index open reads at once.
HEADER_READS = 4
# The most tensors read ahead of a loader (the budget bounds their bytes).
MAX_TENSORS_AHEAD = 256
# An index larger than this is not a safetensors index anyone wrote.
MAX_INDEX_BYTES = 64 * 1024 * 1024

# Where a map is being read: what a file's header holds is not known yet.
_LOADING = TensorMap(0, ())
# Reads ``length`` bytes of a file at ``offset``, verified (no read-ahead of its own).
ReadRange = Callable[[FileEntry, int, int], Awaitable[Buffer]]
# A file of the mount by path, as the reader knows it now; None if there is none.
EntryOf = Callable[[str], FileEntry | None]


@dataclass(eq=False)
class ModelGroup:
    """The files one loader reads together (a model's shards, or one file) and where the
    loader is in them. It owns what is fetched for it in the read-ahead budget."""

    order: LoaderOrder
    cursor: LoaderCursor = field(default_factory=LoaderCursor)
    visits: TensorVisits = field(default_factory=TensorVisits)
    # The file and block of the last read that fetched the rest of its tensor: more reads
    # in the same block change nothing.
    last_read: tuple[str, int] = ("", -1)


class TensorReads:
    def __init__(
        self,
        read_range: ReadRange,
        entry_of: EntryOf,
        ahead: ReadAhead,
        block_size: int,
        max_window: int,
        background: trio.Nursery,
    ) -> None:
        self._read_range = read_range
        self._entry_of = entry_of
        self.ahead = ahead
        self.block_size = block_size
        self.max_window = max_window
        self._background = background
        # Per path: its map, or None when its header is not one (read as plain blocks).
        self.maps: dict[str, TensorMap | None] = {}
        self.groups: dict[str, ModelGroup] = {}
        self._loading: SingleFlight[str, TensorMap | None] = SingleFlight()
        self._indexes_read: set[str] = set()

    def opened(self, entry: FileEntry) -> None:
        """``entry`` was opened: read its tensor map (or, for an index, its shards') in the
        background, so the loader's first reads find it."""
        if not _mappable(entry):
            return
        if entry.path.endswith(INDEX_SUFFIX):
            if entry.path not in self._indexes_read:
                self._indexes_read.add(entry.path)
                self._background.start_soon(self._guarded, self._read_index(entry))
        elif has_tensor_map(entry.path) and entry.path not in self.maps:
            self._background.start_soon(self._guarded, self.map_of(entry))

    async def _guarded(self, work: Awaitable[object]) -> None:
        try:
            await work
        except LazyfsError as exc:
            # A read of the same bytes will fail again, and say so to its reader.
            log.info("tensor map not read: %s", exc)
        except Exception:
            # A bug must not end the reader's nursery, and with it the mount.
            log.exception("reading a tensor map failed")

    async def map_of(self, entry: FileEntry) -> TensorMap | None:
        """``entry``'s tensor map, read from its header once; None if it has none."""
        if entry.path in self.maps:
            return self.maps[entry.path]
        return await self._loading.run(
            entry.path, lambda: self._read_map(entry), lambda: self.maps.get(entry.path)
        )

    async def _read_map(self, entry: FileEntry) -> TensorMap | None:
        wanted = min(entry.size, self.block_size)
        found: TensorMap | NeedBytes | None = None
        while True:
            head = bytes(await self._read_range(entry, 0, wanted))
            found = parse_tensor_map(entry.path, head, entry.size)
            if not isinstance(found, NeedBytes):
                break
            # Whole blocks: they are fetched whole anyway.
            wanted = min(entry.size, -(-found.size // self.block_size) * self.block_size)
            if found.size > min(entry.size, MAX_HEADER_BYTES) or wanted <= len(head):
                found = None
                break
        if found is None:
            log.info(
                "%s: no tensor map (not a header this reads); read as plain blocks", entry.path
            )
        else:
            log.debug("%s: %d tensors", entry.path, len(found.tensors))
        self.maps[entry.path] = found
        if found is not None and entry.path not in self.groups:
            self.groups[entry.path] = ModelGroup(LoaderOrder({entry.path: found}))
        return found

    async def _read_index(self, entry: FileEntry) -> None:
        """Read a sharded model's index and every shard's header; from then on the shards are
        one model, read ahead across."""
        if entry.size > MAX_INDEX_BYTES:
            return
        try:
            document = bytes(await self._read_range(entry, 0, entry.size))
        except LazyfsError:
            self._indexes_read.discard(entry.path)  # the next open tries again
            raise
        shards = index_shards(entry.path, document)
        entries = [
            found
            for found in map(self._entry_of, shards or ())
            if found is not None and _mappable(found)
        ]
        maps: dict[str, TensorMap] = {}

        async def read_header(shard: FileEntry, limit: trio.Semaphore) -> None:
            try:
                async with limit:
                    found = await self.map_of(shard)
            except LazyfsError as exc:
                # Kept out of the nursery: the other shards still make a model.
                log.info("tensor map of %s not read: %s", shard.path, exc)
                return
            if found is not None:
                maps[shard.path] = found

        limit = trio.Semaphore(HEADER_READS)
        async with trio.open_nursery() as nursery:
            for shard in entries:
                nursery.start_soon(read_header, shard, limit)
        if maps:
            group = ModelGroup(LoaderOrder(maps))
            for path in maps:
                self.groups[path] = group

    def plain_window(self, entry: FileEntry, end: int, ahead: range) -> range:
        """The blocks ``ahead`` that a sequential read ending at ``end`` may fetch in a model
        file: none past a large tensor it ends in (the loader may want another one next, and
        the rest of this one is fetched already), none into a large tensor the loader has not
        entered (the kernel's read-ahead brushing it), none after a read of the header (a
        loader reads it, then jumps to the tensors it wants)."""
        if not has_tensor_map(entry.path):
            return ahead
        found = self.maps.get(entry.path, _LOADING)
        if found is None:
            return ahead
        if found is _LOADING or end <= found.header_end:
            return range(0)
        visits = self.groups[entry.path].visits
        tensor = found.at(end - 1)
        if tensor is not None and _large(tensor):
            if not visits.entered((entry.path, tensor.start)):
                return range(0)
            return range(ahead.start, min(ahead.stop, (tensor.end - 1) // self.block_size + 1))
        # In small tensors (norms, biases): on, up to the next large one not entered.
        following = found.next_from(end, _large)
        if following is None or visits.entered((entry.path, following.start)):
            return ahead
        return range(ahead.start, min(ahead.stop, following.start // self.block_size))

    def follow(self, entry: FileEntry, offset: int, length: int) -> None:
        """A reader read ``[offset, offset + length)`` of ``entry``: fetch the rest of the
        tensor it is in, and the next tensors in loader order once it reads in that order."""
        found = self.maps.get(entry.path)
        if found is None and entry.path in self._loading:
            # Its header is on the way (read at open): count this read once it is here.
            self._background.start_soon(self._guarded, self._follow_later(entry, offset, length))
            return
        if found is None or length <= 0:
            return
        group = self.groups[entry.path]
        end = offset + length
        tensors = found.overlapping(offset, end)
        if not tensors:
            return
        # The rest of a tensor is fetched once the loader has entered it, and the next ones
        # once it enters them in loader order; the kernel's own read-ahead only brushes them.
        entered = [
            tensor
            for tensor in tensors
            if group.visits.read(
                (entry.path, tensor.start),
                tensor.end - tensor.start,
                min(end, tensor.end) - max(offset, tensor.start),
            )
        ]
        continuing = tensors[-1]
        block = (end - 1) // self.block_size
        if group.last_read != (entry.path, block) and group.visits.entered(
            (entry.path, continuing.start)
        ):
            group.last_read = (entry.path, block)
            self.ahead.expire()
            self.ahead.fetch(group, entry, self._blocks(continuing, block), urgent=True)
        # Only large tensors tell which way a loader goes: a small one is often read whole by
        # the kernel around a page fault in its neighbour.
        for tensor in filter(_large, entered):
            rank = group.order.rank(entry.path, tensor)
            if rank is None:
                continue
            window = group.cursor.record(rank, MAX_TENSORS_AHEAD)
            if window:
                self._read_ahead(group, rank, window)

    async def _follow_later(self, entry: FileEntry, offset: int, length: int) -> None:
        if await self.map_of(entry) is not None:
            self.follow(entry, offset, length)

    def _blocks(self, tensor: Tensor, block: int) -> range:
        """The tensor's blocks, at most a window of them past ``block``, where it is read."""
        first = tensor.start // self.block_size
        last = (tensor.end - 1) // self.block_size
        return range(max(first, block - self.max_window), min(last, block + self.max_window) + 1)

    def _read_ahead(self, group: ModelGroup, rank: int, tensors: int) -> None:
        """Fetch the ``tensors`` tensors after the one at ``rank`` in loader order, at most
        ``max_window`` blocks of them. After the one read, not the furthest: the kernel's own
        read-ahead touches the next tensors in file order, and that is not the loader."""
        seen: set[tuple[str, int]] = set()
        following = group.order.following(rank)
        for path, indices in _blocks_in_order(islice(following, tensors), self.block_size):
            entry = self._entry_of(path)
            if entry is None or entry.check is not None:
                continue
            fresh = [index for index in indices if (path, index) not in seen]
            room = self.max_window - len(seen)
            if room <= 0:
                return  # the window is full
            seen.update((path, index) for index in fresh[:room])
            asked = self.ahead.fetch(group, entry, fresh[:room])
            if asked < min(room, len(fresh)):
                return  # out of budget

    async def loader_ordered(self, entries: Iterable[FileEntry]) -> list[tuple[FileEntry, int]]:
        """The blocks of ``entries`` in the order loaders want them (prefetch): other files
        first (configs, tokenizers: small, and read first), then per directory of model files
        their headers and tensors in loader order across the files, then whatever else of them
        (padding, trailing bytes)."""
        plain: list[tuple[FileEntry, int]] = []
        models: dict[str, list[FileEntry]] = defaultdict(list)
        for entry in entries:
            if _mappable(entry) and has_tensor_map(entry.path):
                models[posixpath.dirname(entry.path)].append(entry)
            else:
                plain.extend((entry, index) for index in range(len(entry.blocks)))
        ordered = plain
        for directory in models.values():
            maps: dict[str, TensorMap] = {}
            for entry in directory:
                found = await self.map_of(entry)
                if found is not None:
                    maps[entry.path] = found
            by_path = {entry.path: entry for entry in directory}
            placed: dict[tuple[str, int], None] = {}
            for path, indices in _blocks_in_order(LoaderOrder(maps).tensors, self.block_size):
                placed.update(((path, index), None) for index in indices)
            for entry in directory:
                placed.update(((entry.path, index), None) for index in range(len(entry.blocks)))
            ordered.extend((by_path[path], index) for path, index in placed)
        return ordered


def _large(tensor: Tensor) -> bool:
    """Larger than what the kernel reads ahead of a reader (``ENTERED_BYTES``)."""
    return tensor.end - tensor.start >= ENTERED_BYTES


def _mappable(entry: FileEntry) -> bool:
    """Whether the entry's blocks can be asked for one by one (not a hub file still to be
    verified whole)."""
    return entry.check is None


def _blocks_in_order(
    tensors: Iterable[PlacedTensor], block_size: int
) -> Iterator[tuple[str, list[int]]]:
    """Each tensor's file and blocks, in the order given."""
    for placed in tensors:
        first = placed.tensor.start // block_size
        last = (placed.tensor.end - 1) // block_size
        yield placed.path, list(range(first, last + 1))
