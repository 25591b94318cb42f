"""A tiny Llama and honest stage inputs, shared by the verifier tests (built once per session: ~0.2 s)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from market.verifier.calibrate import CalibrationSettings, stage_inputs
from market.verifier.tiny import TinyLlamaSpec, calibration_model

SETTINGS = CalibrationSettings(seq_lens=(64, 50), prefix_len=40, threads=(1, 2))


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # shared 2-core machine; scenarios that need 2 threads set it themselves


@pytest.fixture(scope="session", params=["float32", "bfloat16"])
def model_and_inputs(request: pytest.FixtureRequest) -> tuple[str, LlamaForCausalLM, list[torch.Tensor]]:
    model = calibration_model(TinyLlamaSpec(), getattr(torch, request.param))
    return request.param, model, stage_inputs(model, SETTINGS)
