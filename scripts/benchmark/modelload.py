"""Loads a model the way its users do, in a process of its own, and says how long that took:
``python modelload.py KIND``. The benchmark's side of it is scripts/benchmark/modeljob.py.

The process first imports what the load needs (torch, transformers, ...: seconds that are no
part of any load), says ``ready`` on stdout, then waits for one JSON line on stdin naming what to
load; it answers with one JSON line: ``seconds`` (the load alone) and what the benchmark checks
the load against. Anything a library prints goes to stderr: stdout carries only those lines.

- ``causal``: ``AutoModelForCausalLM.from_pretrained(DIR, dtype=float16)`` and the tokenizer,
  then every parameter read whole (hashed with xxh3-128, which reads every byte for little CPU);
- ``tensor``: ``safe_open(FILE, framework="pt")`` and ``get_tensor`` of one tensor;
- ``gguf``: ``GGUFReader(FILE)`` (a memory map, as llama.cpp reads a file), then every tensor's
  data, front to back;
- ``sentence``: ``SentenceTransformer(DIR)`` and the embeddings of a few sentences, compared with
  a reference (``np.array_equal``) or saved as that reference.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

SENTENCES = [
    "lazyfs mounts a model repository and loads it lazily.",
    "The quick brown fox jumps over the lazy dog.",
    "Blocks are hashed with SHA-256 before a byte of them is served.",
    "A tensor is read the moment a loader asks for it.",
]


def causal() -> Callable[[dict[str, Any]], dict[str, Any]]:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported now, not in the load)
    import xxhash
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()

    def load(request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        AutoTokenizer.from_pretrained(request["path"])
        model = AutoModelForCausalLM.from_pretrained(request["path"], dtype=torch.float16)
        hashes = {}
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                data = parameter.detach().contiguous().view(torch.uint8).numpy()
                hashes[name] = xxhash.xxh3_128_hexdigest(data)
        return {"seconds": time.perf_counter() - started, "hashes": hashes}

    return load


def tensor() -> Callable[[dict[str, Any]], dict[str, Any]]:
    import torch
    import xxhash
    from safetensors import safe_open

    def load(request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        with safe_open(request["path"], framework="pt") as tensors:
            value = tensors.get_tensor(request["name"])
        seconds = time.perf_counter() - started
        data = value.contiguous().view(torch.uint8).numpy()
        return {"seconds": seconds, "hash": xxhash.xxh3_128_hexdigest(data)}

    return load


def gguf_file() -> Callable[[dict[str, Any]], dict[str, Any]]:
    import xxhash
    from gguf import GGUFReader

    def load(request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        reader = GGUFReader(request["path"])
        hashes = {}
        for item in sorted(reader.tensors, key=lambda item: item.data_offset):
            hashes[item.name] = xxhash.xxh3_128_hexdigest(item.data)
        return {"seconds": time.perf_counter() - started, "hashes": hashes}

    return load


def sentence() -> Callable[[dict[str, Any]], dict[str, Any]]:
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging

    logging.disable_progress_bar()

    def load(request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        model = SentenceTransformer(request["path"], device="cpu", local_files_only=True)
        embeddings = model.encode(SENTENCES, convert_to_numpy=True)
        seconds = time.perf_counter() - started
        if request.get("save"):
            np.save(request["reference"], embeddings)
            return {"seconds": seconds, "equal": True}
        reference = np.load(request["reference"])
        return {"seconds": seconds, "equal": bool(np.array_equal(embeddings, reference))}

    return load


KINDS = {"causal": causal, "tensor": tensor, "gguf": gguf_file, "sentence": sentence}


def main() -> int:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what libraries print goes to stderr
    load = KINDS[sys.argv[1]]()
    answers.write("ready\n")
    answers.flush()
    request = json.loads(sys.stdin.readline())
    answers.write(json.dumps(load(request)) + "\n")
    answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
