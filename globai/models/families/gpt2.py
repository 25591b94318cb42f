"""GPT-2: learned position embeddings added at the input (no rotary), LayerNorm, Conv1D projections, tied head.

Canonical keys are `GPT2LMHeadModel`'s (`transformer.h.N.attn.c_attn.weight`); checkpoints saved from a bare
`GPT2Model` (the original OpenAI release: `h.0.attn.c_attn.weight`, `wte.weight`) are renamed on import, and
their precomputed causal-mask buffers (`attn.bias`, `attn.masked_bias`) dropped.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from globai.models.families._base import CACHE_ARG, TINY_INIT, CausalLMHead, ModelFamily, StageModules, layer_index
from globai.models.layout import FamilyLayout
from globai.models.manifest import EMBED, HEAD


class GPT2Embeddings(nn.Module):
    """Token + learned position embeddings, as `GPT2Model.forward` adds them (dropout is off in eval)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        embeds: torch.Tensor = self.wte(input_ids)
        return embeds + self.wpe(positions).to(embeds.device)


class GPT2Family(ModelFamily):
    def tiny_config(
        self, *, hidden: int, layers: int, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, dtype: str
    ) -> dict[str, Any]:
        return {
            "architectures": [self.architecture],
            "model_type": "gpt2",
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": max(1, hidden // 64),
            "n_positions": 1024,
            "vocab_size": vocab_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True,
            "pad_token_id": pad_id,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "dtype": dtype,
            **TINY_INIT,
        }

    def init_model(self, config: PretrainedConfig) -> PreTrainedModel:
        return GPT2LMHeadModel(cast(GPT2Config, config))

    def shard_module(
        self, config: PretrainedConfig, shard: str, *, has_tensors: bool
    ) -> tuple[nn.Module, dict[str, str]]:
        if shard == EMBED:
            return GPT2Embeddings(config), {"transformer.wte.": "wte.", "transformer.wpe.": "wpe."}
        if shard == HEAD:
            norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
            head = CausalLMHead(norm, nn.Linear(config.hidden_size, config.vocab_size, bias=False))
            return head, {"transformer.ln_f.": "norm.", "lm_head.": "lm_head."}
        index = layer_index(shard)
        return GPT2Block(config, layer_idx=index), {self.layout.layer_prefix_of(index): ""}

    def new_cache(self, config: PretrainedConfig) -> DynamicCache:
        return DynamicCache(config=config)

    def kv_bytes_per_token(self, config: PretrainedConfig, layers: int, itemsize: int) -> int:
        return 2 * layers * config.hidden_size * itemsize

    def can_merge_caches(self, config: PretrainedConfig, layers: range) -> bool:
        return True  # full attention in every layer

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
        hidden = m.embed(inputs, positions) if m.embed is not None else inputs
        mask = create_causal_mask(
            config=m.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            position_ids=positions,
            layer_idx=first_layer,
            **{CACHE_ARG: cache},
        )
        for block in m.layers:
            hidden = block(
                hidden,
                attention_mask=mask,
                use_cache=cache is not None,
                position_ids=positions,
                **{CACHE_ARG: cache},
            )
        return hidden


FAMILY = GPT2Family(
    name="gpt2",
    model_types=("gpt2",),
    task="causal-lm",
    architecture="GPT2LMHeadModel",
    config_class=GPT2Config,
    layout=FamilyLayout(
        family="gpt2",
        task="causal-lm",
        architecture="GPT2LMHeadModel",
        layer_prefix="transformer.h.",
        embed_prefixes=("transformer.wte.", "transformer.wpe."),
        head_prefixes=("transformer.ln_f.", "lm_head."),
        renames=((r"(wte|wpe|h|ln_f)\.", r"transformer.\1."),),
        ignore=(r".*\.attn\.(bias|masked_bias)",),
    ),
    tied={"lm_head.weight": "transformer.wte.weight"},
)
