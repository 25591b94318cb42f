"""Which shard each weight of a model family belongs to, and how checkpoint keys map to canonical keys.

Canonical keys are the state-dict keys of the unsharded model class (`LlamaForCausalLM`, `BertModel`).
Pure string logic, shared by the importer (market) and the stage loader (worker); each family
(`globai.models.families`) holds its own layout.
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
    # (regex matched at the start of a checkpoint key, replacement): older layouts of the same weights
    renames: tuple[tuple[str, str], ...] = ()
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
        for pattern, replacement in self.renames:
            if re.match(pattern, checkpoint_key):
                return re.sub(pattern, replacement, checkpoint_key, count=1)
        return checkpoint_key

    def layer_prefix_of(self, index: int) -> str:
        return f"{self.layer_prefix}{index}."
