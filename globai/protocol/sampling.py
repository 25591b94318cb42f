"""Next-token choice from final logits: greedy, temperature and top-p with a seeded generator.

Sampling happens in the coordinator (never on a worker) so a worker can't bias it, and it is reproducible: the
same logits, params and seed give the same tokens, so a verifier can re-derive every sampled token.
Pure functions of tensors; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """[batch, vocab] -> [batch] int64: the first maximum, exactly as `generate`'s greedy search picks."""
    return torch.argmax(logits, dim=-1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf the tokens outside the smallest set reaching probability `top_p` (HF TopP semantics)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """[batch, vocab] logits -> [batch] int64 next tokens."""
    if params.greedy:
        return greedy(logits)
    if generator is None:
        raise ValueError("sampling with temperature > 0 needs a seeded generator")
    scaled = logits.detach().to("cpu", torch.float32) / params.temperature
    probs = top_p_filter(scaled, params.top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class Sampler:
    """Stateful convenience for one generation: owns the seeded generator, one call per decode step."""

    def __init__(self, params: SamplingParams | None = None) -> None:
        self.params = params or SamplingParams()
        self.generator = None if self.params.greedy else make_generator(self.params.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits, self.params, self.generator)
