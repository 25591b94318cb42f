"""Whole DiLoCo runs on a tiny Llama: loss goes down, the distributed path equals the single-process reference,
a poisoned update is bounded, a dropped worker's round closes at its deadline, the result loads in transformers;
another family (GPT-2) trains the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from globai.models.build import build_causal_lm
from market.training.checkpoints import CheckpointStore
from market.training.data import prepare
from market.training.export import export_hf
from market.training.local import run_local_job
from market.training.model import initial_checkpoint
from market.training.reference import reference_diloco
from market.training.rounds import RoundState
from market.training.spec import BOS_ID, EOS_ID, ConfigModelRef, HFDirModelRef, TrainingJobSpec
from worker.training import run_inner_steps


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in b)


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[n] - b[n]).norm() ** 2) for n in b) ** 0.5
    return num / sum(float(b[n].norm() ** 2) for n in b) ** 0.5


@pytest.mark.parametrize("workers,aggregation", [(2, "mean"), (3, "trimmed_mean"), (4, "median")])
def test_distributed_equals_reference_and_lowers_loss(
    workers: int, aggregation: str, tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    spec = make_spec(workers_per_round=workers, aggregation=aggregation, rounds=3)
    ref = reference_diloco(spec, corpus)
    store = CheckpointStore(tmp_path)
    run = run_local_job(spec, corpus, store, "job", run_inner_steps)
    final = store.load("job")
    assert final.manifest.version == spec.rounds
    assert _max_abs_diff(final.params, ref.params) <= 1e-6
    assert _max_abs_diff(final.momentum, ref.momentum) <= 1e-6
    assert run.eval_loss == pytest.approx(ref.eval_loss, abs=1e-5)
    # From ln(260) ≈ 5.56 nats to well below uniform, every round better than the last.
    assert run.eval_loss[-1] < 0.6 * run.eval_loss[0]
    assert all(b < a for a, b in zip(run.eval_loss, run.eval_loss[1:], strict=False))
    assert run.round_states == [RoundState.CLOSED_QUORUM] * spec.rounds


def test_int8_run_stays_close_to_reference(
    tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    spec = make_spec(compression="int8")
    ref = reference_diloco(spec, corpus)
    run = run_local_job(spec, corpus, CheckpointStore(tmp_path), "job", run_inner_steps)
    final = CheckpointStore(tmp_path).load("job")
    assert _rel_diff(final.params, ref.params) < 0.02
    assert run.eval_loss[-1] == pytest.approx(ref.eval_loss[-1], rel=0.03)
    # int8 sends ~1/4 of the fp32 bytes.
    n_params = sum(t.numel() for t in final.params.values())
    assert run.bytes_up < spec.rounds * spec.workers_per_round * (n_params * 1.1 + 8000)


@pytest.mark.parametrize("aggregation", ["trimmed_mean", "median"])
def test_poisoned_update_cannot_move_the_model_beyond_the_honest_bound(
    aggregation: str, tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    spec = make_spec(workers_per_round=4, aggregation=aggregation, rounds=2)
    honest: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def poison(r: int, slot: int, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        honest[(r, slot)] = update
        if slot == 1:
            return {k: v * 1000 if r == 0 else torch.randn_like(v) * 1e6 for k, v in update.items()}
        return update

    store = CheckpointStore(tmp_path)
    run = run_local_job(spec, corpus, store, "job", run_inner_steps, tamper=poison)
    v0, v1 = store.load("job", 0).params, store.load("job", 1).params
    # Round 0 (momentum starts at 0): θ1 − θ0 = −lr(1+μ)·agg, and agg lies in the honest envelope.
    bound_sq = 0.0
    moved_sq = 0.0
    for name in v0:
        env = torch.stack([honest[(0, s)][name] for s in (0, 2, 3)]).abs().max(0).values
        bound_sq += float(env.norm() ** 2)
        moved_sq += float((v1[name] - v0[name]).norm() ** 2)
    bound = spec.outer_lr * (1 + spec.outer_momentum) * bound_sq**0.5
    assert moved_sq**0.5 <= bound * (1 + 1e-5)
    # The job still trains, despite one poisoned worker in every round.
    assert run.eval_loss[-1] < run.eval_loss[0] - 1.0
    # Control: a plain mean is dragged far outside the bound by the same attack.
    plain = make_spec(workers_per_round=4, aggregation="mean", rounds=1)
    other = CheckpointStore(tmp_path / "mean")
    run_local_job(plain, corpus, other, "job", run_inner_steps, tamper=poison, evaluate=False)
    p0, p1 = other.load("job", 0).params, other.load("job", 1).params
    assert sum(float((p1[n] - p0[n]).norm() ** 2) for n in p0) ** 0.5 > 50 * bound


def test_dropped_worker_round_closes_at_deadline_and_job_completes(
    tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    spec = make_spec(workers_per_round=3, rounds=3, compression="int8")
    store = CheckpointStore(tmp_path)
    run = run_local_job(spec, corpus, store, "job", run_inner_steps, dropped={(1, 2), (2, 0)})
    assert run.round_states == [RoundState.CLOSED_QUORUM, RoundState.CLOSED_DEADLINE, RoundState.CLOSED_DEADLINE]
    assert run.updates_per_round == [3, 2, 2]
    assert store.manifest("job").version == spec.rounds
    assert [store.manifest("job", v).n_updates for v in (1, 2, 3)] == [3, 2, 2]
    assert run.eval_loss[-1] < run.eval_loss[0] - 1.0
    # Resuming a finished job does nothing.
    again = run_local_job(spec, corpus, store, "job", run_inner_steps, evaluate=False)
    assert again.round_states == [] and store.versions("job") == [0, 1, 2, 3]


def test_final_checkpoint_loads_with_transformers(
    tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    spec = make_spec(rounds=1, workers_per_round=2)
    store = CheckpointStore(tmp_path / "store")
    run_local_job(spec, corpus, store, "job", run_inner_steps, evaluate=False)
    out = export_hf(store, "job", tmp_path / "hf")
    model = LlamaForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The old miller", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == list(b"The old miller")
    ours = build_causal_lm(store.manifest("job").config, store.load("job").params)
    window = prepare(spec, corpus).eval[:2, :-1]
    with torch.no_grad():
        assert torch.equal(model(input_ids=window).logits, ours(input_ids=window).logits)
    assert tok.decode(ids[0]) == "The old miller"
    # A later job can continue from the exported directory.
    cont = make_spec(model=HFDirModelRef(path=str(out)))
    config, params = initial_checkpoint(cont)
    assert config["hidden_size"] == 64
    assert all(torch.equal(params[n], t) for n, t in store.load("job").params.items())


def test_another_family_trains_through_the_registry(
    tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    # GPT-2 (learned positions, Conv1D, its own key names): the job builds its model by family, like Llama's.
    # Dropout off, as Llama has it: a worker seeds before building its model and the in-process reference does
    # not, so their dropout masks would differ (each side is still reproducible on its own).
    config = {
        "model_type": "gpt2",
        "vocab_size": 260,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 512,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "resid_pdrop": 0.0,
    }
    spec = make_spec(model=ConfigModelRef(config=config, init_seed=7), rounds=2, workers_per_round=2)
    ref = reference_diloco(spec, corpus)
    store = CheckpointStore(tmp_path / "store")
    run = run_local_job(spec, corpus, store, "job", run_inner_steps)
    assert _max_abs_diff(store.load("job").params, ref.params) <= 1e-6
    assert run.eval_loss[-1] < run.eval_loss[0]
    model = AutoModelForCausalLM.from_pretrained(export_hf(store, "job", tmp_path / "hf")).eval()
    assert type(model).__name__ == "GPT2LMHeadModel"
    window = prepare(spec, corpus).eval[:2, :-1]
    with torch.no_grad():
        ours = build_causal_lm(config, store.load("job").params)(input_ids=window).logits
        assert torch.equal(model(input_ids=window).logits, ours)
