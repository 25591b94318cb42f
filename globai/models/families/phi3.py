"""Phi-3: fused projections (`qkv_proj`, `gate_up_proj`) and partial rotary embeddings."""

from __future__ import annotations

from transformers import Phi3Config, Phi3ForCausalLM
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3RMSNorm, Phi3RotaryEmbedding

from globai.models.families._base import TINY_INIT, RotaryDecoderFamily

FAMILY = RotaryDecoderFamily(
    name="phi3",
    model_types=("phi3",),
    architecture="Phi3ForCausalLM",
    config_class=Phi3Config,
    causal_lm_class=Phi3ForCausalLM,
    layer_class=Phi3DecoderLayer,
    norm_class=Phi3RMSNorm,
    rotary_class=Phi3RotaryEmbedding,
    # Rotary on half of each head (Phi-4-mini uses 0.75), so partial rotary is exercised.
    tiny_extra=lambda hidden: {**TINY_INIT, "partial_rotary_factor": 0.5, "original_max_position_embeddings": 1024},
)
