"""lazyfs.publish.sample writes a realistic model repository that the real safetensors library
loads."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from lazyfs.publish import sample
from lazyfs.publish.sample import describe_tensors, write_sample_repository

MIB = 2**20
FILES = {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "README.md",
}
NUMPY_DTYPE: dict[str, np.dtype[Any]] = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("sample") / "nested" / "repo"  # parents are created
    paths = write_sample_repository(dest, weights_size=2 * MIB, seed=0)
    assert all(p.is_absolute() and p.is_file() and p.parent == dest for p in paths)
    assert sorted(p.name for p in paths) == sorted(FILES)
    return dest


def read_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def expected_shapes(cfg: dict[str, Any]) -> dict[str, list[int]]:
    """Tensor names and shapes of a Llama decoder, in the order the sample writes them."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": [vocab, h]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [h, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, h],
            p + "post_attention_layernorm.weight": [h],
            p + "mlp.gate_proj.weight": [inter, h],
            p + "mlp.up_proj.weight": [inter, h],
            p + "mlp.down_proj.weight": [h, inter],
        }
    return shapes | {"model.norm.weight": [h], "lm_head.weight": [vocab, h]}


def test_safetensors_numpy_loads_every_tensor(repo: Path) -> None:
    path = repo / "model.safetensors"
    described = describe_tensors(path)
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(described)
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor = f.get_tensor(name)
            dtype, shape, _, _ = described[name]
            assert list(tensor.shape) == shape
            assert tensor.dtype == NUMPY_DTYPE[dtype]
            assert np.isfinite(tensor).all()
            if tensor.ndim == 2:  # weights: plausible magnitudes, not constant
                assert dtype == "F16"
                assert np.abs(tensor).min() >= 2**-11 and np.abs(tensor).max() < 2**-3
                assert tensor.astype(np.float32).std() > 0.01
            else:  # RMSNorm scales
                assert dtype == "F32"
                assert np.all(np.abs(tensor - 1.0) <= 0.1 + 1e-6)
    assert set(load_file(str(path))) == set(described)


def test_describe_tensors_matches_safetensors_bytes(repo: Path) -> None:
    path = repo / "model.safetensors"
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    assert header_len % 8 == 0
    assert data[8 : 8 + header_len].rstrip(b" ").endswith(b"}")
    described = describe_tensors(path)
    loaded = load_file(str(path))
    position = 8 + header_len
    for name, (dtype, shape, start, end) in described.items():  # contiguous, in header order
        assert start == position
        position = end
        assert data[start:end] == loaded[name].astype(NUMPY_DTYPE[dtype]).tobytes()
        assert list(loaded[name].shape) == shape
    assert position == len(data)


def test_config_agrees_with_tensors(repo: Path) -> None:
    cfg = read_json(repo / "config.json")
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["torch_dtype"] == "float16"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["num_hidden_layers"] >= 1
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    described = describe_tensors(repo / "model.safetensors")
    expected = expected_shapes(cfg)
    assert list(described) == list(expected)
    assert {name: d[1] for name, d in described.items()} == expected


@pytest.mark.parametrize("size", [2 * MIB, 64 * MIB])
def test_weights_size_is_near_target(tmp_path: Path, size: int) -> None:
    write_sample_repository(tmp_path, weights_size=size)
    path = tmp_path / "model.safetensors"
    assert abs(path.stat().st_size - size) <= 0.05 * size
    shapes = {name: d[1] for name, d in describe_tensors(path).items()}
    assert shapes == expected_shapes(read_json(tmp_path / "config.json"))


@pytest.mark.parametrize("mib", [1, 3, 5, 10, 24, 100, 256, 700, 1500, 5000])
def test_planned_size_is_near_target_for_many_sizes(mib: int) -> None:
    # Uses the private planner: computing the size is instant, writing gigabytes is not.
    target = mib * MIB
    cfg = sample._plan(target)
    assert abs(sample._file_size(cfg) - target) <= 0.05 * target
    assert cfg["num_hidden_layers"] >= 2


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path: Path) -> None:
    def files(seed: int, name: str) -> dict[str, bytes]:
        paths = write_sample_repository(tmp_path / name, weights_size=2 * MIB, seed=seed)
        return {p.name: p.read_bytes() for p in paths}

    first, again, other = files(0, "a"), files(0, "b"), files(1, "c")
    assert first == again
    assert first["model.safetensors"] != other["model.safetensors"]
    assert len(first["model.safetensors"]) == len(other["model.safetensors"])
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not np.array_equal(a["lm_head.weight"], c["lm_head.weight"])
    assert not np.array_equal(a["lm_head.weight"], a["model.embed_tokens.weight"])


def test_json_files_parse_and_agree(repo: Path) -> None:
    cfg = read_json(repo / "config.json")
    generation = read_json(repo / "generation_config.json")
    special = read_json(repo / "special_tokens_map.json")
    tok_cfg = read_json(repo / "tokenizer_config.json")
    tok = read_json(repo / "tokenizer.json")
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    assert special == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert tok_cfg["tokenizer_class"] == "LlamaTokenizer"
    assert {tok_cfg[k] for k in special} == set(special.values())

    model = tok["model"]
    vocab: dict[str, int] = model["vocab"]
    assert model["type"] == "BPE" and model["byte_fallback"] is True
    assert len(vocab) == cfg["vocab_size"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert (vocab["<unk>"], vocab["<s>"], vocab["</s>"]) == (0, 1, 2)
    assert vocab["<0x00>"] == 3 and vocab["<0xFF>"] == 258
    assert len(model["merges"]) > len(vocab) // 2
    for merge in model["merges"]:
        left, right = merge.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    for token in tok["added_tokens"]:
        assert vocab[token["content"]] == token["id"]
        assert tok_cfg["added_tokens_decoder"][str(token["id"])]["content"] == token["content"]

    readme = (repo / "README.md").read_text("utf-8")
    assert readme.startswith("---\n")
    assert f"{cfg['num_hidden_layers']} layers" in readme


def test_rejects_nonpositive_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights_size"):
        write_sample_repository(tmp_path, weights_size=0)


def safetensors_bytes(header: Any, data: bytes = b"\0" * 8) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def entry(**changes: Any) -> dict[str, Any]:
    return {"t": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]} | changes}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x10\0\0\0",
        struct.pack("<Q", 1000) + b"{}",
        struct.pack("<Q", 2**62) + b"{}" + b" " * 6,
        struct.pack("<Q", 8) + b"not json",
        struct.pack("<Q", 8) + b"\xff\xfe{}    ",
        safetensors_bytes([1, 2]),
        safetensors_bytes({"t": "F16"}),
        safetensors_bytes({"t": {"dtype": "F16", "shape": [2, 2]}}),
        safetensors_bytes(entry(dtype="Q7")),
        safetensors_bytes(entry(shape=[2, 3])),
        safetensors_bytes(entry(shape="22")),
        safetensors_bytes(entry(shape=[2, -2], data_offsets=[0, 8])),
        safetensors_bytes(entry(data_offsets=[0, 16], shape=[2, 4])),
        safetensors_bytes(entry(data_offsets=[8, 0])),
        safetensors_bytes(entry(data_offsets=[0, 8.0])),
        safetensors_bytes(entry(data_offsets=[0])),
    ],
)
def test_describe_tensors_rejects_malformed_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        describe_tensors(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_describe_tensors_accepts_minimal_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    path.write_bytes(safetensors_bytes({"__metadata__": {"format": "pt"}, **entry()}))
    start = path.stat().st_size - 8
    assert describe_tensors(path) == {"t": ("F16", [2, 2], start, start + 8)}
    assert load_file(str(path))["t"].shape == (2, 2)
