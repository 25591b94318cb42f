"""Hardware probe: what this machine has (CPU, GPU, memory) and how fast it runs a reference layer.

Throughput is measured, not declared: one Llama decoder layer (hidden 256, seeded) runs a 128-token forward a
few times and the best time counts. The market scores workers on this number.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch

REFERENCE_LAYER = "llama-decoder-h256-t128"


@dataclass(frozen=True)
class Hardware:
    device: str
    cpu_count: int
    threads: int
    memory_bytes: int
    gpu_name: str | None
    gpu_memory_bytes: int
    throughput_tokens_s: float
    reference_layer: str = REFERENCE_LAYER


def total_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def reference_throughput(device: str = "cpu", tokens: int = 128, repeats: int = 3) -> float:
    """Tokens/s of one decoder layer forward (hidden 256, 4 heads) on `device`."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=704,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=1,
        vocab_size=512,
    )
    config._attn_implementation = "eager"
    # float32 spelled out, never the process's default dtype: another thread of the process (the market loading a
    # bfloat16 reference model, in-process workers in tests) may switch that default while the probe builds.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = LlamaDecoderLayer(config, layer_idx=0).to(device=device, dtype=torch.float32).eval()
        hidden = torch.randn(1, tokens, 256, device=device, dtype=torch.float32)
    rotary = LlamaRotaryEmbedding(config=config).to(device)
    positions = torch.arange(tokens, device=device)[None]
    best = float("inf")
    with torch.inference_mode():
        emb = rotary(hidden, position_ids=positions)
        for _ in range(repeats):
            started = time.perf_counter()
            layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=emb)
            best = min(best, time.perf_counter() - started)
    return tokens / max(best, 1e-9)


def probe(*, threads: int, device: str = "cpu") -> Hardware:
    gpu_name, gpu_mem = None, 0
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu_name, gpu_mem = props.name, int(props.total_memory)
    label = f"cuda:{gpu_name}" if device.startswith("cuda") and gpu_name else f"cpu:{platform.machine()}x{threads}"
    return Hardware(
        device=label[:64],
        cpu_count=os.cpu_count() or 1,
        threads=threads,
        memory_bytes=gpu_mem if device.startswith("cuda") else total_memory_bytes(),
        gpu_name=gpu_name,
        gpu_memory_bytes=gpu_mem,
        throughput_tokens_s=reference_throughput(device),
    )
