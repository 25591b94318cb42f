"""The training job spec a requester posts: what to train, on what, and how (DiLoCo hyper-parameters).

The spec is small and hashable (`spec_hash` is what escrow records as ``specHash``); the dataset bytes travel
separately and are pinned by ``dataset.sha256``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from globai.protocol.bytetokens import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID
from globai.protocol.compression import Codec, CompressionError, parse_codec

__all__ = ["BOS_ID", "BYTE_VOCAB_SIZE", "EOS_ID", "PAD_ID"]  # re-exported: the byte tokenizer's ids


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigModelRef(_Frozen):
    """A causal LM of any family in the registry (`model_type`, default llama) built from a config dict and an
    init seed (built-in tiny models; no hub downloads)."""

    kind: Literal["config"] = "config"
    config: dict[str, Any]
    init_seed: int = 0

    @field_validator("config")
    @classmethod
    def _causal_lm(cls, value: dict[str, Any]) -> dict[str, Any]:
        from globai.models.errors import UnsupportedModelError
        from globai.models.families import family_for_model_type

        try:
            family = family_for_model_type(str(value.get("model_type", "llama")))
        except UnsupportedModelError as exc:
            raise ValueError(str(exc)) from None
        if family.task != "causal-lm":
            raise ValueError(f"{family.name} models are not causal LMs: they cannot be trained here")
        if int(value.get("vocab_size", 0)) < BYTE_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {BYTE_VOCAB_SIZE} for the byte tokenizer")
        return value


class HFDirModelRef(_Frozen):
    """A local Hugging Face-style directory (config.json + safetensors weights) to continue training from."""

    kind: Literal["hf_dir"] = "hf_dir"
    path: str


ModelRef = Annotated[ConfigModelRef | HFDirModelRef, Field(discriminator="kind")]


class DatasetRef(_Frozen):
    """Uploaded training text. ``text``: the whole upload is one document; ``jsonl``: one ``{field: str}`` per
    line."""

    format: Literal["text", "jsonl"] = "text"
    jsonl_field: str = "text"
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)


class TokenizerRef(_Frozen):
    """Raw UTF-8 bytes as tokens (vocab 256 + BOS/EOS/PAD): simplest real tokenizer, nothing to download or
    train."""

    kind: Literal["bytes"] = "bytes"


class FederatedSpec(_Frozen):
    """Federated mode: every worker trains on its own local data (never uploaded); updates are clipped to
    ``clip_norm`` (L2, whole update), optionally noised (Gaussian, ``noise_multiplier`` × clip_norm on the sum of any
    ``threshold`` updates), and combined by secure aggregation (`globai.protocol.secagg`) so the market only learns
    their sum. The uploaded dataset is only the held-out evaluation set."""

    clip_norm: float = Field(default=1.0, gt=0)
    noise_multiplier: float = Field(default=0.0, ge=0, le=100)
    delta: float = Field(default=1e-5, gt=0, lt=1, description="δ of the reported (ε, δ)")
    threshold: int | None = Field(default=None, ge=2, description="Shamir threshold; default a strict majority")
    phase_timeout_s: float = Field(default=60.0, gt=0, description="wait per protocol phase for the missing")


class TrainingJobSpec(_Frozen):
    """A DiLoCo training job: R rounds; in each, W tasks of H inner AdamW steps, then one outer Nesterov
    step."""

    model: ModelRef
    dataset: DatasetRef = DatasetRef()
    tokenizer: TokenizerRef = TokenizerRef()
    seq_len: int = Field(default=64, ge=8, le=8192)
    batch_size: int = Field(default=8, ge=1, le=1024, description="sequences per inner step")
    inner_steps: int = Field(default=50, ge=1, le=100_000, description="H")
    rounds: int = Field(default=10, ge=1, le=100_000, description="R")
    workers_per_round: int = Field(default=4, ge=1, le=1024, description="W")
    quorum: int | None = Field(default=None, ge=1, description="updates that close a round early; default W")
    min_updates: int = Field(default=1, ge=1, description="updates needed to close a round at its deadline")
    round_timeout_s: float = Field(default=600.0, gt=0)
    inner_lr: float = Field(default=1e-3, gt=0)
    inner_weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    outer_lr: float = Field(default=0.7, gt=0)
    outer_momentum: float = Field(default=0.9, ge=0, lt=1)
    aggregation: Literal["trimmed_mean", "median", "mean"] = "trimmed_mean"
    trim_fraction: float = Field(default=0.25, ge=0, lt=0.5)
    compression: str = "int8"
    seed: int = Field(default=0, ge=0, lt=2**63)
    budget_wei: int = Field(default=0, ge=0, description="GLB the requester escrows for the whole job")
    federated: FederatedSpec | None = None
    max_staleness: int = Field(
        default=0,
        ge=0,
        le=16,
        description="asynchronous rounds: an update that arrives up to this many rounds after its round closed is "
        "applied to the next round that closes, scaled by 1 / (1 + staleness); 0: a late update is refused",
    )

    @field_validator("compression")
    @classmethod
    def _codec(cls, value: str) -> str:
        try:
            parse_codec(value)
        except CompressionError as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(exc.reason) from exc
        return value

    @model_validator(mode="after")
    def _quorum(self) -> TrainingJobSpec:
        if self.quorum is not None and self.quorum > self.workers_per_round:
            raise ValueError("quorum cannot exceed workers_per_round")
        if self.min_updates > self.workers_per_round:
            raise ValueError("min_updates cannot exceed workers_per_round")
        if self.federated is not None:
            if self.aggregation != "mean":
                raise ValueError("federated jobs aggregate by secure sum: aggregation must be 'mean'")
            if self.workers_per_round < 2:
                raise ValueError("secure aggregation needs workers_per_round >= 2")
            if self.secagg_threshold > self.workers_per_round:
                raise ValueError("federated.threshold cannot exceed workers_per_round")
            if self.max_staleness:
                raise ValueError("federated rounds are synchronous (a masked input only unmasks within its round)")
        return self

    @property
    def secagg_threshold(self) -> int:
        """Shamir threshold t of a federated round: also the fewest masked inputs a round can close with."""
        from globai.protocol.secagg import threshold

        fed = self.federated
        return threshold(self.workers_per_round) if fed is None or fed.threshold is None else fed.threshold

    @property
    def codec(self) -> Codec:
        return parse_codec(self.compression)

    @property
    def effective_quorum(self) -> int:
        return self.quorum or self.workers_per_round

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec (sorted keys, no whitespace)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def derive_seed(base: int, *parts: int | str) -> int:
    """A 63-bit seed derived from the job seed and labels, so each (round, worker) stream is independent."""
    digest = hashlib.sha256(json.dumps([base, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def task_seed(spec: TrainingJobSpec, round_index: int, worker_index: int) -> int:
    """The seed of task (round, worker): drives the worker's batch sampling; a replay uses the same one."""
    return derive_seed(spec.seed, "task", round_index, worker_index)
