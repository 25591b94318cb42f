"""BERT encoders (MiniLM, sentence-transformers models): learned positions, bidirectional attention, no cache.

The last stage pools token states into one sentence embedding (`globai.models.pooling`); a checkpoint saved
without a pooler still has a (tensor-less) head shard.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel, DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertPooler

from globai.models.families._base import ModelFamily, StageModules, layer_index
from globai.models.layout import FamilyLayout
from globai.models.manifest import EMBED, HEAD


class EmptyHead(nn.Module):
    """Encoders saved without a pooler still have a (tensor-less) head shard."""


class BertFamily(ModelFamily):
    def tiny_config(
        self, *, hidden: int, layers: int, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, dtype: str
    ) -> dict[str, Any]:
        heads = max(1, hidden // 64)
        return {
            "architectures": [self.architecture],
            "model_type": "bert",
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": 4 * hidden,
            "vocab_size": vocab_size,
            "max_position_embeddings": 512,
            "pad_token_id": pad_id,
            "dtype": dtype,
        }

    def full_model(self, config: PretrainedConfig, dtype: torch.dtype, *, head_tensors: bool) -> PreTrainedModel:
        model: PreTrainedModel = AutoModel.from_config(config, dtype=dtype, add_pooling_layer=head_tensors)
        return model

    def init_model(self, config: PretrainedConfig) -> PreTrainedModel:
        return BertModel(cast(BertConfig, config))

    def shard_module(
        self, config: PretrainedConfig, shard: str, *, has_tensors: bool
    ) -> tuple[nn.Module, dict[str, str]]:
        if shard == EMBED:
            return BertEmbeddings(config), {"embeddings.": ""}
        if shard == HEAD:
            return (BertPooler(config) if has_tensors else EmptyHead()), {"pooler.": ""}
        index = layer_index(shard)
        return BertLayer(config, layer_idx=index), {self.layout.layer_prefix_of(index): ""}

    def materialise_buffers(self, module: nn.Module, device: torch.device) -> None:
        if isinstance(module, BertEmbeddings):
            n = module.position_ids.shape[-1]
            module.position_ids = torch.arange(n, device=device).expand((1, -1))
            module.token_type_ids = torch.zeros((1, n), dtype=torch.long, device=device)

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
        hidden = m.embed(input_ids=inputs, position_ids=positions) if m.embed is not None else inputs
        mask = create_bidirectional_mask(config=m.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in m.layers:
            hidden = layer(hidden, mask)
        return hidden


FAMILY = BertFamily(
    name="bert",
    model_types=("bert",),
    task="embedding",
    architecture="BertModel",
    config_class=BertConfig,
    layout=FamilyLayout(
        family="bert",
        task="embedding",
        architecture="BertModel",
        layer_prefix="encoder.layer.",
        embed_prefixes=("embeddings.",),
        head_prefixes=("pooler.",),
        strip_prefixes=("bert.",),
        # position_ids is a buffer BertEmbeddings rebuilds; cls.* is the pre-training head, not served
        ignore=(r"embeddings\.position_ids", r"cls\..*"),
    ),
)
