"""Correctness references and an in-process pipeline driver.

`generate_reference` is the unsharded model's own `generate` (greedy): what the pipeline must reproduce token
for token. `run_pipeline_local` drives a chain of stages exactly as the coordinator does over the network
(prefill, then one token per step, positions and padding as `generate` handles them), so the two compare.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from globai.models.pooling import pool_embeddings
from globai.protocol.sampling import greedy


class PipelineStage(Protocol):
    """What the driver needs of a stage: `worker.stage.Stage` in-process, a network stub in a coordinator."""

    @property
    def is_last(self) -> bool: ...

    def open_session(self, session_id: str) -> None: ...

    def close_session(self, session_id: str) -> bool: ...

    def forward(
        self,
        session_id: str | None,
        inputs: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        last_token_only: bool = False,
    ) -> torch.Tensor: ...


# A call a stage received, in order, for failover replay: (stage index, inputs, positions, attention_mask).
Recorded = list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]


def prefill_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as `generate` computes them (padding gets position 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def generate_reference(
    model_dir: Path,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Greedy `generate` of the unsharded model: [B, T] prompt (left-padded) -> [B, max_new_tokens].

    End-of-sequence does not stop generation, so both sides always produce exactly `max_new_tokens`.
    """
    from transformers import GenerationConfig

    from globai.models.hf import load_full_model  # transformers' model classes: ~5 s of imports the market never needs

    manifest, model = load_full_model(model_dir, device=device)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=manifest.config.get("pad_token_id"),
        bos_token_id=manifest.config.get("bos_token_id"),
    )
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    # `generate` fills unset (None) values from the model's own generation config, whose EOS comes from the model
    # config: clear it there too, or a real model's generation stops (and pads) at its end-of-sequence token.
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]  # nn.Module.__getattr__ hides it from mypy
            input_ids=prompt_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
    return out[:, prompt_ids.shape[1] :].cpu()


def reference_logits(model_dir: Path, input_ids: torch.Tensor, *, device: str = "cpu") -> torch.Tensor:
    """Logits of one full (unpadded) forward of the unsharded model: [B, T, vocab], on `device`."""
    from globai.models.hf import load_full_model

    _, model = load_full_model(model_dir, device=device)
    with torch.inference_mode():
        return model(input_ids=input_ids.to(device)).logits


def reference_embeddings(model_dir: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings of the unsharded encoder with the manifest's pooling: [B, hidden]."""
    from globai.models.hf import load_full_model

    manifest, model = load_full_model(model_dir)
    assert manifest.pooling is not None, "not an embedding model"
    with torch.inference_mode():
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return pool_embeddings(hidden, attention_mask, manifest.pooling)


def _through(
    stages: Sequence[PipelineStage],
    session_id: str,
    inputs: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
    record: Recorded | None,
) -> torch.Tensor:
    hidden = inputs
    for index, stage in enumerate(stages):
        if record is not None:
            record.append((index, hidden, positions, attention_mask))
        hidden = stage.forward(session_id, hidden, positions, attention_mask, last_token_only=stage.is_last)
    return hidden


def run_pipeline_local(
    stages: Sequence[PipelineStage],
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    sample: Callable[[torch.Tensor], torch.Tensor] = greedy,
    session_id: str = "local",
    record: Recorded | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Generate through chained stages with their KV caches: [B, T] prompt -> [B, max_new_tokens] new tokens.

    `sample` maps last-position logits [B, vocab] to tokens [B] (see `globai.protocol.sampling`).
    `record`, if given, receives every stage call, i.e. what a coordinator stores for replay and verification.
    `on_step(step)` is called before each decode step (tests use it to inject failures).
    """
    if not stages or not stages[-1].is_last:
        raise ValueError("stages must end with the model's last layer")
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    for stage in stages:
        stage.open_session(session_id)
    try:
        positions = prefill_positions(attention_mask)
        # Padding only matters at prefill; later steps add real tokens, so their mask is implied all-ones.
        mask = None if bool(attention_mask.all()) else attention_mask
        logits = _through(stages, session_id, prompt_ids, positions, mask, record)
        last = positions[:, -1:]
        tokens = []
        for step in range(max_new_tokens):
            next_tokens = sample(logits[:, -1, :])
            tokens.append(next_tokens)
            if step == max_new_tokens - 1:
                break
            if on_step is not None:
                on_step(step)
            last = last + 1
            logits = _through(stages, session_id, next_tokens[:, None], last, None, record)
        return torch.stack(tokens, dim=1) if tokens else prompt_ids.new_zeros((prompt_ids.shape[0], 0))
    finally:
        for stage in stages:
            stage.close_session(session_id)
