"""Qwen2 (and Qwen2.5): Llama's layout with biases on the q/k/v projections; optional sliding-window layers."""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

from globai.models.families._base import TINY_INIT, RotaryDecoderFamily

FAMILY = RotaryDecoderFamily(
    name="qwen2",
    model_types=("qwen2",),
    architecture="Qwen2ForCausalLM",
    config_class=Qwen2Config,
    causal_lm_class=Qwen2ForCausalLM,
    layer_class=Qwen2DecoderLayer,
    norm_class=Qwen2RMSNorm,
    rotary_class=Qwen2RotaryEmbedding,
    # Qwen2.5-0.5B ties its embeddings: the tiny model does too, so import copies the head from them. Its
    # layers from the second on use a sliding window shorter than the tests' sequences, so one stage may mix
    # full and sliding attention (each kind gets its own mask).
    tiny_extra=lambda hidden: {
        **TINY_INIT,
        "tie_word_embeddings": True,
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
    },
)
