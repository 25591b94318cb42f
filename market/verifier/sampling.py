r"""Sampling policy: how often to replay a worker's chunks, and which ones (pure functions).

Economics (per chunk). A worker that cheats on a chunk saves its compute cost C. Each chunk is replayed with
probability p; a replay catches a cheat unless the deciding replicas collude with the cheater (fraction r of the
replica pool), and a caught cheater forfeits the reward R and is slashed S. The expected value of cheating on a
chunk is

    EV = C - p (1 - r) (R + S),     so cheating loses money iff    p > C / ((1 - r) (R + S)).

We take p_econ = safety * C / ((1 - r)(R + S)) (safety > 1 absorbs estimation error in C and r, and the small
extra chance that a 2-of-3 dispute is won by two colluders: the exact catch power is (1 - r)(1 - r^2) ~ 1 - r).

Detection target. Chunks are sampled independently (each with probability p, see `sample_segments`), so a
worker that cheats on a fraction f of its n chunks per job goes unnoticed for J jobs with probability
(1 - p(1 - r))^(f n J). The target "caught within J jobs with probability >= P" needs

    p_detect = (1 - (1 - P)^(1 / (f n J))) / (1 - r).

Defaults: f = 10 %, J = 10, P = 99.9 %. Examples (r = 0): n = 8 chunks/job -> p = 0.578; n = 32 -> 0.194;
n = 128 -> 0.053; n = 512 -> 0.0134. A replayed chunk is a prefill (one batched forward), far cheaper than the
token-by-token decode that produced it, so even p ~ 0.2 is a small fraction of the job's compute.

Trust. New and recently failed workers are checked more: with a Beta(alpha, beta) posterior over "this
worker's chunks are bad", alpha = a0 + w * failed, beta = b0 + verified / penalty^failed (time-decayed counts
kept by the reputation module; a recent failure also discounts the credit of old history, so one failure after
10,000 good chunks still matters), the *distrust* d = alpha / (alpha + beta) lifts the rate towards 1:

    p = clamp(p_base + (1 - p_base) * d, p_min, 1),   p_base = max(p_econ, p_detect, p_min).

d decreases monotonically with verified history and increases with failures; a new worker starts at
a0 / (a0 + b0) (0.75 by default, i.e. p >= 0.75).

Which chunks. The seed is keccak256("GLOBAI-SAMPLE-V1" || jobId || (taskId, commitments root) sorted by taskId
|| secret), where `secret` is drawn by the market when the job is created, published only as
keccak256("GLOBAI-BEACON-V1" || secret) and revealed after every worker's signed root is in. Nobody can predict
the sample while working (the secret is hidden), nobody can steer it afterwards (the secret was committed
before the roots existed, and the roots are fixed), and anyone can recompute it (auditable). Chunk (task, stage,
chunk) is sampled iff keccak256(seed || taskId || uint32 stage || uint64 chunk) / 2^256 < p for that worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_utils import keccak

SAMPLE_TAG = b"GLOBAI-SAMPLE-V1"
BEACON_TAG = b"GLOBAI-BEACON-V1"


@dataclass(frozen=True)
class Economics:
    """Per-chunk amounts in one unit (e.g. GLB wei): C saved by cheating, R forfeited and S slashed if caught."""

    cost: float
    reward: float
    slash: float
    collusion: float = 0.0

    def __post_init__(self) -> None:
        if self.cost < 0 or self.reward < 0 or self.slash < 0:
            raise ValueError("cost, reward and slash must be >= 0")
        if not 0.0 <= self.collusion < 1.0:
            raise ValueError("collusion must be in [0, 1)")


@dataclass(frozen=True)
class SamplingPolicy:
    safety: float = 2.0
    p_min: float = 0.01
    target_cheat_fraction: float = 0.10
    target_jobs: int = 10
    target_detection: float = 0.999
    prior_bad: float = 3.0  # a0: pseudo-count of bad outcomes for a new worker
    prior_good: float = 1.0  # b0
    failure_weight: float = 10.0  # one failed check counts like this many bad outcomes
    failure_penalty: float = 1000.0  # ... and divides the credit of verified history by this


DEFAULT_POLICY = SamplingPolicy()
# Illustrative defaults (GLB per chunk): cost 80 % of the reward, slash 50 rewards, 10 % colluding replicas.
DEFAULT_ECONOMICS = Economics(cost=0.8, reward=1.0, slash=50.0, collusion=0.10)


@dataclass(frozen=True)
class WorkerHistory:
    """Time-decayed counts of this worker's chunks that passed / failed verification."""

    verified: float = 0.0
    failed: float = 0.0


def economic_rate(econ: Economics) -> float:
    """The break-even rate C / ((1 - r)(R + S)); cheating has negative EV strictly above it."""
    stake = (1 - econ.collusion) * (econ.reward + econ.slash)
    return math.inf if stake == 0 else econ.cost / stake


def cheating_ev(p: float, econ: Economics) -> float:
    """Expected gain of cheating on one chunk when chunks are replayed with probability p."""
    return econ.cost - p * (1 - econ.collusion) * (econ.reward + econ.slash)


def detection_probability(
    p: float, cheat_fraction: float, chunks_per_job: float, jobs: float, collusion: float = 0.0
) -> float:
    """P(at least one cheated chunk is sampled and caught) over `jobs` jobs of `chunks_per_job` chunks."""
    if not (0 <= p <= 1 and 0 <= cheat_fraction <= 1 and 0 <= collusion < 1):
        raise ValueError("probabilities out of range")
    cheated = cheat_fraction * chunks_per_job * jobs
    return 1.0 - (1.0 - p * (1.0 - collusion)) ** cheated


def detection_rate(chunks_per_job: float, policy: SamplingPolicy = DEFAULT_POLICY, collusion: float = 0.0) -> float:
    """Smallest p meeting the policy's detection target (1.0 when the target is out of reach)."""
    cheated = policy.target_cheat_fraction * chunks_per_job * policy.target_jobs
    if cheated <= 0:
        return 1.0
    p = (1.0 - (1.0 - policy.target_detection) ** (1.0 / cheated)) / (1.0 - collusion)
    return min(p, 1.0)


def distrust(history: WorkerHistory, policy: SamplingPolicy = DEFAULT_POLICY) -> float:
    """Posterior mean of Beta(a0 + w * failed, b0 + verified / penalty^failed): high for new or recently failed
    workers, monotone (down in `verified`, up in `failed`)."""
    failed = max(history.failed, 0.0)
    bad = policy.prior_bad + policy.failure_weight * failed
    good = policy.prior_good + max(history.verified, 0.0) / policy.failure_penalty**failed
    return bad / (bad + good)


def sampling_rate(
    econ: Economics,
    history: WorkerHistory,
    chunks_per_job: float,
    policy: SamplingPolicy = DEFAULT_POLICY,
) -> float:
    """Probability with which each of this worker's chunks in a job is replayed."""
    base = max(
        min(policy.safety * economic_rate(econ), 1.0),
        detection_rate(chunks_per_job, policy, econ.collusion),
        policy.p_min,
    )
    p = base + (1.0 - base) * distrust(history, policy)
    return min(max(p, policy.p_min), 1.0)


def beacon_commitment(secret: bytes) -> bytes:
    """What the market publishes at job creation; the secret itself is revealed after all roots are signed."""
    if len(secret) < 16:
        raise ValueError("secret must be at least 16 bytes")
    return keccak(BEACON_TAG + secret)


def sampling_seed(job_id: bytes, roots: Mapping[bytes, bytes], secret: bytes, beacon: bytes) -> bytes:
    """Seed from the job, every task's signed commitments root and the revealed secret (checked against `beacon`)."""
    if beacon_commitment(secret) != beacon:
        raise ValueError("secret does not match the published beacon commitment")
    if len(job_id) != 32 or any(len(t) != 32 or len(r) != 32 for t, r in roots.items()):
        raise ValueError("job id, task ids and roots must be 32 bytes")
    body = b"".join(task + roots[task] for task in sorted(roots))
    return keccak(SAMPLE_TAG + job_id + body + secret)


@dataclass(frozen=True)
class TaskChunks:
    """One worker task's committed chunks and the rate chosen for that worker."""

    task_id: bytes
    stage: int
    chunk_indices: Sequence[int]
    rate: float


@dataclass(frozen=True, order=True)
class Segment:
    task_id: bytes
    stage: int
    chunk_index: int


def chunk_draw(seed: bytes, task_id: bytes, stage: int, chunk_index: int) -> float:
    """Uniform in [0, 1) from the seed; independent per chunk, so the rate maths above holds exactly."""
    digest = keccak(seed + task_id + stage.to_bytes(4, "big") + chunk_index.to_bytes(8, "big"))
    return int.from_bytes(digest, "big") / 2**256


def sample_segments(seed: bytes, tasks: Sequence[TaskChunks]) -> list[Segment]:
    """Deterministic given the seed: the (task, stage, chunk) segments to replay, sorted."""
    out = [
        Segment(t.task_id, t.stage, c)
        for t in tasks
        for c in t.chunk_indices
        if chunk_draw(seed, t.task_id, t.stage, c) < t.rate
    ]
    return sorted(out)
