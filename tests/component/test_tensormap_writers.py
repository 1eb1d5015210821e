"""Tensor maps of files the real writers wrote (``safetensors.numpy.save_file``,
``gguf.GGUFWriter``) agree with the real readers (``safetensors.safe_open``,
``gguf.GGUFReader``) on where every tensor's bytes lie."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from lazyfs.core.tensormap import NeedBytes, TensorMap, parse_tensor_map

RNG = np.random.default_rng(0)


def assert_in_file_order(found: TensorMap, file_size: int) -> None:
    previous_end = found.header_end
    for tensor in found.tensors:
        assert previous_end <= tensor.start < tensor.end <= file_size
        previous_end = tensor.end


def map_of(path: Path) -> tuple[bytes, TensorMap]:
    data = path.read_bytes()
    found = parse_tensor_map(str(path), data, len(data))
    assert isinstance(found, TensorMap)
    assert_in_file_order(found, len(data))
    return data, found


def test_a_safetensors_map_agrees_with_safe_open(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "model.layers.10.w": RNG.random((4, 3), dtype=np.float32),
        "model.layers.2.w": RNG.random((5,)).astype(np.float16),
        "model.layers.2.b": RNG.integers(-(2**50), 2**50, size=3, dtype=np.int64),
        "model.embed": RNG.random((2, 2)),  # float64
        "ids": RNG.integers(-100, 100, size=7, dtype=np.int8),
        "mask": RNG.random(9) > 0.5,
        "empty": np.zeros((3, 0), dtype=np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(arrays, str(path), metadata={"format": "np", "source": "lazyfs tests"})
    data, found = map_of(path)
    by_name = {tensor.name: tensor for tensor in found.tensors}
    with safe_open(str(path), framework="np") as opened:
        assert opened.metadata() == {"format": "np", "source": "lazyfs tests"}
        names = set(opened.keys())
        for name in names:
            array = opened.get_tensor(name)
            if array.nbytes == 0:
                assert name not in by_name  # no bytes: nothing to fetch
                continue
            tensor = by_name[name]
            assert tensor.end - tensor.start == array.nbytes
            assert data[tensor.start : tensor.end] == array.tobytes()
    assert set(by_name) == names - {"empty"}
    assert found.tensors[-1].end == len(data)


def write_gguf(path: Path, alignment: int | None, padding: int = 1) -> None:
    """A GGUF file with metadata of every value type and four tensors, one of them quantised;
    ``padding`` characters of a string lengthen its header."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_string("t.padding", "." * padding)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60_000)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -70_000)
    writer.add_float32("t.f32", 0.25)
    writer.add_bool("t.bool", True)
    writer.add_string("t.string", "héllo")
    writer.add_uint64("t.u64", 2**63)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 1e300)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "", "wörd"] * 10)
    writer.add_array("tokenizer.ggml.scores", [0.5] * 30)
    writer.add_array("t.nested", [[1, 2, 3], [4]])
    writer.add_array("t.nested_strings", [["a", "b"], ["c"]])
    writer.add_tensor("blk.10.attn.weight", RNG.random((3, 5), dtype=np.float32))
    writer.add_tensor("blk.2.attn.weight", RNG.random(7).astype(np.float16))
    # Two rows of 64 Q8_0 weights: 34 bytes for each block of 32.
    quantised = RNG.integers(0, 256, size=(2, 68), dtype=np.uint8)
    writer.add_tensor("blk.2.ffn.weight", quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_one_past_alignment(path: Path, alignment: int | None) -> None:
    """A GGUF file whose header ends a byte past a multiple of its alignment: its tensors are
    at the next multiple, 31 bytes past the next multiple of 32 (the default)."""
    write_gguf(path, alignment)
    _, found = map_of(path)
    write_gguf(path, alignment, padding=1 + (1 - found.header_end) % (alignment or 32))


@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_a_gguf_map_agrees_with_the_gguf_reader(tmp_path: Path, alignment: int | None) -> None:
    path = tmp_path / "model.gguf"
    write_gguf_one_past_alignment(path, alignment)
    data, found = map_of(path)
    reader = gguf.GGUFReader(path)
    assert reader.alignment == (alignment or 32)
    assert reader.data_offset == found.header_end - 1 + reader.alignment
    by_name = {tensor.name: tensor for tensor in found.tensors}
    assert set(by_name) == {info.name for info in reader.tensors}
    for info in reader.tensors:
        tensor = by_name[info.name]
        assert tensor.start == info.data_offset
        # A map's tensor runs to the next one: the padding before it is less than an alignment.
        assert 0 <= tensor.end - tensor.start - int(info.n_bytes) < reader.alignment
        assert data[tensor.start : tensor.start + int(info.n_bytes)] == info.data.tobytes()
    assert found.tensors[-1].end == len(data)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, TensorMap]:
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    write_gguf_one_past_alignment(path, 128)
    data, found = map_of(path)
    return str(path), data, found


@settings(max_examples=40, deadline=None)
@given(first=st.integers(0, 10**6))
def test_a_gguf_header_fed_in_pieces_gives_the_same_map(
    gguf_file: tuple[str, bytes, TensorMap], first: int
) -> None:
    path, data, whole = gguf_file
    size = first % whole.header_end
    for _ in range(whole.header_end):
        found = parse_tensor_map(path, data[:size], len(data))
        if not isinstance(found, NeedBytes):
            break
        assert size < found.size <= whole.header_end
        size = found.size
    assert found == whole


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_gguf_header_with_bytes_changed_gives_a_map_a_request_or_none(
    gguf_file: tuple[str, bytes, TensorMap], data: st.DataObject
) -> None:
    path, original, whole = gguf_file
    changed = bytearray(original[: whole.header_end])
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(changed) - 1))
        changed[position] = data.draw(st.integers(0, 255))
    found = parse_tensor_map(path, bytes(changed), len(original))
    if isinstance(found, NeedBytes):
        assert len(changed) < found.size <= len(original)
    elif found is not None:
        assert_in_file_order(found, len(original))
