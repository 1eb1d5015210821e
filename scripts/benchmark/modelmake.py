"""Writes the models the model workloads load, with random weights, in a process of its own
(it imports torch; the benchmark's own process does not): ``python modelmake.py JOB.json``.

- ``llama``: a Llama-style causal LM (fp16 safetensors, sharded, with the index,
  config.json, generation_config.json) and a small byte-level BPE tokenizer that AutoTokenizer
  loads;
- ``sentence``: a small BERT with a WordPiece tokenizer, saved as a sentence-transformers
  directory (modules.json, the pooling config);
- ``gguf``: a GGUF file of F16 and F32 tensors whose sizes are no multiple of anything.

Nothing is fetched from a hub: every piece is built here. Weights come from seeded generators,
so a model written again is the same model.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

SEED = 20240601
# A few sentences the tokenizers learn from and the sentence workload embeds.
CORPUS = [
    "lazyfs mounts a model repository and loads it lazily, every block verified.",
    "The quick brown fox jumps over the lazy dog.",
    "A tensor is read the moment a loader asks for it, not before.",
    "Blocks are fetched over HTTP, hashed with SHA-256 and kept on the local disk.",
    "Sentence embeddings of a few sentences must not change with where the model is read from.",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def llama(job: dict[str, Any]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(job["dir"])
    config = LlamaConfig(**job["config"])
    with torch.device("meta"):  # no memory and no slow initialisation for weights replaced next
        model = LlamaForCausalLM(config)
    model = model.to(torch.float16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    total = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    # A shard limit a little above total/shards gives that many shards, the last the smallest.
    shard_mb = int(total / job["shards"] * 1.05) // 10**6
    model.save_pretrained(out, max_shard_size=f"{shard_mb}MB")

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    wrapped.save_pretrained(out)


def sentence(job: dict[str, Any]) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({word.strip(".,").lower() for line in CORPUS for word in line.split()})
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)] + list("0123456789-.,")
    vocab = SPECIAL + letters + [f"##{letter}" for letter in letters] + words
    ids = {token: number for number, token in enumerate(dict.fromkeys(vocab))}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    wrapped = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=True)

    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=len(ids), **job["config"])
    bert = BertModel(config)
    with tempfile.TemporaryDirectory() as plain:
        bert.save_pretrained(plain)
        wrapped.save_pretrained(plain)
        encoder = Transformer(plain, max_seq_length=64)
        pooling = Pooling(encoder.get_embedding_dimension(), "mean")
        SentenceTransformer(modules=[encoder, pooling], device="cpu").save(job["dir"])


def gguf_file(job: dict[str, Any]) -> None:
    import gguf
    import numpy as np

    rng = np.random.default_rng(SEED)
    writer = gguf.GGUFWriter(job["path"], "llama")
    writer.add_name("lazyfs bench")
    writer.add_uint32("lazyfs.bench.seed", SEED)
    for number, (rows, columns, kind) in enumerate(job["tensors"]):
        values = rng.standard_normal((rows, columns), dtype=np.float32) * 0.02
        writer.add_tensor(f"blk.{number}.weight", values.astype(kind))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


JOBS = {"llama": llama, "sentence": sentence, "gguf": gguf_file}


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    started = time.perf_counter()
    JOBS[job["kind"]](job)
    print(json.dumps({"seconds": time.perf_counter() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
