"""An in-process network of simulated workers on a tiny Llama, implementing `WorkSource` for the verifier.

Each worker computes its part of a job (one stage, a few sequences) its own way - honestly with a drift source
(other thread count, batched with padding, KV-cache decode, ...) or with a cheat - then commits per 32-token chunk
and signs the chunks and its task root exactly as the worker runtime does. The verifier's Celery tasks reach
the network only through the `WorkSource` methods (parts, commitments, replicas, replay), like the coordinator's.
A replica replays a recorded stage input as an ordinary prefill, honestly unless it colludes with a cheater.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from globai.protocol import merkle
from globai.protocol.commitments import (
    ChunkCommitment,
    SignedCommitment,
    chunk_bounds,
    chunk_id,
    commit_chunk,
    sign_commitment,
    sign_task_root,
    tensor_sha256,
)
from globai.protocol.signing import ChunkScope, sent_digest, sign_digest
from market.services.verification import BindingFault, ClaimedPart, HopRerun, ReplayReceipt, Replica
from market.verifier import cheats
from market.verifier.calibrate import CalibrationSettings, scenarios, torch_threads
from market.verifier.compare import project_rows
from market.verifier.disputes import ProjectedRows
from market.verifier.tiny import TinyLlamaSpec, calibration_model, embed, run_stage

STAGE = (1, 3)
CHAIN_ID = 31337

# name -> (model transform applied once, output transform per call)
# Every honest drift source calibration measured (sdpa is informational: the manifest pins the attention kernel).
HONEST_DRIFTS = tuple(n for n in scenarios(CalibrationSettings()) if n not in CalibrationSettings().informational)


def _stage_params(model: torch.nn.Module, layers: tuple[int, int]) -> list[torch.nn.Parameter]:
    return [p for i in range(*layers) for p in model.model.layers[i].parameters()]  # type: ignore[attr-defined]


def perturbed_model(model, rel: float = 1e-3, seed: int = 99):  # type: ignore[no-untyped-def]
    cheat = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in _stage_params(cheat, STAGE):
            p.copy_((p.float() * (1 + rel * torch.randn(p.shape, generator=g))).to(p.dtype))
    return cheat


def int8_model(model):  # type: ignore[no-untyped-def]
    cheat = copy.deepcopy(model)
    with torch.no_grad():
        for p in _stage_params(cheat, STAGE):
            if p.dim() == 2:
                w = p.float()
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
                p.copy_(((w / scale).round().clamp(-127, 127) * scale).to(p.dtype))
    return cheat


@dataclass
class SimWorker:
    account: LocalAccount
    operator: str
    behaviour: str = "honest"  # honest | a cheat name | colluder
    drift: str = "repeat"  # honest drift source used for its own work
    cheat_fraction: float = 1.0  # fraction of chunks a cheater cheats on (chosen by a hash: unpredictable to us)
    colludes_with: str | None = None  # address whose claims this replica confirms
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    layers: tuple[int, int] = STAGE  # what it serves: a half of the stage makes it a hop of a chain replica
    weight: float = 1.0  # its replica draw weight (a chain's: its weakest hop's, as the market offers them)

    @property
    def address(self) -> str:
        return str(self.account.address)


@dataclass(frozen=True)
class HopAnswer:
    """What one hop of a replay got and answered, and its signed hash over the answer (its evidence)."""

    address: str
    layers: tuple[int, int]
    input: torch.Tensor  # [tokens, hidden]
    output: torch.Tensor  # [tokens, width]
    digest: str
    signature: str


@dataclass
class SimPart:
    claimed: ClaimedPart
    inputs: list[torch.Tensor]  # per sequence, the stage input [tokens, hidden] (what the coordinator recorded)
    outputs: list[torch.Tensor]  # what the worker sent
    signed: dict[int, SignedCommitment]
    tree: merkle.MerkleTree


class SimNetwork:
    """Workers, jobs and the recorded evidence; thread-safe enough for one Celery worker thread + the test."""

    def __init__(
        self,
        dtype: torch.dtype = torch.float32,
        spec: TinyLlamaSpec | None = None,
        *,
        holds: bool | str = True,
    ) -> None:
        self.dtype = dtype
        # True: the market keeps the sent tensors (hidden-state stages); "projection": only its seeded projections
        # of the sent rows (as for last-token logits); False: commitments only.
        self.holds = holds
        self.projection_seed = 4242
        self.spec = spec or TinyLlamaSpec()
        self.model = calibration_model(self.spec, dtype)
        self.workers: dict[str, SimWorker] = {}
        self.jobs: dict[str, list[SimPart]] = {}
        self.replays = 0
        self._lock = threading.Lock()
        self._scenarios = scenarios(CalibrationSettings(spec=self.spec, stage=STAGE, prefix_len=20))
        self._cheat_models: dict[str, torch.nn.Module] = {}
        self.replay_digests: dict[tuple[str, str, int, str], ReplayReceipt] = {}  # -> signed digest, units
        self.transcripts: dict[str, list[HopAnswer]] = {}  # a chain replay's id -> what each hop got and signed

    # --- workers -----------------------------------------------------------------------------------------------
    def add_worker(self, operator: str, behaviour: str = "honest", **kw: object) -> SimWorker:
        w = SimWorker(Account.create(), operator, behaviour, **kw)  # type: ignore[arg-type]
        self.workers[w.address] = w
        return w

    def _cheat_model(self, name: str) -> torch.nn.Module:
        if name not in self._cheat_models:
            build: dict[str, Callable[[], torch.nn.Module]] = {
                "perturbed_weights": lambda: perturbed_model(self.model),
                "int8_weights": lambda: int8_model(self.model),
                "bf16_instead_of_fp32": lambda: copy.deepcopy(self.model).to(torch.bfloat16),
            }
            self._cheat_models[name] = build[name]()
        return self._cheat_models[name]

    def honest_stage(self, x: torch.Tensor) -> torch.Tensor:
        """The replica's replay: a prefill of the recorded input alone in its batch ([tokens, hidden])."""
        return run_stage(self.model, x.unsqueeze(0), STAGE)[0]

    def _cheat_output(self, behaviour: str, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0)
        if behaviour in ("perturbed_weights", "int8_weights"):
            return run_stage(self._cheat_model(behaviour), h, STAGE)[0]
        if behaviour == "bf16_instead_of_fp32":
            return run_stage(self._cheat_model(behaviour), h.to(torch.bfloat16), STAGE)[0].to(self.dtype)
        if behaviour == "skipped_layer":
            return cheats.skipped_layer(self.model, h, STAGE)[0]
        if behaviour == "identity_stage":
            return x.clone()
        if behaviour in ("noise_x1.10", "fraction_noise", "unbound"):
            return self.honest_stage(x) * 1.10
        if behaviour == "outside_topk":  # every coordinate but each row's top-8 shrunk: the sketch can't see it
            out = self.honest_stage(x)
            keep = torch.zeros_like(out, dtype=torch.bool).scatter_(1, out.abs().topk(8, dim=1).indices, True)
            return torch.where(keep, out, out * 0.9)
        if behaviour == "sub_fp16":  # a change below fp16 resolution (the sketch's values are fp16)
            return self.honest_stage(x) * (1 + 3e-5)
        raise ValueError(behaviour)

    # --- a job's work ------------------------------------------------------------------------------------------
    def stage_inputs(self, seed: int, lengths: tuple[int, ...]) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for n in lengths:
            ids = torch.randint(0, self.spec.vocab_size, (1, n), generator=g)
            out.append(run_stage(self.model, embed(self.model, ids), (0, STAGE[0]))[0])
        return out

    def do_work(
        self,
        job_id: str,
        worker: SimWorker,
        inputs: list[torch.Tensor],
        *,
        work_key: str,
        forged_scope: ChunkScope | None = None,
    ) -> SimPart:
        """The worker's outputs for `inputs`, its signed chunk commitments and signed root."""
        scope = self.scope(job_id, work_key)
        drift = self._scenarios[worker.drift]
        outputs = []
        honest_outputs = []  # "unbound" commits to these and sends `outputs`
        cheat = worker.behaviour not in (
            "honest",
            "colluder",
            "lazy_replica",
            "replayed_commitment",
            "malformed_sketch",
        )
        for i, x in enumerate(inputs):
            honest = drift(self.model, inputs, i)
            honest_outputs.append(honest)
            if not cheat:
                outputs.append(honest)
                continue
            bad = self._cheat_output(worker.behaviour, x)
            out = honest.clone()
            for pc, start, stop in chunk_bounds(x.shape[0]):
                if self._cheats_on(worker, job_id, chunk_id(i, pc)):
                    out[start:stop] = bad[start:stop]
            outputs.append(out)
        commitments: list[ChunkCommitment] = []
        for i, out in enumerate(honest_outputs if worker.behaviour == "unbound" else outputs):
            for pc, start, stop in chunk_bounds(out.shape[0]):
                c = commit_chunk(forged_scope or scope, chunk_id(i, pc), out[start:stop])
                if worker.behaviour == "malformed_sketch":
                    c = ChunkCommitment(c.scope, c.chunk_index, c.output_sha256, c.sketch[:-3] + b"\xff\xff\xff")
                commitments.append(c)
        signed = {c.chunk_index: sign_commitment(c, worker.account) for c in commitments}
        root = sign_task_root(commitments, worker.account)
        if forged_scope is not None:  # the root is made for this job, the chunks were copied from another
            from globai.protocol.commitments import SignedRoot
            from globai.protocol.signing import root_digest, sign_digest

            digest = root_digest(scope, root.chunk_count, root.root)
            root = SignedRoot(scope, root.chunk_count, root.root, sign_digest(worker.account, digest))
        tree = merkle.MerkleTree([c.leaf for c in commitments])
        claimed = ClaimedPart(
            work_key=work_key,
            worker=worker.address,
            operator_id=worker.operator,
            stage=STAGE[0],
            layer_start=STAGE[0],
            layer_end=STAGE[1],
            units=sum(int(x.shape[0]) for x in inputs),
            dtype=str(self.dtype).removeprefix("torch."),
            scope=scope,
            signed_root=root,
            chunk_indices=tuple(sorted(signed)),
        )
        return SimPart(claimed, inputs, outputs, signed, tree)

    @staticmethod
    def _cheats_on(worker: SimWorker, job_id: str, chunk: int) -> bool:
        draw = int.from_bytes(keccak(text=f"{worker.address}/{job_id}/{chunk}"), "big") / 2**256
        return draw < worker.cheat_fraction

    @staticmethod
    def scope(job_id: str, work_key: str) -> ChunkScope:
        return ChunkScope(
            CHAIN_ID, keccak(text=job_id), keccak(text=work_key), STAGE[0], keccak(text=f"nonce/{job_id}")
        )

    def add_job(self, job_id: str, parts: list[SimPart]) -> None:
        with self._lock:
            self.jobs[job_id] = parts

    # --- WorkSource --------------------------------------------------------------------------------------------
    def parts(self, job_id: str) -> list[ClaimedPart]:
        return [p.claimed for p in self.jobs[job_id]]

    def _part(self, job_id: str, work_key: str) -> SimPart:
        return next(p for p in self.jobs[job_id] if p.claimed.work_key == work_key)

    def commitment(self, job_id: str, work_key: str, chunk_index: int) -> tuple[SignedCommitment, list[bytes]]:
        part = self._part(job_id, work_key)
        signed = part.signed[chunk_index]
        return signed, part.tree.proof(signed.commitment.leaf)

    def replicas(self, job_id: str, part: ClaimedPart) -> list[Replica]:
        """Workers serving exactly the part's layers (the stage, or one half of it when a chain's hop is re-run);
        where none of another operator serves the stage, chains of a first-half and a second-half worker of two
        other operators (as `verify_replay.replica_chains` offers them)."""
        layers = (part.layer_start, part.layer_end)
        whole = [w for w in self.workers.values() if w.layers == layers and w.address != part.worker]
        found = [Replica(w.address, w.operator, w.weight) for w in whole]
        if any(w.operator != part.operator_id for w in whole) or layers != STAGE:
            return found
        mid = (STAGE[0] + STAGE[1]) // 2
        firsts = [w for w in self.workers.values() if w.layers == (STAGE[0], mid)]
        seconds = [w for w in self.workers.values() if w.layers == (mid, STAGE[1])]
        used = {part.operator_id}
        for a in firsts:
            b = next((b for b in seconds if b.operator not in used | {a.operator}), None)
            if a.operator in used or b is None:
                continue
            used |= {a.operator, b.operator}
            hops = ((a.address, a.operator, STAGE[0], mid), (b.address, b.operator, mid, STAGE[1]))
            found.append(Replica(a.address, a.operator, min(a.weight, b.weight), chain=hops))
        return found

    def held(self, job_id: str, part: ClaimedPart, chunk_index: int) -> torch.Tensor | ProjectedRows | None:
        if not self.holds:
            return None
        sim = self._part(job_id, part.work_key)
        seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
        sent = sim.outputs[seq][pc * 32 : (pc + 1) * 32].clone()  # what the worker sent
        if self.holds == "projection":
            return ProjectedRows(project_rows(sent, self.projection_seed), self.projection_seed)
        return sent

    def violations(self, job_id: str) -> list[BindingFault]:
        return []  # no coordinator in between here: binding is checked when a chunk is sampled (`held`)

    def replay(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> torch.Tensor:
        out, answers = self._replay(job_id, part, chunk_index, replica)
        # Every hop signs its answer as a worker signs any forward answer (a fresh run-like scope).
        scope = self._replay_scope(job_id, part, chunk_index, replica)
        signed = [self._signed(scope, hop, x, y) for hop, x, y in answers]
        seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
        units = min((pc + 1) * 32, int(self._part(job_id, part.work_key).inputs[seq].shape[0]))  # its prefill
        replay_id = str(uuid.uuid4())
        with self._lock:
            # A chain's answer is not one hop's alone: no evidence against any of them (as the market does), but
            # what each hop got and signed is kept, to re-run a hop alone if the chain loses.
            chain = len(signed) > 1
            last = signed[-1]
            self.replay_digests[(job_id, part.work_key, chunk_index, replica)] = ReplayReceipt(
                "" if chain else last.digest,
                "" if chain else last.signature,
                units,
                replay_id,
                replay_id if chain else "",
            )
            if chain:
                self.transcripts[replay_id] = signed
        return out

    @staticmethod
    def _replay_scope(job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> ChunkScope:
        return ChunkScope(
            CHAIN_ID,
            keccak(text=f"replay/{job_id}/{chunk_index}/{replica}"),
            keccak(text=f"replay/{job_id}/{part.work_key}"),
            part.stage,
            b"\x01" * 32,
        )

    def _signed(self, scope: ChunkScope, worker: SimWorker, x: torch.Tensor, y: torch.Tensor) -> HopAnswer:
        digest = sent_digest(scope, 0, 0, tensor_sha256(y))
        signature = sign_digest(worker.account, digest)
        return HopAnswer(worker.address, worker.layers, x, y, "0x" + digest.hex(), "0x" + signature.hex())

    def rerun_hop(self, job_id: str, part: ClaimedPart, transcript: str, hop: int, replica: str) -> HopRerun:
        """Hop `hop` of a recorded chain replay re-run alone on `replica` with exactly the input it received."""
        with self._lock:
            answers = self.transcripts[transcript]
            self.replays += 1
        got = answers[hop]
        before = answers[hop - 1].output if hop > 0 else None
        bound = before is None or tensor_sha256(got.input) == tensor_sha256(before)
        rerun = self._run_hops([self.workers[a] for a in replica.split("+")], got.input)
        return HopRerun(got.output, rerun, bound, got.digest, got.signature, int(got.input.shape[0]), str(uuid.uuid4()))

    def _run_hops(self, hops: list[SimWorker], x: torch.Tensor) -> torch.Tensor:
        """Rows [tokens, width] of `hops` run in order on `x` [tokens, hidden]; a lazy hop answers x1.10 of its
        honest output without the work (as a single lazy replica does)."""
        h = x.unsqueeze(0)
        with torch_threads(CalibrationSettings().threads[0]):  # the calibration's reference replay
            for w in hops:
                h = run_stage(self.model, h, w.layers)
                if w.behaviour == "lazy_replica":
                    h = h * 1.10
        return h[0]

    def replay_evidence(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> ReplayReceipt:
        with self._lock:
            return self.replay_digests.get((job_id, part.work_key, chunk_index, replica), ReplayReceipt())

    def _replay(
        self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str
    ) -> tuple[torch.Tensor, list[tuple[SimWorker, torch.Tensor, torch.Tensor]]]:
        """The chunk's replayed rows, and per hop (worker, the input it got, its answer) [tokens, width]."""
        sim = self._part(job_id, part.work_key)
        seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
        start, stop = pc * 32, min((pc + 1) * 32, sim.inputs[seq].shape[0])
        hops = [self.workers[a] for a in replica.split("+")]  # one replica, or a chain's hops in layer order
        with self._lock:
            self.replays += 1
        if any(w.behaviour == "colluder" and w.colludes_with == part.worker for w in hops):
            claimed = sim.outputs[seq][:stop].clone()  # confirms whatever the cheater claimed
            return claimed[start:stop], [(hops[-1], sim.inputs[seq][:stop], claimed)]
        # The recorded input up to the chunk's end: attention needs the chunk's whole prefix; a chain runs each
        # hop's layers on the previous hop's answer.
        h = sim.inputs[seq][:stop]
        answers = []
        for w in hops:
            x, h = h, self._run_hops([w], h)
            answers.append((w, x, h))
        return h[start:stop], answers
