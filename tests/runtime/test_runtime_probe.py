"""The hardware probe's reference layer is float32 whatever the process's default dtype does meanwhile."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.models.llama import modeling_llama

from worker.runtime.probe import reference_throughput


def test_probe_survives_a_default_dtype_switch_by_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """What failed in CI: the market (same process as in-process test workers) loads a bfloat16 reference model
    in a thread; transformers switches the process-wide default dtype to bfloat16 while it builds. A probe
    that read the default built (part of) its layer in one dtype and its input in the other ("expected m1 and m2
    to have the same dtype", 3 of 6 runs of the bf16-int4 verify-source test here). Here the switch happens right
    after the probe built its layer: every weight and input it then runs must still be float32."""
    built = modeling_llama.LlamaDecoderLayer.__init__

    def build_then_switch(self: Any, *args: Any, **kw: Any) -> None:
        built(self, *args, **kw)
        torch.set_default_dtype(torch.bfloat16)  # another thread, right now

    seen: list[torch.dtype] = []
    forward = modeling_llama.LlamaDecoderLayer.forward

    def recording(self: Any, hidden_states: torch.Tensor, *args: Any, **kw: Any) -> Any:
        seen.extend([hidden_states.dtype, self.self_attn.q_proj.weight.dtype])
        return forward(self, hidden_states, *args, **kw)

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "__init__", build_then_switch)
    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", recording)
    before = torch.get_default_dtype()
    try:
        assert reference_throughput(tokens=16, repeats=1) > 0
    finally:
        torch.set_default_dtype(before)
    assert seen and set(seen) == {torch.float32}
