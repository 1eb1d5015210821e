"""A realistic sample model repository (a small Llama-style decoder) for the demo and the tests.

Standard library only. Matrices are F16 (safetensors' numpy framework cannot load BF16), norms
F32, every value finite; the same ``seed`` always gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import struct
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["describe_tensors", "write_sample_repository"]

_CHUNK = 16 * 2**20  # random bytes are generated and written at most this much at a time
_HEAD_DIM = 64
_HIDDENS = (1024, 768, 512, 384, 256, 128, 64)  # preferred first
_VOCABS = (32000, 16000, 8000, 4000, 2000)
_MAX_HEADER = 100 * 2**20  # the limit safetensors itself enforces
_ITEMSIZE = dict.fromkeys(("BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"), 1)
_ITEMSIZE |= dict.fromkeys(("I16", "U16", "F16", "BF16"), 2)
_ITEMSIZE |= dict.fromkeys(("I32", "U32", "F32"), 4) | dict.fromkeys(("I64", "U64", "F64"), 8)
# Maps the high byte of a little-endian F16: keeps the sign and forces the exponent into
# 4..11, so every value is a finite normal number with 2**-11 <= |x| < 2**-3.
_F16_HIGH = bytes((b & 0x80) | (16 + (b & 0x7F) % 32) for b in range(256))
_ALPHABET = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()"
_SPECIALS = ("<unk>", "<s>", "</s>")
# The fixed parts of the JSON files; tokenizer.json is a Llama (SentencePiece-style BPE with
# byte fallback) one, its added tokens, vocabulary and merges filled in by _tokenizer.
_STATIC: dict[str, Any] = json.loads("""{
"config.json": {"architectures": ["LlamaForCausalLM"], "attention_bias": false,
 "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
 "initializer_range": 0.02, "max_position_embeddings": 2048, "model_type": "llama",
 "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
 "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.40.0",
 "use_cache": true},
"generation_config.json": {"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2,
 "transformers_version": "4.40.0"},
"special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
"tokenizer_config.json": {"add_bos_token": true, "add_eos_token": false, "bos_token": "<s>",
 "clean_up_tokenization_spaces": false, "eos_token": "</s>", "legacy": false,
 "model_max_length": 2048, "pad_token": null, "sp_model_kwargs": {},
 "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"},
"tokenizer.json": {"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
 "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
  {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
 "pre_tokenizer": null,
 "post_processor": {"type": "TemplateProcessing",
  "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
   {"Sequence": {"id": "A", "type_id": 0}}],
  "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
   {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
  "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
 "decoder": {"type": "Sequence", "decoders": [
  {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
  {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
 "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true}}
}""")
_README = """---
license: apache-2.0
library_name: transformers
tags: [llama, sample, synthetic]
---

# lazyfs sample model

A synthetic Llama-style decoder ({num_hidden_layers} layers, hidden size {hidden_size},
vocabulary {vocab_size}) made by `lazyfs sample` with seed {seed}. Its weights are pseudo-random
F16 values: the repository has the shape of a real one, but the model says nothing useful.
"""

_Tensor = tuple[str, str, list[int]]


def _config(hidden: int, vocab: int, layers: int) -> dict[str, Any]:
    heads = hidden // _HEAD_DIM
    return {
        **_STATIC["config.json"],
        "hidden_size": hidden,
        "intermediate_size": -(-8 * hidden // 768) * 256,  # Llama: 8/3 hidden, to 256s
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": max(1, heads // 4),
        "vocab_size": vocab,
    }


def _tensors(cfg: dict[str, Any]) -> list[_Tensor]:
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * _HEAD_DIM
    layer = {"input_layernorm": [h], "self_attn.q_proj": [h, h], "self_attn.k_proj": [kv, h],
             "self_attn.v_proj": [kv, h], "self_attn.o_proj": [h, h],
             "post_attention_layernorm": [h], "mlp.gate_proj": [inter, h],
             "mlp.up_proj": [inter, h], "mlp.down_proj": [h, inter]}  # fmt: skip
    out: list[_Tensor] = [("model.embed_tokens.weight", "F16", [vocab, h])]
    for i in range(cfg["num_hidden_layers"]):
        for part, shape in layer.items():
            dtype = "F32" if len(shape) == 1 else "F16"
            out.append((f"model.layers.{i}.{part}.weight", dtype, shape))
    return [*out, ("model.norm.weight", "F32", [h]), ("lm_head.weight", "F16", [vocab, h])]


def _header(tensors: list[_Tensor]) -> tuple[bytes, int]:
    """The 8-byte length and the space-padded JSON header; the size of the data after them."""
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        end = offset + _ITEMSIZE[dtype] * math.prod(shape)
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def _file_size(cfg: dict[str, Any]) -> int:
    header, data = _header(_tensors(cfg))
    return len(header) + data


def _plan(target: int) -> dict[str, Any]:
    """A plausible config (big vocabulary, wide, not too deep) with a file near ``target`` bytes."""
    candidates = []
    for vocab, hidden in itertools.product(_VOCABS, _HIDDENS):
        fixed, one = (_file_size(_config(hidden, vocab, n)) for n in (0, 1))
        cfg = _config(hidden, vocab, max(1, round((target - fixed) / (one - fixed))))
        err = abs(_file_size(cfg) - target) / target
        layers = cfg["num_hidden_layers"]
        if err <= 0.05 and 2 <= layers <= (max(8, hidden // 16) if hidden < _HIDDENS[0] else 10**6):
            return cfg
        candidates.append((err, cfg))
    return min(candidates, key=lambda c: c[0])[1]


def _write_data(f: BinaryIO, key: str, dtype: str, nbytes: int) -> None:
    """Pseudo-random data determined by ``key`` (SHAKE-128 is about twice randbytes' speed)."""
    if dtype == "F32":  # RMSNorm scales: close to 1.0
        rng, n = random.Random(key), nbytes // 4
        f.write(struct.pack(f"<{n}f", *(1.0 + rng.uniform(-0.1, 0.1) for _ in range(n))))
        return
    for chunk, offset in enumerate(range(0, nbytes, _CHUNK)):
        buf = bytearray(
            hashlib.shake_128(f"{key}:{chunk}".encode()).digest(min(nbytes - offset, _CHUNK))
        )
        buf[1::2] = buf[1::2].translate(_F16_HIGH)
        f.write(buf)


def _added_tokens() -> list[dict[str, Any]]:
    flags = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    return [{"id": i, "content": t, **flags} for i, t in enumerate(_SPECIALS)]


def _tokenizer(vocab_size: int, rng: random.Random) -> dict[str, Any]:
    """tokenizer.json with byte-fallback tokens and synthetic (but valid) BPE merges."""
    base = [*_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *_ALPHABET]
    vocab = {tok: i for i, tok in enumerate(base)}
    pieces = list(_ALPHABET[:53])  # "▁" and the letters
    merges: list[str] = []
    while len(vocab) < vocab_size:
        left, right = rng.choice(pieces), rng.choice(pieces[1:27] if rng.random() < 0.6 else pieces)
        new = left + right
        if right.startswith("▁") or len(new) > 12 or new in vocab:
            continue
        vocab[new] = len(vocab)
        merges.append(f"{left} {right}")
        pieces.append(new)
    tok = {**_STATIC["tokenizer.json"], "added_tokens": _added_tokens()}
    tok["model"] = {**tok["model"], "vocab": vocab, "merges": merges}
    return tok


def write_sample_repository(dest: Path, weights_size: int = 2**28, seed: int = 0) -> list[Path]:
    """Write a sample model repository into ``dest`` and return the absolute paths written.

    ``model.safetensors`` is sized to within a few percent of ``weights_size`` (default 256 MiB).
    """
    if weights_size <= 0:
        raise ValueError(f"weights_size must be positive, not {weights_size}")
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    cfg = _plan(weights_size)
    tensors = _tensors(cfg)
    written = [dest / "model.safetensors"]
    with written[0].open("wb") as f:
        f.write(_header(tensors)[0])
        for name, dtype, shape in tensors:
            _write_data(f, f"{seed}:{name}", dtype, _ITEMSIZE[dtype] * math.prod(shape))
    tok_cfg = {**_STATIC["tokenizer_config.json"], "added_tokens_decoder": {}}
    for token in _added_tokens():
        tok_cfg["added_tokens_decoder"][str(token.pop("id"))] = token
    docs: dict[str, Any] = {
        **_STATIC,
        "config.json": cfg,
        "tokenizer_config.json": tok_cfg,
        "tokenizer.json": _tokenizer(cfg["vocab_size"], random.Random(f"tokenizer-{seed}")),
        "README.md": _README.format(seed=seed, **cfg),
    }
    for name, doc in docs.items():
        if not isinstance(doc, str):
            sort = name != "tokenizer.json"  # keep the vocabulary in id order
            doc = json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=sort) + "\n"
        written.append(dest / name)
        written[-1].write_text(doc, "utf-8")
    return written


def describe_tensors(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """Parse a safetensors header: name -> (dtype, shape, start, end), absolute file offsets."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{path}: not a safetensors file (header length {n}, {size} bytes)")
        raw = f.read(n)
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path}: header is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    base, out = 8 + n, {}
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = isinstance(shape, list) and all(type(i) is int for i in [*shape, start, end])
            ok = ok and 0 <= start <= end <= size - base and min(shape, default=0) >= 0
            ok = ok and end - start == _ITEMSIZE[dtype] * math.prod(shape)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: malformed header entry for tensor {name!r}")
        out[name] = (dtype, shape, base + start, base + end)
    return out
