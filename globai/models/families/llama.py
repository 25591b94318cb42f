"""Llama (and SmolLM2, TinyLlama, ...): RMSNorm, rotary positions, grouped-query attention, SwiGLU."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from globai.models.families._base import RotaryDecoderFamily

FAMILY = RotaryDecoderFamily(
    name="llama",
    model_types=("llama",),
    architecture="LlamaForCausalLM",
    config_class=LlamaConfig,
    causal_lm_class=LlamaForCausalLM,
    layer_class=LlamaDecoderLayer,
    norm_class=LlamaRMSNorm,
    rotary_class=LlamaRotaryEmbedding,
)
