"""Tensor maps of model files, sans-I/O: where each tensor's bytes lie in a ``.safetensors`` or
``.gguf`` file, read from the file's header.

A map only steers which blocks are asked for (a read inside a tensor fetches the whole tensor;
read-ahead follows the order loaders take tensors in); it never decides what a byte is, so a
header that does not parse, or describes tensors outside the file or overlapping each other,
gives no map and the file is read as plain blocks. The parser is fed the file's first bytes and
answers ``NeedBytes`` when the header goes on past them.
"""

from __future__ import annotations

import bisect
import json
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# safetensors refuses headers over 100 MB; so does this, for both formats.
MAX_HEADER_BYTES = 100 * 1000 * 1000
GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
# Counts a GGUF header may claim before it is taken for garbage (each costs parse time).
MAX_GGUF_ITEMS = 10_000_000
# Arrays of arrays nested deeper than this are taken for garbage: no model nests them so, and
# each level costs the parser a stack frame.
MAX_GGUF_ARRAY_DEPTH = 32

SAFETENSORS_SUFFIX = ".safetensors"
GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class Tensor:
    """A tensor's bytes: ``[start, end)`` of its file."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class TensorMap:
    """A file's tensors, in file order, none overlapping; ``header_end``: the bytes before it
    are the header (where a loader starts)."""

    header_end: int
    tensors: tuple[Tensor, ...]
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(tensor.start for tensor in self.tensors))

    def at(self, offset: int) -> Tensor | None:
        """The tensor holding byte ``offset``, if any."""
        position = bisect.bisect_right(self._starts, offset) - 1
        if position < 0:
            return None
        tensor = self.tensors[position]
        return tensor if offset < tensor.end else None

    def next_from(self, offset: int, wanted: Callable[[Tensor], bool]) -> Tensor | None:
        """The first tensor starting at or after ``offset`` that ``wanted`` picks."""
        position = bisect.bisect_left(self._starts, offset)
        return next(filter(wanted, self.tensors[position:]), None)

    def overlapping(self, start: int, end: int) -> list[Tensor]:
        """The tensors holding any byte of ``[start, end)``, in file order."""
        if end <= start:
            return []  # else the tensor holding ``start`` would be in it
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        last = bisect.bisect_left(self._starts, end)
        return [tensor for tensor in self.tensors[first:last] if tensor.end > start]


@dataclass(frozen=True)
class NeedBytes:
    """The header goes on past the bytes given: parse again with the first ``size`` bytes."""

    size: int


def has_tensor_map(path: str) -> bool:
    return path.endswith((SAFETENSORS_SUFFIX, GGUF_SUFFIX))


def parse_tensor_map(path: str, head: bytes, file_size: int) -> TensorMap | NeedBytes | None:
    """The tensor map of the file at ``path``, from its first bytes ``head``; None when the
    file is of no known format or its header is not a valid one."""
    if path.endswith(SAFETENSORS_SUFFIX):
        return parse_safetensors(head, file_size)
    if path.endswith(GGUF_SUFFIX):
        return parse_gguf(head, file_size)
    return None


# Runs of ASCII digits: re.split puts them at the odd places of its list, the text between them
# at the even ones, so two keys compare text with text and number with number.
_DIGIT_RUNS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple[str | tuple[int, str], ...]:
    """Sorts ``layers.2`` before ``layers.10``, as loaders order tensor names. Any two names'
    keys compare (a header's names are anyone's text); ``01`` and ``1`` are the same number."""
    parts = _DIGIT_RUNS.split(name)
    return tuple(_number_key(part) if index % 2 else part for index, part in enumerate(parts))


def _number_key(digits: str) -> tuple[int, str]:
    # A longer number is a larger one: no int(), which refuses names of over 4300 digits.
    significant = digits.lstrip("0")
    return len(significant), significant


def _checked(header_end: int, tensors: Iterable[Tensor], file_size: int) -> TensorMap | None:
    ordered = sorted(tensors, key=lambda tensor: (tensor.start, tensor.end))
    previous_end = header_end
    for tensor in ordered:
        # A GGUF tensor that starts past the end of the file "ends" at it, before its start.
        if tensor.start < previous_end or tensor.end < tensor.start or tensor.end > file_size:
            return None
        previous_end = max(previous_end, tensor.end)
    # Empty tensors hold no bytes: nothing to fetch for them.
    return TensorMap(header_end, tuple(tensor for tensor in ordered if tensor.end > tensor.start))


def parse_safetensors(head: bytes, file_size: int) -> TensorMap | NeedBytes | None:
    """8 bytes of little-endian header length, then that much JSON: per tensor its dtype,
    shape and ``data_offsets`` relative to the end of the header."""
    if len(head) < 8:
        return NeedBytes(8) if file_size >= 8 else None
    (length,) = struct.unpack_from("<Q", head)
    header_end = 8 + length
    if length > MAX_HEADER_BYTES or header_end > file_size:
        return None
    if len(head) < header_end:
        return NeedBytes(header_end)
    try:
        document = json.loads(bytes(head[8:header_end]))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    if not isinstance(document, dict):
        return None
    tensors = []
    for name, description in document.items():
        if name == "__metadata__":
            continue
        offsets = description.get("data_offsets") if isinstance(description, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(value) is int for value in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            return None
        tensors.append(Tensor(name, header_end + offsets[0], header_end + offsets[1]))
    return _checked(header_end, tensors, file_size)


class _Short(Exception):
    """The header goes on past the bytes given."""


class _Malformed(Exception):
    """Not a GGUF header this parser reads."""


# GGUF metadata value types: their sizes in bytes (string 8 and array 9 have none).
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_ALIGNMENT_KEY = b"general.alignment"


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > MAX_HEADER_BYTES:
            raise _Malformed
        if end > len(self.data):
            raise _Short(end)
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def unpack(self, layout: str) -> Any:
        return struct.unpack(layout, self.take(struct.calcsize(layout)))[0]

    def count(self) -> int:
        value: int = self.unpack("<Q")
        if value > MAX_GGUF_ITEMS:
            raise _Malformed
        return value

    def string(self) -> bytes:
        return self.take(self.unpack("<Q"))

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY and depth < MAX_GGUF_ARRAY_DEPTH:
            element, count = self.unpack("<I"), self.count()
            if element in _GGUF_SCALARS:
                # An array of numbers in one take: a tokenizer has a score per token.
                self.take(count * _GGUF_SCALARS[element])
            else:
                for _ in range(count):
                    self.value(element, depth + 1)
            return None
        raise _Malformed


def parse_gguf(head: bytes, file_size: int) -> TensorMap | NeedBytes | None:
    """GGUF v2/v3: magic, version, tensor and metadata counts, the metadata (typed key-value
    pairs), then per tensor its name, dimensions, type and offset into the data, which starts
    at the next multiple of ``general.alignment`` after the header. A tensor's bytes run to
    the next tensor's offset (or the end of the file): its exact size would need every
    quantisation's block layout, and the padding between tensors is at most one alignment."""
    cursor = _Cursor(head)
    try:
        if cursor.take(4) != GGUF_MAGIC or cursor.unpack("<I") not in (2, 3):
            return None
        tensor_count, metadata_count = cursor.count(), cursor.count()
        alignment = GGUF_DEFAULT_ALIGNMENT
        for _ in range(metadata_count):
            key = cursor.string()
            kind = cursor.unpack("<I")
            value = cursor.value(kind)
            if key == _GGUF_ALIGNMENT_KEY and kind == 4:
                alignment = struct.unpack("<I", value)[0]
        if alignment <= 0:
            return None
        placed = []
        for _ in range(tensor_count):
            name = cursor.string().decode()
            dimensions = cursor.unpack("<I")
            if dimensions > 64:
                return None
            cursor.take(8 * dimensions + 4)
            placed.append((name, cursor.unpack("<Q")))
    except _Short as short:
        if short.args[0] > file_size:
            return None
        return NeedBytes(short.args[0])
    except (_Malformed, UnicodeDecodeError):
        return None
    data_start = -(-cursor.position // alignment) * alignment
    ends = sorted({offset for _, offset in placed})
    tensors = []
    for name, offset in placed:
        following = bisect.bisect_right(ends, offset)
        end = ends[following] if following < len(ends) else file_size - data_start
        tensors.append(Tensor(name, data_start + offset, data_start + end))
    return _checked(cursor.position, tensors, file_size)
