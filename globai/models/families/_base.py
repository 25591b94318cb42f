"""What a model family knows, and the machinery shared by the decoders built like Llama.

A family is one object: its transformers config class, which weight key goes to which shard (`FamilyLayout`),
how to build the module of one shard (embeddings, one layer, final norm + head) on the `meta` device, and how a
stage runs its layers (positions, rotary embeddings, the attention mask). The importer, the manifest, the
reference model, the worker's stage and the tiny-model builder look a family up by name
(`globai.models.families.get_family`) and never name Llama or BERT themselves.

Stage execution follows TOOLCHAIN.md ("running a range of decoder layers"): each stage has its own cache, so
the mask is always built with `layer_idx` = the stage's first layer (lower layers of its cache stay empty),
and always built (eager attention would read `None` as "no mask").
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from globai.models.errors import ManifestError
from globai.models.layout import FamilyLayout
from globai.models.manifest import EMBED, HEAD

Task = Literal["causal-lm", "embedding"]

# transformers 5.24 renamed the cache argument of layers and mask builders (`past_key_values` -> `cache`; the
# old name warns until 5.40); pass whichever this version takes.
CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"

# One attention kernel everywhere (stages and the unsharded reference): bit-identical results depend on it.
ATTN_IMPLEMENTATION = "sdpa"


@dataclass
class StageModules:
    """What one stage holds: embeddings on stage 0, its layers, the head on the last stage."""

    config: PretrainedConfig
    embed: nn.Module | None
    layers: nn.ModuleList  # layers[i] is global layer start + i
    head: nn.Module | None
    rotary: nn.Module | None  # rotary decoders only: (cos, sin) from positions; recomputed from the config


class CausalLMHead(nn.Module):
    """Final norm + LM head: what the last stage of a decoder adds after its layers."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.lm_head = lm_head


class ModelFamily(ABC):
    """One model architecture as the project serves it. Subclasses fill in modules and execution."""

    def __init__(
        self,
        *,
        name: str,
        model_types: tuple[str, ...],
        task: Task,
        architecture: str,
        config_class: type[PretrainedConfig],
        layout: FamilyLayout,
        tied: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.model_types = model_types  # HF `config.model_type` values imported as this family
        self.task = task
        self.architecture = architecture  # the unsharded HF class whose state-dict keys are canonical
        self.config_class = config_class
        self.layout = layout
        # head key -> embedding key it may be tied to: the head shard gets its own copy (self-contained stage)
        self.tied: dict[str, str] = dict(tied or {})

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # --- configs ------------------------------------------------------------------------------------------
    def hf_config(self, config: Mapping[str, Any]) -> PretrainedConfig:
        """The transformers config (never `trust_remote_code`), with the project's attention kernel pinned."""
        try:
            hf = self.config_class(**config)
        except (TypeError, ValueError, StrictDataclassError) as exc:  # transformers 5 validates configs on init
            raise ManifestError(f"invalid {self.name} config: {' '.join(str(exc).split())}") from None
        hf._attn_implementation = ATTN_IMPLEMENTATION
        return hf

    def dims(self, config: Mapping[str, Any]) -> tuple[int, int, int]:
        """(layers, hidden size, vocabulary size), whatever the config calls them (GPT-2 says n_layer, n_embd)."""
        hf = self.hf_config(config)
        return int(hf.num_hidden_layers), int(hf.hidden_size), int(hf.vocab_size)

    def max_positions(self, config: Mapping[str, Any]) -> int:
        """How many positions the model takes (GPT-2 calls it n_positions)."""
        return int(self.hf_config(config).max_position_embeddings)

    @abstractmethod
    def tiny_config(
        self, *, hidden: int, layers: int, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, dtype: str
    ) -> dict[str, Any]:
        """A small config of this family for tests and demos (weights come from a seed)."""

    # --- whole model (reference, tiny builder) ------------------------------------------------------------
    def full_model(self, config: PretrainedConfig, dtype: torch.dtype, *, head_tensors: bool) -> PreTrainedModel:
        """The unsharded model class, built as `from_pretrained` builds it (weights in `dtype`, RoPE in float32)."""
        model: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model

    @abstractmethod
    def init_model(self, config: PretrainedConfig) -> PreTrainedModel:
        """A freshly initialised unsharded model (random weights from the global torch seed)."""

    # --- one shard ----------------------------------------------------------------------------------------
    @abstractmethod
    def shard_module(
        self, config: PretrainedConfig, shard: str, *, has_tensors: bool
    ) -> tuple[nn.Module, dict[str, str]]:
        """The module of shard `embed`, `layer.N` or `head` (caller builds it on `meta`), and how its keys map:
        {canonical key prefix: module key prefix}."""

    def materialise_buffers(self, module: nn.Module, device: torch.device) -> None:
        """Rebuild non-persistent buffers that checkpoints do not carry (default: none)."""
        return None

    def position_module(self, config: PretrainedConfig, device: torch.device) -> nn.Module | None:
        """A weightless module every stage needs (rotary embeddings), or None."""
        return None

    # --- execution ----------------------------------------------------------------------------------------
    def new_cache(self, config: PretrainedConfig) -> DynamicCache | None:
        """An empty KV cache for one session of a stage (None for encoders)."""
        return None

    def kv_bytes_per_token(self, config: PretrainedConfig, layers: int, itemsize: int) -> int:
        """KV-cache bytes one token of one sequence costs on `layers` layers (0 for encoders)."""
        return 0

    def can_merge_caches(self, config: PretrainedConfig, layers: range) -> bool:
        """Whether these layers' caches of several sessions can be left-padded into one batch (full attention
        only: a sliding-window cache trims itself per session). Default: no."""
        return False

    @abstractmethod
    def forward(
        self,
        m: StageModules,
        inputs: torch.Tensor,
        *,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: DynamicCache | None,
        first_layer: int,
    ) -> torch.Tensor:
        """Embed (stage 0) and run the stage's layers (decoders always get positions; encoders may not).
        `attention_mask`: 0/1 [B, cached + new] or None."""

    def head(self, m: StageModules, hidden: torch.Tensor, *, last_token_only: bool) -> torch.Tensor:
        """Final norm + LM head on the last decoder stage: hidden states -> logits."""
        assert isinstance(m.head, CausalLMHead)  # internal invariant: only decoders reach here
        hidden = m.head.norm(hidden)
        if last_token_only:
            hidden = hidden[:, -1:, :]
        logits: torch.Tensor = m.head.lm_head(hidden)
        return logits


def layer_index(shard: str) -> int:
    return int(shard.split(".", 1)[1])


# Tiny random models of the newer families start from a wider init than transformers' 0.02: with small weights
# a model with tied embeddings just repeats its last input token, and an exact-match test on that proves little.
# (Llama keeps the default: its tiny models' bytes and digests predate this.)
TINY_INIT = {"initializer_range": 0.2}


def tiny_attention_dims(hidden: int) -> dict[str, int]:
    """Heads of 64 (one head below 64), grouped-query attention 2:1 when there are >= 2 heads, SwiGLU width."""
    heads = max(1, hidden // 64)
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2 if heads % 2 == 0 else heads,
        "intermediate_size": 64 * math.ceil(hidden * 8 / 3 / 64),
    }


class RotaryDecoderFamily(ModelFamily):
    """Decoders laid out like Llama: `model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`, rotary
    positions computed once per forward and handed to every layer. Llama, Mistral, Qwen2, Phi-3 and Gemma
    differ only in their classes (fused projections, biases, norms, embedding scale) and in the config."""

    def __init__(
        self,
        *,
        name: str,
        model_types: tuple[str, ...],
        architecture: str,
        config_class: type[PretrainedConfig],
        causal_lm_class: type[PreTrainedModel],
        layer_class: type[nn.Module],
        norm_class: type[nn.Module],
        rotary_class: type[nn.Module],
        embedding: Callable[[PretrainedConfig], nn.Module] | None = None,
        tiny_extra: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            model_types=model_types,
            task="causal-lm",
            architecture=architecture,
            config_class=config_class,
            layout=FamilyLayout(
                family=name,
                task="causal-lm",
                architecture=architecture,
                layer_prefix="model.layers.",
                embed_prefixes=("model.embed_tokens.",),
                head_prefixes=("model.norm.", "lm_head."),
                ignore=(r"model\.rotary_emb\..*", r".*\.rotary_emb\.inv_freq"),
            ),
            tied={"lm_head.weight": "model.embed_tokens.weight"},
        )
        self.causal_lm_class = causal_lm_class
        self.layer_class = layer_class
        self.norm_class = norm_class
        self.rotary_class = rotary_class
        self.embedding = embedding or (lambda c: nn.Embedding(c.vocab_size, c.hidden_size, c.pad_token_id))
        self.tiny_extra = tiny_extra or (lambda hidden: {})

    def tiny_config(
        self, *, hidden: int, layers: int, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, dtype: str
    ) -> dict[str, Any]:
        return {
            "architectures": [self.architecture],
            "model_type": self.model_types[0],
            **tiny_attention_dims(hidden),
            "num_hidden_layers": layers,
            "vocab_size": vocab_size,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "pad_token_id": pad_id,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "dtype": dtype,
            **self.tiny_extra(hidden),
        }

    def init_model(self, config: PretrainedConfig) -> PreTrainedModel:
        return self.causal_lm_class(config)

    def shard_module(
        self, config: PretrainedConfig, shard: str, *, has_tensors: bool
    ) -> tuple[nn.Module, dict[str, str]]:
        if shard == EMBED:
            return self.embedding(config), {"model.embed_tokens.": ""}
        if shard == HEAD:
            norm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
            head = CausalLMHead(norm, nn.Linear(config.hidden_size, config.vocab_size, bias=False))
            return head, {"model.norm.": "norm.", "lm_head.": "lm_head."}
        index = layer_index(shard)
        return self.layer_class(config, layer_idx=index), {self.layout.layer_prefix_of(index): ""}

    def position_module(self, config: PretrainedConfig, device: torch.device) -> nn.Module:
        return self.rotary_class(config=config).to(device)

    def new_cache(self, config: PretrainedConfig) -> DynamicCache:
        # Built from the config, as `generate` builds it: sliding-window layers get sliding cache layers.
        return DynamicCache(config=config)

    def kv_bytes_per_token(self, config: PretrainedConfig, layers: int, itemsize: int) -> int:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * layers * config.num_key_value_heads * head_dim * itemsize

    def can_merge_caches(self, config: PretrainedConfig, layers: range) -> bool:
        return all(self.layer_type(config, index) == "full_attention" for index in layers)

    def layer_type(self, config: PretrainedConfig, index: int) -> str:
        """`full_attention` or `sliding_attention`, as the model's own forward decides it."""
        types = getattr(config, "layer_types", None)
        if types:
            return str(types[index])
        return "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"

    def forward(
        self,
        m: StageModules,
        inputs: torch.Tensor,
        *,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: DynamicCache | None,
        first_layer: int,
    ) -> torch.Tensor:
        assert positions is not None  # the decoder stage always passes them (internal invariant)
        hidden = m.embed(inputs) if m.embed is not None else inputs
        masks: dict[str, Any] = {}
        for index in range(first_layer, first_layer + len(m.layers)):
            kind = self.layer_type(m.config, index)
            if kind not in masks:
                make = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
                # layer_idx: the first layer of this kind in the stage (the stage's cache has no lower layers)
                masks[kind] = make(
                    config=m.config,
                    inputs_embeds=hidden,
                    attention_mask=attention_mask,
                    position_ids=positions,
                    layer_idx=index,
                    **{CACHE_ARG: cache},
                )
        assert m.rotary is not None  # rotary decoders always have one (internal invariant)
        position_embeddings = m.rotary(hidden, position_ids=positions)
        for offset, layer in enumerate(m.layers):
            hidden = layer(
                hidden,
                attention_mask=masks[self.layer_type(m.config, first_layer + offset)],
                position_ids=positions,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
                **{CACHE_ARG: cache},
            )
        return hidden
