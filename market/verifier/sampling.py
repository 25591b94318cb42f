r"""Sampling policy: how often to replay a worker's work, and which of it (pure functions).

Unit: a sequence. A stage's output of one sequence is replayed by one prefill of that sequence on a replica
(`market/coordinator/verify_replay.chunk_replay`), and that one forward reproduces every chunk of the sequence: a
sampled sequence has *all* its committed chunks checked, and nothing is recomputed that is not compared. So the
draw is per (task, sequence), with probability p, and every chunk of the worker's sequence is checked with
probability p (its marginal), all of them together.

Economics (per sequence of K chunks). A worker that cheats on a sequence saves at most its compute cost K C. The
sequence is replayed with probability p; a replay catches a cheat unless the deciding replicas collude with the
cheater (fraction r of the replica pool), and a caught cheater forfeits at least the sequence's reward K R (in
fact its whole share of the job) and is slashed S. The expected value of cheating on a sequence is

    EV = K C - p (1 - r) (K R + S),     so cheating loses money iff    p > K C / ((1 - r) (K R + S)).

We take p_econ = safety * K C / ((1 - r)(K R + S)) (safety > 1 absorbs estimation error in C and r, and the
small extra chance that a 2-of-3 dispute is won by two colluders: the exact catch power is (1 - r)(1 - r^2)).
K is the longest sequence of the worker's in the job (in chunks): cheating on a long sequence gains most per
detection event.

Detection target, per worker over its history (not per job: a job's size is the requester's choice). Sequences
are drawn independently, so a worker that cheats in a fraction f of the sequences it serves goes unnoticed
for N sequences with probability (1 - p(1 - r))^(f N). The target "caught with probability >= P before it has
served N sequences" needs

    p_detect = (1 - (1 - P)^(1 / (f N))) / (1 - r).

Defaults: f = 10 %, N = 1,500 sequences, P = 99.9 %, r = 10 % -> p_detect = 0.0500 (a default job is 8
sequences: 188 such jobs). N is what the cost goal buys with prefill-shaped replays (every sequence of the default
job replayed costs ~0.7x the job on CPU, so <= 5 % allows p ~ 0.07); replays shaped like ordinary work cost ~4.5x
(`bench/verify.py`, BENCHMARKS.md "Verification"), which no rate above the economic floor brings to 5 %. A worker
cheating on a fraction f of its *chunks* cheats in at least a fraction f K_mean / K_max of its sequences (all
sequences of one run have the same length, so >= f within a run). A cheat that saves compute changes a whole call
(every sequence of the batch), and is then drawn once per sequence.

Trust. New and recently failed workers are checked more: with a Beta(alpha, beta) posterior over "this
worker's chunks are bad", alpha = a0 + w * failed, beta = b0 + verified / penalty^failed (time-decayed counts
kept by the reputation module; a recent failure also discounts the credit of old history, so one failure after
10,000 good chunks still matters), the *distrust* d = alpha / (alpha + beta) lifts the rate towards 1:

    p = clamp(p_base + (1 - p_base) * d, p_min, 1),   p_base = max(p_econ, p_detect, p_min).

d decreases monotonically with verified history and increases with failures; a new worker starts at
a0 / (a0 + b0) (0.75 by default, i.e. p >= 0.75).

Which sequences. The seed is keccak256("GLOBAI-SAMPLE-V1" || jobId || (taskId, commitments root) sorted by
taskId || secret), where `secret` is drawn by the market when the job is created, published only as
keccak256("GLOBAI-BEACON-V1" || secret) and revealed after every worker's signed root is in. Nobody can predict
the sample while working (the secret is hidden), nobody can steer it afterwards (the secret was committed
before the roots existed, and the roots are fixed), and anyone can recompute it (auditable). Sequence s of
(task, stage) is sampled iff keccak256(seed || taskId || uint32 stage || uint32 s) / 2^256 < p for that worker,
and then every committed chunk (s << 32 | c) of it is.
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
    target_cheat_fraction: float = 0.10  # f: a worker cheating in this fraction of its sequences ...
    target_sequences: int = 1500  # N: ... is caught before it has served this many sequences ...
    target_detection: float = 0.999  # P: ... with this probability
    prior_bad: float = 3.0  # a0: pseudo-count of bad outcomes for a new worker
    prior_good: float = 1.0  # b0
    failure_weight: float = 10.0  # one failed check counts like this many bad outcomes
    failure_penalty: float = 1000.0  # ... and divides the credit of verified history by this


DEFAULT_POLICY = SamplingPolicy()
# GLB per 32-token chunk at the devnet's defaults: the demo's price of 0.01 GLB per unit (one position through one
# stage, `market/demo/paid_inference.PRICE_PER_UNIT`) makes R = 0.32; cost C = 80 % of it; the slash is the vault's
# default minStake, S = 100 GLB (`globai/chain/deploy.py`, what `VerifierConfig.slash_amount = 0` slashes); 10 %
# colluding replicas. A job that pays more per token raises p_econ (see `economic_rate`).
DEFAULT_ECONOMICS = Economics(cost=0.256, reward=0.32, slash=100.0, collusion=0.10)


@dataclass(frozen=True)
class WorkerHistory:
    """Time-decayed counts of this worker's chunks that passed / failed verification."""

    verified: float = 0.0
    failed: float = 0.0


def economic_rate(econ: Economics, chunks_per_sequence: float = 1.0) -> float:
    """The break-even rate K C / ((1 - r)(K R + S)) for sequences of K chunks; cheating has negative EV above it."""
    k = max(chunks_per_sequence, 1.0)
    stake = (1 - econ.collusion) * (k * econ.reward + econ.slash)
    return math.inf if stake == 0 else k * econ.cost / stake


def cheating_ev(p: float, econ: Economics, chunks_per_sequence: float = 1.0) -> float:
    """Expected gain of cheating on one sequence of K chunks when sequences are replayed with probability p."""
    k = max(chunks_per_sequence, 1.0)
    return k * econ.cost - p * (1 - econ.collusion) * (k * econ.reward + econ.slash)


def detection_probability(p: float, cheat_fraction: float, sequences: float, collusion: float = 0.0) -> float:
    """P(at least one cheated sequence is sampled and caught) when a fraction of `sequences` sequences is cheated."""
    if not (0 <= p <= 1 and 0 <= cheat_fraction <= 1 and 0 <= collusion < 1):
        raise ValueError("probabilities out of range")
    return 1.0 - (1.0 - p * (1.0 - collusion)) ** (cheat_fraction * sequences)


def detection_rate(policy: SamplingPolicy = DEFAULT_POLICY, collusion: float = 0.0) -> float:
    """Smallest p meeting the policy's detection target (1.0 when the target is out of reach)."""
    cheated = policy.target_cheat_fraction * policy.target_sequences
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
    chunks_per_sequence: float = 1.0,
    policy: SamplingPolicy = DEFAULT_POLICY,
) -> float:
    """Probability with which each of this worker's sequences (all their chunks) in a job is replayed."""
    base = max(
        min(policy.safety * economic_rate(econ, chunks_per_sequence), 1.0),
        detection_rate(policy, econ.collusion),
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
    """One worker task's committed chunks (sequence << 32 | chunk) and the rate chosen for that worker."""

    task_id: bytes
    stage: int
    chunk_indices: Sequence[int]
    rate: float


@dataclass(frozen=True, order=True)
class Segment:
    task_id: bytes
    stage: int
    chunk_index: int


def sequence_of(chunk_index: int) -> int:
    return chunk_index >> 32


def chunks_per_sequence(chunk_indices: Sequence[int]) -> int:
    """K: the most chunks any one sequence has among these (0 when there are none)."""
    counts: dict[int, int] = {}
    for c in chunk_indices:
        counts[sequence_of(c)] = counts.get(sequence_of(c), 0) + 1
    return max(counts.values(), default=0)


def sequence_draw(seed: bytes, task_id: bytes, stage: int, sequence: int) -> float:
    """Uniform in [0, 1) from the seed; independent per (task, stage, sequence), so the rate maths above holds."""
    digest = keccak(seed + task_id + stage.to_bytes(4, "big") + sequence.to_bytes(4, "big"))
    return int.from_bytes(digest, "big") / 2**256


def sample_segments(seed: bytes, tasks: Sequence[TaskChunks]) -> list[Segment]:
    """Deterministic given the seed: every committed (task, stage, chunk) of each sampled sequence, sorted."""
    out = []
    for t in tasks:
        drawn: dict[int, bool] = {}
        for c in t.chunk_indices:
            seq = sequence_of(c)
            if seq not in drawn:
                drawn[seq] = sequence_draw(seed, t.task_id, t.stage, seq) < t.rate
            if drawn[seq]:
                out.append(Segment(t.task_id, t.stage, c))
    return sorted(out)
