"""Tensor maps read from ``.safetensors`` and ``.gguf`` headers, h11-style: fed whole, fed in
pieces (``NeedBytes`` until the header is all there), and fed garbage (None, never an error).

The safetensors files come from the real writer (``safetensors.numpy.save``, in memory); the
GGUF ones from the encoder below, which can also write what no writer would (the real GGUF
writer needs a file: tests/component/test_tensormap_writers.py)."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from lazyfs.core.tensormap import (
    MAX_GGUF_ARRAY_DEPTH,
    MAX_GGUF_ITEMS,
    MAX_HEADER_BYTES,
    NeedBytes,
    Tensor,
    TensorMap,
    has_tensor_map,
    natural_key,
    parse_gguf,
    parse_safetensors,
    parse_tensor_map,
)

Result = TensorMap | NeedBytes | None


def assert_well_formed(found: Result, head: bytes, file_size: int) -> None:
    """What any answer must be: a request for more of this file's bytes, no map, or a map of
    non-empty tensors in file order, apart, between the header and the end of the file."""
    if isinstance(found, NeedBytes):
        assert len(head) < found.size <= file_size
    elif isinstance(found, TensorMap):
        previous_end = found.header_end
        for tensor in found.tensors:
            assert previous_end <= tensor.start < tensor.end <= file_size
            previous_end = tensor.end
    else:
        assert found is None


def feed(parse: Callable[[bytes, int], Result], data: bytes, first: int, header_end: int) -> Result:
    """Parses ``data`` from its first ``first`` bytes on, giving the parser what it asks for
    each time, as a reader of the file would."""
    size = first
    for _ in range(len(data) + 1):  # each answer asks for more: this many rounds at most
        found = parse(data[:size], len(data))
        if not isinstance(found, NeedBytes):
            return found
        assert size < found.size <= header_end
        size = found.size
    raise AssertionError("the parser kept asking for bytes")


# --- safetensors -------------------------------------------------------------------------


RNG = np.random.default_rng(0)
ARRAYS: dict[str, np.ndarray] = {
    "layers.10.weight": RNG.random((3, 5), dtype=np.float32),
    "layers.2.weight": RNG.random(7).astype(np.float16),
    "layers.2.bias": RNG.integers(-(2**40), 2**40, size=4, dtype=np.int64),
    "embed": RNG.integers(0, 255, size=(2, 3), dtype=np.uint8),
    "mask": RNG.random(5) > 0.5,
    "empty": np.zeros((0, 4), dtype=np.float32),
}
SAFETENSORS = save(ARRAYS, metadata={"format": "np", "note": "x" * 100})
SAFETENSORS_HEADER_END = 8 + struct.unpack_from("<Q", SAFETENSORS)[0]


def safetensors_bytes(header: bytes | object, data: bytes = bytes(16)) -> bytes:
    """A safetensors file of ``header`` (JSON-encoded unless bytes) then ``data``."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_a_safetensors_map_locates_every_tensor_the_writer_wrote() -> None:
    found = parse_safetensors(SAFETENSORS, len(SAFETENSORS))
    assert isinstance(found, TensorMap)
    assert found.header_end == SAFETENSORS_HEADER_END
    assert_well_formed(found, SAFETENSORS, len(SAFETENSORS))
    by_name = {tensor.name: tensor for tensor in found.tensors}
    # The empty tensor holds no bytes, so it has no place in the map; __metadata__ is no tensor.
    assert set(by_name) == {name for name, array in ARRAYS.items() if array.nbytes}
    for name, tensor in by_name.items():
        assert SAFETENSORS[tensor.start : tensor.end] == ARRAYS[name].tobytes()
    assert found.tensors[-1].end == len(SAFETENSORS)


@given(st.integers(0, SAFETENSORS_HEADER_END - 1))
def test_a_safetensors_header_fed_in_pieces_gives_the_same_map(first: int) -> None:
    whole = parse_safetensors(SAFETENSORS, len(SAFETENSORS))
    first_answer = parse_safetensors(SAFETENSORS[:first], len(SAFETENSORS))
    assert isinstance(first_answer, NeedBytes)
    assert first < first_answer.size <= SAFETENSORS_HEADER_END
    assert feed(parse_safetensors, SAFETENSORS, first, SAFETENSORS_HEADER_END) == whole


def _tensor(offsets: object) -> dict[str, object]:
    return {"dtype": "U8", "shape": [4], "data_offsets": offsets}


MALFORMED_SAFETENSORS = {
    "bad json": safetensors_bytes(b'{"a": {"dtype": '),
    "not utf-8": safetensors_bytes(b'{"\xff": 1}'),
    "json list": safetensors_bytes([1, 2]),
    "json string": safetensors_bytes("a"),
    "json number": safetensors_bytes(3),
    "deeply nested json": safetensors_bytes(b"[" * 100_000 + b"]" * 100_000),
    "description not an object": safetensors_bytes({"a": [0, 4]}),
    "no data_offsets": safetensors_bytes({"a": {"dtype": "U8", "shape": [4]}}),
    "data_offsets a string": safetensors_bytes({"a": _tensor("0,4")}),
    "data_offsets an object": safetensors_bytes({"a": _tensor({"0": 4})}),
    "data_offsets floats": safetensors_bytes({"a": _tensor([0.0, 4.0])}),
    "data_offsets bools": safetensors_bytes({"a": _tensor([False, True])}),
    "data_offsets null": safetensors_bytes({"a": _tensor([None, 4])}),
    "one data_offset": safetensors_bytes({"a": _tensor([4])}),
    "three data_offsets": safetensors_bytes({"a": _tensor([0, 4, 8])}),
    # Offsets count from the end of the header: a negative one reaches back into it.
    "negative start": safetensors_bytes({"a": _tensor([-4, 4])}),
    "negative end": safetensors_bytes({"a": _tensor([0, -4])}),
    "reversed": safetensors_bytes({"a": _tensor([8, 4])}),
    "overlapping": safetensors_bytes({"a": _tensor([0, 8]), "b": _tensor([4, 12])}),
    "same bytes twice": safetensors_bytes({"a": _tensor([0, 8]), "b": _tensor([0, 8])}),
    "empty tensor inside another": safetensors_bytes({"a": _tensor([0, 8]), "b": _tensor([4, 4])}),
    "past the end of the file": safetensors_bytes({"a": _tensor([0, 17])}),
    "huge offset": safetensors_bytes({"a": _tensor([2**70, 2**70 + 4])}),
}


@pytest.mark.parametrize("data", MALFORMED_SAFETENSORS.values(), ids=MALFORMED_SAFETENSORS)
def test_a_malformed_safetensors_header_gives_no_map(data: bytes) -> None:
    assert parse_safetensors(data, len(data)) is None
    assert parse_tensor_map("model.safetensors", data, len(data)) is None


@pytest.mark.parametrize(
    ("length", "file_size"),
    [
        (MAX_HEADER_BYTES + 1, 10 * MAX_HEADER_BYTES),  # over the limit, though the file holds it
        (2**64 - 1, 2**64 + 100),
        (1000, 1007),  # longer than the file
        (1000, 1000),
    ],
)
def test_a_header_length_over_the_limit_or_the_file_gives_no_map(
    length: int, file_size: int
) -> None:
    head = struct.pack("<Q", length) + b"{}"
    assert parse_safetensors(head, file_size) is None


def test_a_header_of_exactly_the_file_is_a_map_of_no_tensors() -> None:
    data = safetensors_bytes({"__metadata__": {"a": "b"}}, b"")
    assert parse_safetensors(data, len(data)) == TensorMap(len(data), ())


def test_a_file_shorter_than_the_length_field_gives_no_map() -> None:
    assert parse_safetensors(b"\x02\0\0", 3) is None
    assert parse_safetensors(b"", 0) is None
    assert parse_safetensors(b"", 8) == NeedBytes(8)


def test_a_safetensors_file_cut_at_any_byte_gives_no_request_past_its_end() -> None:
    for size in range(len(SAFETENSORS) + 1):
        cut = SAFETENSORS[:size]
        found = parse_safetensors(cut, size)
        assert_well_formed(found, cut, size)
        assert found is None or size == len(SAFETENSORS)


# --- GGUF ----------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def gguf_array(element: int, items: list[bytes]) -> bytes:
    return struct.pack("<IQ", element, len(items)) + b"".join(items)


def gguf_kv(key: bytes, kind: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", kind) + payload


def gguf_tensor(name: bytes, dims: list[int], kind: int, offset: int) -> bytes:
    shape = struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
    return gguf_string(name) + shape + struct.pack("<IQ", kind, offset)


def gguf_bytes(
    kvs: list[bytes],
    tensors: list[bytes],
    data_size: int,
    *,
    alignment: int = 32,
    version: int = 3,
    counts: tuple[int, int] | None = None,
) -> bytes:
    """A GGUF file: the header, padding to ``alignment``, then ``data_size`` bytes of data."""
    tensor_count, kv_count = counts or (len(tensors), len(kvs))
    header = b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count)
    header += b"".join(kvs) + b"".join(tensors)
    padding = -len(header) % alignment
    return header + bytes(padding) + random.Random(len(header)).randbytes(data_size)


# One of every value type, arrays of strings and of arrays, and an alignment of 64.
EVERY_VALUE = [
    gguf_kv(b"general.architecture", STRING, gguf_string(b"llama")),
    gguf_kv(b"u8", U8, b"\x01"),
    gguf_kv(b"i8", I8, b"\xff"),
    gguf_kv(b"u16", U16, struct.pack("<H", 2)),
    gguf_kv(b"i16", I16, struct.pack("<h", -2)),
    gguf_kv(b"u32", U32, struct.pack("<I", 3)),
    gguf_kv(b"i32", I32, struct.pack("<i", -3)),
    gguf_kv(b"f32", F32, struct.pack("<f", 1.5)),
    gguf_kv(b"bool", BOOL, b"\x01"),
    gguf_kv(b"u64", U64, struct.pack("<Q", 4)),
    gguf_kv(b"i64", I64, struct.pack("<q", -4)),
    gguf_kv(b"f64", F64, struct.pack("<d", 2.5)),
    gguf_kv(b"general.alignment", U32, struct.pack("<I", 64)),
    # Ends the header a byte past a multiple of 64: data at the next multiple of 32 is wrong.
    gguf_kv(b"padding", STRING, gguf_string(b"." * 5)),
    gguf_kv(b"tokens", ARRAY, gguf_array(STRING, [gguf_string(b"a"), gguf_string(b"")])),
    gguf_kv(b"scores", ARRAY, gguf_array(F32, [struct.pack("<f", 0.5)] * 3)),
    gguf_kv(b"empty", ARRAY, gguf_array(F64, [])),
    gguf_kv(
        b"nested",
        ARRAY,
        gguf_array(ARRAY, [gguf_array(I16, [b"\1\0", b"\2\0"]), gguf_array(I16, [])]),
    ),
    gguf_kv(
        b"nested strings",
        ARRAY,
        gguf_array(ARRAY, [gguf_array(STRING, [gguf_string("é".encode())])]),
    ),
]
# In file order: 60, 14 and 136 bytes at offsets aligned to 64.
GGUF_TENSORS = [
    gguf_tensor(b"blk.10.w", [5, 3], GGML_F32, 0),
    gguf_tensor(b"blk.2.w", [7], GGML_F16, 64),
    gguf_tensor(b"q", [64, 2], GGML_Q8_0, 128),
]
GGUF = gguf_bytes(EVERY_VALUE, GGUF_TENSORS, 128 + 136, alignment=64)
GGUF_HEADER_END = GGUF.index(b"blk.10.w") + sum(map(len, GGUF_TENSORS)) - 8


def test_a_gguf_map_runs_each_tensor_to_the_next_one() -> None:
    found = parse_gguf(GGUF, len(GGUF))
    data_start = len(GGUF) - 128 - 136
    assert data_start == GGUF_HEADER_END - 1 + 64
    assert found == TensorMap(
        GGUF_HEADER_END,
        (
            Tensor("blk.10.w", data_start, data_start + 64),
            Tensor("blk.2.w", data_start + 64, data_start + 128),
            Tensor("q", data_start + 128, len(GGUF)),
        ),
    )
    assert parse_tensor_map("dir/model.gguf", GGUF, len(GGUF)) == found


def test_a_gguf_map_is_in_file_order_whatever_the_order_of_the_tensor_infos() -> None:
    data = gguf_bytes(EVERY_VALUE, GGUF_TENSORS[::-1], 128 + 136, alignment=64)
    found = parse_gguf(data, len(data))
    assert isinstance(found, TensorMap)
    assert [tensor.name for tensor in found.tensors] == ["blk.10.w", "blk.2.w", "q"]
    assert_well_formed(found, data, len(data))


def test_without_an_alignment_key_gguf_data_starts_at_the_next_32() -> None:
    data = gguf_bytes(EVERY_VALUE[:1], [gguf_tensor(b"w", [4], GGML_F32, 0)], 16)
    found = parse_gguf(data, len(data))
    assert isinstance(found, TensorMap)
    assert found.tensors == (Tensor("w", len(data) - 16, len(data)),)
    assert (len(data) - 16) % 32 == 0 and len(data) - 16 - found.header_end < 32


@given(st.integers(0, GGUF_HEADER_END - 1))
@example(0)
@example(GGUF_HEADER_END - 1)
def test_a_gguf_header_fed_in_pieces_gives_the_same_map(first: int) -> None:
    whole = parse_gguf(GGUF, len(GGUF))
    first_answer = parse_gguf(GGUF[:first], len(GGUF))
    assert isinstance(first_answer, NeedBytes)
    assert first < first_answer.size <= GGUF_HEADER_END
    assert feed(parse_gguf, GGUF, first, GGUF_HEADER_END) == whole


def test_a_gguf_file_cut_at_any_byte_gives_no_map_or_one_within_it() -> None:
    for size in range(len(GGUF) + 1):
        cut = GGUF[:size]
        found = parse_gguf(cut, size)
        assert_well_formed(found, cut, size)
        assert not isinstance(found, NeedBytes)
        if size < GGUF_HEADER_END:
            assert found is None


def nested_arrays(depth: int) -> bytes:
    """A value of ``depth`` arrays, each the one element of the one around it."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", U8, 1) + b"\x07"


ONE_TENSOR = [gguf_tensor(b"w", [4], GGML_F32, 0)]
MALFORMED_GGUF = {
    "bad magic": b"GGUE" + GGUF[4:],
    "version 1": GGUF[:4] + struct.pack("<I", 1) + GGUF[8:],
    "version 4": GGUF[:4] + struct.pack("<I", 4) + GGUF[8:],
    "big-endian": GGUF[:4] + struct.pack(">I", 3) + GGUF[8:],
    "huge tensor count": gguf_bytes([], ONE_TENSOR, 16, counts=(2**63, 0)),
    "tensor count over the cap": gguf_bytes([], ONE_TENSOR, 16, counts=(MAX_GGUF_ITEMS + 1, 0)),
    "more tensors than the file holds": gguf_bytes([], ONE_TENSOR, 16, counts=(1000, 0)),
    "huge metadata count": gguf_bytes([], ONE_TENSOR, 16, counts=(1, 2**64 - 1)),
    "huge array count": gguf_bytes([gguf_kv(b"a", ARRAY, struct.pack("<IQ", U8, 2**40))], [], 16),
    "huge key length": gguf_bytes([struct.pack("<Q", 2**62) + b"k"], [], 16),
    "key longer than the file": gguf_bytes([struct.pack("<Q", 10_000) + b"k"], [], 16),
    "huge string value": gguf_bytes([gguf_kv(b"s", STRING, struct.pack("<Q", 2**63))], [], 16),
    "huge tensor name": gguf_bytes([], [struct.pack("<Q", MAX_HEADER_BYTES + 1)], 16),
    "unknown value type": gguf_bytes([gguf_kv(b"x", 13, b"\0" * 8)], ONE_TENSOR, 16),
    "unknown array element": gguf_bytes([gguf_kv(b"x", ARRAY, gguf_array(13, [b""]))], [], 16),
    "arrays nested past the recursion limit": gguf_bytes(
        [gguf_kv(b"x", ARRAY, nested_arrays(5000))], ONE_TENSOR, 16
    ),
    "65 dimensions": gguf_bytes([], [gguf_tensor(b"w", [1] * 65, GGML_F32, 0)], 16),
    "huge dimension count": gguf_bytes([], [gguf_string(b"w") + b"\xff" * 4], 16),
    "tensor name not utf-8": gguf_bytes([], [gguf_tensor(b"\xff", [4], GGML_F32, 0)], 16),
    "duplicated offsets": gguf_bytes(
        [], [gguf_tensor(b"a", [2], GGML_F32, 0), gguf_tensor(b"b", [2], GGML_F32, 0)], 16
    ),
    "tensor past the end of the file": gguf_bytes([], [gguf_tensor(b"w", [4], GGML_F32, 64)], 16),
    "second tensor past the end": gguf_bytes(
        [], [gguf_tensor(b"a", [4], GGML_F32, 0), gguf_tensor(b"b", [4], GGML_F32, 64)], 16
    ),
}


@pytest.mark.parametrize("data", MALFORMED_GGUF.values(), ids=MALFORMED_GGUF)
def test_a_malformed_gguf_header_gives_no_map(data: bytes) -> None:
    assert parse_gguf(data, len(data)) is None
    assert parse_tensor_map("model.gguf", data, len(data)) is None


def test_arrays_nest_as_deep_as_the_limit_and_no_deeper() -> None:
    for depth, parses in [(MAX_GGUF_ARRAY_DEPTH, True), (MAX_GGUF_ARRAY_DEPTH + 1, False)]:
        data = gguf_bytes([gguf_kv(b"x", ARRAY, nested_arrays(depth))], ONE_TENSOR, 16)
        assert isinstance(parse_gguf(data, len(data)), TensorMap) == parses


def test_an_array_of_numbers_is_asked_for_whole() -> None:
    """A tokenizer has a score per token: a header fed in pieces asks for all of them at once,
    not for one more number each time."""
    scores = struct.pack("<IQ", F32, 2_500_000) + bytes(10_000_000)
    data = gguf_bytes([gguf_kv(b"scores", ARRAY, scores)], ONE_TENSOR, 16)
    assert parse_gguf(data[:100], len(data)) == NeedBytes(data.index(ONE_TENSOR[0]))
    found = parse_gguf(data, len(data))
    assert isinstance(found, TensorMap)
    assert found.tensors == (Tensor("w", len(data) - 16, len(data)),)


# --- any bytes -----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes changed, inserted, removed, or its tail cut off."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        change = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if change == "set" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif change == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif change == "delete":
            del data[position : position + draw(st.integers(1, 9))]
        else:
            del data[position:]
    return bytes(data)


def any_head(magic: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda tail: magic + tail))


PATHS = st.sampled_from(["m.safetensors", "m.gguf", "m.bin"])
HEADS = st.one_of(
    any_head(struct.pack("<Q", 30)),
    any_head(b"GGUF\x03\0\0\0"),
    any_head(b"GGUF\x02\0\0\0\x01" + bytes(7) + b"\x01" + bytes(7)),
    mutated(SAFETENSORS),
    mutated(GGUF),
)


@settings(max_examples=400, deadline=None)
@given(PATHS, HEADS, st.one_of(st.just(0), st.integers(0, 2**65)), st.integers(0, 2**65))
def test_any_bytes_give_a_map_a_request_or_none(
    path: str, head: bytes, extra: int, size: int
) -> None:
    for file_size in (len(head), len(head) + extra, size):
        found = parse_tensor_map(path, head, file_size)
        if isinstance(found, NeedBytes):
            assert len(head) < found.size <= file_size
        elif isinstance(found, TensorMap):
            assert_well_formed(found, head, file_size)


def test_only_safetensors_and_gguf_files_have_maps() -> None:
    assert has_tensor_map("a/model-00001-of-00002.safetensors")
    assert has_tensor_map("model.Q4_K_M.gguf")
    assert not has_tensor_map("model.safetensors.index.json")
    assert not has_tensor_map("pytorch_model.bin")
    assert parse_tensor_map("model.bin", SAFETENSORS, len(SAFETENSORS)) is None
    assert parse_tensor_map("model.gguf", SAFETENSORS, len(SAFETENSORS)) is None
    assert parse_tensor_map("model.safetensors", GGUF, len(GGUF)) is None


# --- at and overlapping --------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> TensorMap:
    """Tensors with gaps (or none) between them, after a header."""
    position = draw(st.integers(0, 20))
    header_end, tensors = position, []
    for index in range(draw(st.integers(0, 12))):
        position += draw(st.sampled_from([0, 0, 1, 7]))
        length = draw(st.integers(1, 9))
        tensors.append(Tensor(f"t{index}", position, position + length))
        position += length
    return TensorMap(header_end, tuple(tensors))


@given(layouts(), st.data())
def test_at_and_overlapping_match_a_search_of_every_tensor(
    found: TensorMap, data: st.DataObject
) -> None:
    end_of_file = found.tensors[-1].end if found.tensors else found.header_end
    offsets = st.integers(-3, end_of_file + 3)
    for _ in range(8):
        offset = data.draw(offsets)
        holding = [tensor for tensor in found.tensors if tensor.start <= offset < tensor.end]
        assert found.at(offset) == (holding[0] if holding else None)
        start, end = sorted((data.draw(offsets), data.draw(offsets)))
        touched = [
            tensor
            for tensor in found.tensors
            if any(tensor.start <= byte < tensor.end for byte in range(start, end))
        ]
        assert found.overlapping(start, end) == touched


def test_an_empty_range_overlaps_no_tensor() -> None:
    found = TensorMap(0, (Tensor("a", 0, 10), Tensor("b", 10, 20)))
    assert found.overlapping(5, 5) == []
    assert found.overlapping(10, 10) == []
    assert found.overlapping(9, 11) == list(found.tensors)


# --- natural order -------------------------------------------------------------------------


def natural_sorted(names: list[str]) -> list[str]:
    return sorted(names, key=natural_key)


def test_natural_order_puts_numbers_in_order_of_their_value() -> None:
    assert natural_sorted(["layers.10.w", "layers.2.w", "layers.1.w"]) == [
        "layers.1.w",
        "layers.2.w",
        "layers.10.w",
    ]
    assert natural_sorted(["a.0", "a"]) == ["a", "a.0"]
    assert natural_sorted(["b", "10", "9", "a1"]) == ["9", "10", "a1", "b"]
    assert natural_sorted(["x1y10", "x1y9", "x01y2"]) == ["x01y2", "x1y9", "x1y10"]
    assert natural_key("1" + "0" * 5000) > natural_key("9" * 5000)


NAMES = st.one_of(
    st.text(max_size=12),
    st.text("a.1²٣0", max_size=12),
    st.builds(lambda digits: "1" * digits, st.integers(4000, 5000)),
)


@given(NAMES, NAMES, NAMES)
@example("1a", "a1", "²")
@example("²", "2", "a")
@example("1" * 4301, "2", "a.1")
def test_natural_order_is_a_total_order_of_any_names(a: str, b: str, c: str) -> None:
    keys = [natural_key(a), natural_key(b), natural_key(c)]
    for one in keys:
        for other in keys:
            assert (one < other) + (one == other) + (one > other) == 1
    low, middle, high = sorted(keys)
    assert low <= middle <= high and low <= high
