"""Deterministic tiny models of every decoder family, for demos and tests (no hub downloads exist here).

Same arguments -> byte-identical shards, tokenizer and manifest digest: the tokenizer is a byte-level BPE
trained locally on the embedded corpus below, and the weights come from `torch.manual_seed(seed)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from globai.models.build import build_causal_lm
from globai.models.errors import ManifestError
from globai.models.families import get_family
from globai.models.importer import import_checkpoint
from globai.models.manifest import ALLOWED_DTYPES, Manifest

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
HF_DIR = "hf"

# Small, varied English text so the BPE learns real merges; part of the model's identity: edit with care.
CORPUS = """\
The quick brown fox jumps over the lazy dog while the farmer watches from the porch.
A marketplace lets people rent out idle machines to run large language models for others.
Workers stake tokens, serve layers of a model, and are paid for work that passes verification.
Each stage of the pipeline keeps a cache of keys and values for every open session.
When a worker disappears, the coordinator replays the recorded inputs on a replacement.
Greedy decoding picks the most likely token at every step; sampling draws from the distribution.
Once upon a time there was a little robot who wanted to learn how to write poems about the sea.
The sea was calm, the sky was grey, and the gulls were circling above the fishing boats.
Numbers like 1, 2, 3, 42, 100 and 2026 appear in text, and so do symbols such as +, -, = and %.
def add(a, b):\n    return a + b\n
for i in range(10):\n    print(i * i)\n
She said: "Verification must be cheap for the verifier and expensive for the cheater."
Training rounds aggregate pseudo-gradients from many workers with a robust mean.
Tokens are hashed, signed and committed so that a wrong answer becomes provable evidence.
In the morning the market opens; by night thousands of requests have been served.
Hello world! How are you today? I am fine, thank you, and you?
Layers, heads, embeddings, attention, normalization, residual connections and projections.
"""


def train_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """Byte-level BPE trained on CORPUS; every byte is in the alphabet, so any text encodes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS.splitlines()
    # Repeat so pair counts are large and ties rarer; training is deterministic for a fixed input order.
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    return tokenizer


def tiny_llama_config(
    *, hidden: int, layers: int, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, dtype: str = "float32"
) -> dict[str, Any]:
    return get_family("llama").tiny_config(
        hidden=hidden, layers=layers, vocab_size=vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, dtype=dtype
    )


def build_tiny_llama(
    out: Path,
    *,
    hidden: int = 256,
    layers: int = 8,
    seed: int = 0,
    vocab_size: int = 512,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Manifest:
    """A tiny Llama (see `build_tiny_model`)."""
    return build_tiny_model(
        out,
        family="llama",
        hidden=hidden,
        layers=layers,
        seed=seed,
        vocab_size=vocab_size,
        dtype=dtype,
        overwrite=overwrite,
    )


def tiny_model_name(family: str, hidden: int, layers: int, seed: int) -> str:
    return f"tiny-{family}-h{hidden}-l{layers}-s{seed}"


def build_tiny_model(
    out: Path,
    *,
    family: str = "llama",
    hidden: int = 256,
    layers: int = 8,
    seed: int = 0,
    vocab_size: int = 512,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Manifest:
    """Write an HF-style checkpoint of a decoder family to `out/hf` and its sharded form to `out`."""
    model_family = get_family(family)
    if model_family.task != "causal-lm":
        raise ManifestError(f"tiny models are causal LMs; {family} is an {model_family.task} family")
    if hidden % 64 and hidden >= 64 or hidden < 8 or layers < 1:
        raise ManifestError("hidden must be a multiple of 64 (or < 64) and layers >= 1")
    if dtype not in ALLOWED_DTYPES:
        raise ManifestError(f"dtype must be one of {ALLOWED_DTYPES}")
    out = Path(out)
    hf = out / HF_DIR
    hf.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    ids: dict[str, int] = {}
    for special in (PAD, BOS, EOS):
        token_id = tokenizer.token_to_id(special)
        if token_id is None:  # cannot happen with the trainer's special_tokens, but never guess an id
            raise ManifestError(f"tokenizer lacks {special}")
        ids[special] = token_id
    config_dict = model_family.tiny_config(
        hidden=hidden,
        layers=layers,
        vocab_size=tokenizer.get_vocab_size(),
        pad_id=ids[PAD],
        bos_id=ids[BOS],
        eos_id=ids[EOS],
        dtype=dtype,
    )
    model = build_causal_lm(config_dict, seed=seed, dtype=getattr(torch, dtype))
    # Plain safetensors (what save_pretrained writes, minus its progress bar); from_pretrained loads it as is.
    # A head tied to the embeddings is left out, as save_pretrained does (safetensors refuses shared tensors);
    # the importer gives the head shard its own copy.
    tied = set(model_family.tied) if model.config.tie_word_embeddings else set()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": PAD,
                "padding_side": "left",
                "model_max_length": model.config.max_position_embeddings,
            },
            indent=1,
            sort_keys=True,
        )
    )
    # The manifest carries our config dict (not save_pretrained's), so it does not depend on library defaults.
    (hf / "config.json").write_text(json.dumps(config_dict, indent=1, sort_keys=True))
    name = tiny_model_name(family, hidden, layers, seed)
    return import_checkpoint(hf, out, name=name, overwrite=overwrite)
