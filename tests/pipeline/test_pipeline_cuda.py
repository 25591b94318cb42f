"""The same exact-match guarantees on a GPU (skipped where there is none): stages and `generate` on one device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from globai.models.reference import generate_reference, reference_logits, run_pipeline_local
from globai.models.tiny import build_tiny_llama
from worker.stage import Stage

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_stages_match_generate(tmp_path: Path, dtype: str) -> None:
    model_dir = tmp_path / dtype
    build_tiny_llama(model_dir, hidden=256, layers=8, dtype=dtype)
    prompt = torch.randint(3, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)
    mask[1, :5] = 0
    prompt = prompt.masked_fill(mask == 0, 0)
    expected = generate_reference(model_dir, prompt, 32, attention_mask=mask, device="cuda")
    for bounds in ([0, 8], [0, 4, 8], [0, 2, 4, 6, 8]):
        stages = [Stage(model_dir, a, b, device="cuda") for a, b in zip(bounds, bounds[1:], strict=False)]
        got = run_pipeline_local(stages, prompt, 32, attention_mask=mask)
        assert got.cpu().tolist() == expected.tolist(), bounds
    unpadded = prompt[:, 5:]
    hidden: torch.Tensor = unpadded
    for stage in (Stage(model_dir, 0, 4, device="cuda"), Stage(model_dir, 4, 8, device="cuda")):
        hidden = stage.forward(None, hidden)
    assert torch.equal(hidden, reference_logits(model_dir, unpadded, device="cuda"))
