"""The order loaders take a model's tensors in, sans-I/O, and where a loader is in it.

Loaders read tensors by name, not by file offset: transformers sorts the keys of all shards in
natural order (``layers.2`` before ``layers.10``) and vLLM iterates names in order, so the
tensor a loader wants next is often in another shard, or far away in the same file.
``LoaderOrder`` ranks a model's tensors that way; ``LoaderCursor`` watches the ranks a loader
reads and says how far ahead of it to fetch: nothing until it has read two tensors in order
(a random read costs only its own tensor), then a window of tensors that doubles with each
tensor read in order. Several loader threads read a few tensors out of order; a read within
``SLACK`` ranks of the furthest one read is still in order.
"""

from __future__ import annotations

import json
import posixpath
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

from lazyfs.core.tensormap import Tensor, TensorMap, natural_key

INDEX_SUFFIX = ".safetensors.index.json"
# A loader has entered a tensor once it has read this much of it (or all of a smaller one):
# the kernel's read-ahead runs ahead of a reader that stops at a tensor's end, into the next
# tensor, by up to three 1 MiB windows (seen with a memory-mapped loader copying a tensor),
# and that is not the loader wanting it.
ENTERED_BYTES = 4 * 1024 * 1024 + 4096
# Tensors whose bytes read so far are remembered (a few per loader thread).
VISITS_REMEMBERED = 256
# How far (in ranks) a read may land from the furthest one and still be in order: a layer's
# tensors are read in module order, which is not their name order, by up to four threads.
SLACK = 16


@dataclass(frozen=True)
class PlacedTensor:
    path: str
    tensor: Tensor


class LoaderOrder:
    """A model's tensors (one file's, or the shards of a sharded model) in loader order."""

    def __init__(self, maps: Mapping[str, TensorMap]) -> None:
        placed = [
            PlacedTensor(path, tensor) for path, found in maps.items() for tensor in found.tensors
        ]
        placed.sort(key=lambda item: (natural_key(item.tensor.name), item.path))
        self.tensors: tuple[PlacedTensor, ...] = tuple(placed)
        self.paths = frozenset(maps)
        self._ranks = {(item.path, item.tensor.start): rank for rank, item in enumerate(placed)}

    def __len__(self) -> int:
        return len(self.tensors)

    def rank(self, path: str, tensor: Tensor) -> int | None:
        return self._ranks.get((path, tensor.start))

    def following(self, rank: int) -> Iterator[PlacedTensor]:
        """The tensors after ``rank``, in loader order."""
        return islice(self.tensors, rank + 1, None)


@dataclass
class LoaderCursor:
    """Where the loaders of one model are in its ``LoaderOrder``."""

    furthest: int = -1
    # Tensors read in order in a row; 0 after a jump.
    run: int = 0

    def record(self, rank: int, max_window: int) -> int:
        """A loader read the tensor at ``rank``: how many tensors to fetch ahead of the
        furthest one read (0: none)."""
        if self.furthest >= 0 and rank <= self.furthest and self.furthest - rank <= SLACK:
            # A tensor just behind the furthest: another loader thread, still in order.
            return self._window(max_window)
        if self.furthest >= 0 and 0 < rank - self.furthest <= SLACK:
            self.run += 1
        else:
            self.run = 0
        self.furthest = rank
        return self._window(max_window)

    def _window(self, max_window: int) -> int:
        if self.run == 0:
            return 0
        return min(max_window, 1 << min(self.run - 1, 30))


class TensorVisits:
    """Which tensors of a model a loader has entered (see ``ENTERED_BYTES``)."""

    def __init__(self) -> None:
        # Bytes read of the tensors lately read, by key; -1 once entered.
        self._read: OrderedDict[Hashable, int] = OrderedDict()

    def read(self, key: Hashable, size: int, count: int) -> bool:
        """``count`` more bytes of the tensor ``key`` (``size`` bytes) were read: whether that
        made the loader enter it."""
        done = self._read.get(key, 0)
        if done < 0:
            return False
        done += count
        entered = done >= min(ENTERED_BYTES, size)
        self._read[key] = -1 if entered else done
        self._read.move_to_end(key)
        if len(self._read) > VISITS_REMEMBERED:
            self._read.popitem(last=False)
        return entered

    def entered(self, key: Hashable) -> bool:
        return self._read.get(key) == -1


def index_shards(index_path: str, document: bytes) -> list[str] | None:
    """The shards a ``*.safetensors.index.json`` names (its ``weight_map`` values), as paths
    beside it; None if it is not such an index or names a file outside its directory."""
    try:
        parsed = json.loads(document)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict):
        return None
    directory = posixpath.dirname(index_path)
    shards = set()
    for name in weight_map.values():
        if not isinstance(name, str) or not name or name.startswith("/"):
            return None
        parts = name.split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        shards.add(posixpath.join(directory, name))
    # ``shard-01`` and ``shard-1`` have one key: their order comes from the names, not the set.
    return sorted(shards, key=lambda path: (natural_key(path), path))
