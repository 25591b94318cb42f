"""Which shard each weight of a model family belongs to, and how checkpoint keys map to canonical keys.

Canonical keys are the state-dict keys of the unsharded model class (`LlamaForCausalLM`, `BertModel`).
Pure string logic, shared by the importer (market) and the stage loader (worker).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from globai.models.errors import UnsupportedModelError
from globai.models.manifest import EMBED, HEAD, layer_shard_name


@dataclass(frozen=True)
class FamilyLayout:
    family: str
    task: str
    architecture: str  # the unsharded HF class the canonical keys belong to
    layer_prefix: str  # canonical prefix of layer N is layer_prefix + f"{N}."
    embed_prefixes: tuple[str, ...]
    head_prefixes: tuple[str, ...]
    # checkpoint key prefixes stripped on import (task heads wrapped around the base model)
    strip_prefixes: tuple[str, ...] = ()
    # keys dropped on import: buffers the model rebuilds itself and heads we do not serve
    ignore: tuple[str, ...] = ()

    def shard_of(self, key: str) -> str | None:
        """Shard name for a canonical key, or None for keys that are not served."""
        if any(re.fullmatch(p, key) for p in self.ignore):
            return None
        if key.startswith(self.layer_prefix):
            index = key[len(self.layer_prefix) :].split(".", 1)[0]
            if index.isdigit():
                return layer_shard_name(int(index))
        if key.startswith(self.embed_prefixes):
            return EMBED
        if key.startswith(self.head_prefixes):
            return HEAD
        raise UnsupportedModelError(f"{self.family} weight {key!r} belongs to no known shard")

    def canonical(self, checkpoint_key: str) -> str:
        for prefix in self.strip_prefixes:
            if checkpoint_key.startswith(prefix):
                return checkpoint_key[len(prefix) :]
        return checkpoint_key

    def layer_prefix_of(self, index: int) -> str:
        return f"{self.layer_prefix}{index}."


LLAMA = FamilyLayout(
    family="llama",
    task="causal-lm",
    architecture="LlamaForCausalLM",
    layer_prefix="model.layers.",
    embed_prefixes=("model.embed_tokens.",),
    head_prefixes=("model.norm.", "lm_head."),
    ignore=(r"model\.rotary_emb\..*", r".*\.rotary_emb\.inv_freq"),
)

BERT = FamilyLayout(
    family="bert",
    task="embedding",
    architecture="BertModel",
    layer_prefix="encoder.layer.",
    embed_prefixes=("embeddings.",),
    head_prefixes=("pooler.",),
    strip_prefixes=("bert.",),
    # position_ids is a buffer BertEmbeddings rebuilds; cls.* is the pre-training head, not served
    ignore=(r"embeddings\.position_ids", r"cls\..*"),
)

_BY_MODEL_TYPE = {"llama": LLAMA, "bert": BERT}
_BY_FAMILY = {layout.family: layout for layout in _BY_MODEL_TYPE.values()}


def layout_for_model_type(model_type: str) -> FamilyLayout:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise UnsupportedModelError(f"model_type {model_type!r} (supported: {known})") from None


def layout_for_family(family: str) -> FamilyLayout:
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise UnsupportedModelError(f"family {family!r}") from None
