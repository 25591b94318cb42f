"""Gemma: embeddings scaled by sqrt(hidden), RMSNorm with (1 + weight), GeGLU, tied embeddings."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GemmaConfig, GemmaForCausalLM, PretrainedConfig
from transformers.models.gemma.modeling_gemma import (
    GemmaDecoderLayer,
    GemmaRMSNorm,
    GemmaRotaryEmbedding,
    GemmaTextScaledWordEmbedding,
)

from globai.models.families._base import TINY_INIT, RotaryDecoderFamily


class GemmaFamily(RotaryDecoderFamily):
    def materialise_buffers(self, module: nn.Module, device: torch.device) -> None:
        # The scale is a non-persistent buffer (not in checkpoints); `from_config(dtype=...)` creates it in the
        # model dtype (sqrt(2048) is 45.25 in bfloat16), so build it the same way.
        if isinstance(module, GemmaTextScaledWordEmbedding):
            scale = torch.tensor(module.scalar_embed_scale, dtype=module.weight.dtype, device=device)
            module.embed_scale = scale  # type: ignore[assignment]  # assigning a tensor to a buffer name keeps it a buffer


def _embedding(config: PretrainedConfig) -> nn.Module:
    return GemmaTextScaledWordEmbedding(
        config.vocab_size, config.hidden_size, config.pad_token_id, embed_scale=config.hidden_size**0.5
    )


FAMILY = GemmaFamily(
    name="gemma",
    model_types=("gemma",),
    architecture="GemmaForCausalLM",
    config_class=GemmaConfig,
    causal_lm_class=GemmaForCausalLM,
    layer_class=GemmaDecoderLayer,
    norm_class=GemmaRMSNorm,
    rotary_class=GemmaRotaryEmbedding,
    embedding=_embedding,
    tiny_extra=lambda hidden: {
        **TINY_INIT,
        "head_dim": hidden // max(1, hidden // 64),
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
)
