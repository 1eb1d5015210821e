"""The models the model workloads load: a Llama-style causal LM in sharded safetensors, a GGUF
file and a sentence-transformers BERT, all with random weights, written once into WORK/models by
scripts/benchmark/modelmake.py (again with --fresh) and served by nginx through a link in the
served tree. Beside each model, outside what is served, is its reference: what a load of the
local copy gave (per-tensor hashes, or the embeddings), which every load elsewhere must equal.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from lazyfs.core.manifest import MANIFEST_NAME
from scripts.benchmark.commands import StepError, progress
from scripts.benchmark.modeljob import load_once, make
from scripts.benchmark.reads import MIB

MAKE_TIMEOUT = 600.0
TENSOR_TARGET = 8 * MIB  # the first tensor read: the one of the last shard closest to this size

# hidden 2048, 16 layers, GQA: 836M parameters, 1.67 GB in fp16 (4 shards); quick: 199 MB (2)
LLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16}
LLAMA_QUICK = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8}
LLAMA_COMMON = {"num_key_value_heads": 4, "vocab_size": 32000, "head_dim": 64}
# MiniLM-like: 6 layers of 384 (its vocabulary is small, so about 43 MB of fp32)
SENTENCE = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 128,
}
GGUF_BYTES, GGUF_QUICK_BYTES = 384 * MIB, 96 * MIB


def gguf_tensors(total: int) -> list[tuple[int, int, str]]:
    """Shapes (odd, prime-ish: no tensor starts or ends on a block boundary but by chance) and
    types, F16 twice for each F32, until ``total`` bytes."""
    tensors, size, number = [], 0, 0
    while size < total:
        rows, columns = 1531 + 38 * number, 2053 - 14 * number
        kind = "float32" if number % 3 == 2 else "float16"
        tensors.append((rows, columns, kind))
        size += rows * columns * (4 if kind == "float32" else 2)
        number += 1
    return tensors


@dataclass(frozen=True)
class TensorPlace:
    """Where one tensor's bytes lie in a safetensors file."""

    name: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def safetensors_places(path: Path) -> list[TensorPlace]:
    """Every tensor of a safetensors file, in file order, from its header."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    base = 8 + length
    places = [
        TensorPlace(name, base + info["data_offsets"][0], base + info["data_offsets"][1])
        for name, info in header.items()
        if name != "__metadata__"
    ]
    return sorted(places, key=lambda place: place.start)


def first_tensor(path: Path) -> TensorPlace:
    """The tensor of ``path`` closest in size to TENSOR_TARGET, the nearest to the middle of the
    file among those."""
    places = safetensors_places(path)
    middle = path.stat().st_size / 2
    return min(
        places,
        key=lambda p: (abs(p.size - TENSOR_TARGET), abs((p.start + p.end) / 2 - middle)),
    )


def range_hash(path: Path, start: int, end: int) -> str:
    """xxh3-128 of bytes [start, end) of ``path`` (what modelload.py hashes a tensor with)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        handle.seek(start)
        left = end - start
        while left:
            chunk = handle.read(min(left, 16 * MIB))
            if not chunk:
                raise StepError(f"{path} ends before byte {end}")
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def served_files(directory: Path) -> list[str]:
    """The files a repository directory publishes, relative paths, as its manifest lists them."""
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    return [entry["path"] for entry in manifest["files"]]


def block_size(directory: Path) -> int:
    size: int = json.loads((directory / MANIFEST_NAME).read_text())["block_size"]
    return size


def tree_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


class Models:
    """The three models of a run (their quick sizes with --quick), in WORK/models, linked into
    the served tree as llama/, gguf/ and sentence/."""

    def __init__(self, work: Path, www: Path, quick: bool) -> None:
        self.work, self.quick = work, quick
        self.logs = work / "logs"
        home = work / "models"
        flavour = "quick" if quick else "full"
        self.homes = {
            "llama": home / f"llama-{flavour}",
            "gguf": home / f"gguf-{flavour}",
            "sentence": home / "sentence",
        }
        self.served_dirs = {name: www / f"model-{name}" for name in self.homes}

    @property
    def llama(self) -> Path:
        return self.served_dirs["llama"]

    @property
    def gguf(self) -> Path:
        return self.served_dirs["gguf"] / "model.gguf"

    @property
    def sentence(self) -> Path:
        return self.served_dirs["sentence"]

    @property
    def last_shard(self) -> Path:
        shards = sorted(self.llama.glob("model-*-of-*.safetensors"))
        if not shards:
            raise StepError(f"no safetensors shards in {self.llama}")
        return shards[-1]

    def reference(self, name: str) -> Path:
        return self.homes[name].with_suffix(".reference.json")

    def embeddings(self) -> Path:
        return self.homes["sentence"].with_suffix(".embeddings.npy")

    def reference_hashes(self, name: str) -> dict[str, str]:
        hashes: dict[str, str] = json.loads(self.reference(name).read_text())["hashes"]
        return hashes

    def describe(self) -> dict[str, str]:
        """What the tables' titles say of the models (Parameters' fields)."""
        llama_files = [path for path in self.llama.iterdir() if path.suffix == ".safetensors"]
        llama_size = sum(path.stat().st_size for path in llama_files)
        tensor = first_tensor(self.last_shard)
        tensors = len(self.reference_hashes("gguf"))
        sentence_size = sum(
            path.stat().st_size for path in self.sentence.rglob("*.safetensors") if path.is_file()
        )
        return {
            "llama": f"{llama_size / 1e9:.2f} GB fp16, {len(llama_files)} shards",
            "first_tensor": tensor.name,
            "first_tensor_size": f"{tensor.size / MIB:.1f} MiB",
            "gguf": f"{self.gguf.stat().st_size / 1e6:.0f} MB, {tensors} F16/F32 tensors",
            "sentence": f"{sentence_size / 1e6:.0f} MB fp32",
        }

    # -- writing them --
    def prepare(self, fresh: bool) -> None:
        """Write what is missing (everything with ``fresh``), then link it into the tree."""
        for name, home in self.homes.items():
            done = self.reference(name)
            if fresh or not done.exists() or not home.is_dir():
                shutil.rmtree(home, ignore_errors=True)
                done.unlink(missing_ok=True)
                home.mkdir(parents=True)
                progress(f"writing the {name} model to {home}")
                getattr(self, f"make_{name}")(home)
            link = self.served_dirs[name]
            if link.is_symlink() or link.exists():
                link.unlink()
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(home)

    def make_llama(self, home: Path) -> None:
        size = LLAMA_QUICK if self.quick else LLAMA
        heads = size["hidden_size"] // LLAMA_COMMON["head_dim"]
        config = {**size, **LLAMA_COMMON, "num_attention_heads": heads}
        job = {"kind": "llama", "dir": str(home), "shards": 2 if self.quick else 4}
        make({**job, "config": config}, self.work, self.logs, MAKE_TIMEOUT)
        answer = load_once("causal", self.work, self.logs, MAKE_TIMEOUT, path=home)
        self.reference("llama").write_text(json.dumps({"hashes": answer["hashes"]}))

    def make_gguf(self, home: Path) -> None:
        tensors = gguf_tensors(GGUF_QUICK_BYTES if self.quick else GGUF_BYTES)
        path = home / "model.gguf"
        make({"kind": "gguf", "path": str(path), "tensors": tensors}, self.work, self.logs, 600)
        answer = load_once("gguf", self.work, self.logs, MAKE_TIMEOUT, path=path)
        self.reference("gguf").write_text(json.dumps({"hashes": answer["hashes"]}))

    def make_sentence(self, home: Path) -> None:
        job = {"kind": "sentence", "dir": str(home), "config": SENTENCE}
        make(job, self.work, self.logs, MAKE_TIMEOUT)
        request = {"path": home, "reference": self.embeddings(), "save": True}
        load_once("sentence", self.work, self.logs, MAKE_TIMEOUT, **request)
        self.reference("sentence").write_text(json.dumps({"embeddings": str(self.embeddings())}))
