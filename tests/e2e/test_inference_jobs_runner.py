"""InferenceJobRunner bookkeeping without workers: who is claimed (once), and what a resumed job keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from market.db import Job, JobRun, VerificationRun
from market.db.engine import make_engine, make_session_factory
from market.db.inference import InferenceRun
from market.db.migrate import upgrade
from market.services.inference_jobs import InferenceJobRunner, batches, job_outputs

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PROMPTS = [f"prompt {i}" for i in range(5)]


def _encode(_model: str, prompts: list[str] | None, _ids: Any) -> list[list[int]]:
    return [[len(p), ord(p[-1])] for p in prompts or []]


def _runner(tmp_path: Path) -> tuple[InferenceJobRunner, Any]:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    coordinator = SimpleNamespace(
        config=SimpleNamespace(max_batch=2),
        encode_prompts=_encode,
        links=SimpleNamespace(live=lambda model=None: []),
        peers=None,  # one market process: nothing shared through Redis
    )
    sf = make_session_factory(engine)
    return InferenceJobRunner(coordinator, sf, lambda: NOW), sf  # type: ignore[arg-type]


def _job(sf: Any, status: str, model: str = "m") -> str:
    with sf() as s:
        job = Job(
            chain_job_id="0x" + status.encode().hex().ljust(64, "0"),
            requester="0x" + "11" * 20,
            kind="inference",
            model=model,
            spec={"kind": "inference", "model": model, "prompts": PROMPTS, "max_new_tokens": 3},
            spec_hash="0x" + "00" * 32,
            budget=10,
            price_per_unit=1,
            max_units=15,
            deadline=NOW + timedelta(hours=1),
            status=status,
            created_at=NOW,
        )
        s.add(job)
        s.commit()
        return job.id


def _run(sf: Any, job_id: str, prompts: list[str], status: str, at: int) -> str:
    with sf() as s:
        run = InferenceRun(
            requester="0x" + "11" * 20,
            model="m",
            model_digest="d",
            job_nonce="0x" + "00" * 32,
            params={"prompt_ids": _encode("m", prompts, None)},
            status=status,
            tokens=[[7, at]] * len(prompts) if status == "completed" else None,
            created_at=NOW + timedelta(seconds=at),
        )
        s.add(run)
        s.flush()
        s.add(JobRun(run_id=run.id, job_id=job_id, created_at=NOW + timedelta(seconds=at)))
        s.commit()
        return run.id


def test_funded_jobs_are_claimed_once_and_only_when_their_model_is_served(tmp_path: Path) -> None:
    runner, sf = _runner(tmp_path)
    funded = _job(sf, "funded")
    assert runner._claim(set(), resume=False) == []  # no worker for the model: stays funded (queued)
    assert runner._claim({"m"}, resume=False) == [funded]
    assert runner._claim({"m"}, resume=False) == []  # a second confirm / poll does not run it again
    with sf() as s:
        assert s.get(Job, funded).status == "running"
    # After a restart the job left running is resumed (once, at start-up).
    assert runner._claim({"m"}, resume=True) == [funded]


def test_resume_keeps_completed_batches_and_drops_unfinished_runs(tmp_path: Path) -> None:
    runner, sf = _runner(tmp_path)
    job_id = _job(sf, "running")
    parts = batches(PROMPTS, 2)  # [0,1] [2,3] [4]
    # An earlier attempt: batch 2 finished first (order must not matter), batch 0 completed, batch 1 was cut off.
    done2 = _run(sf, job_id, parts[2], "completed", 1)
    done0 = _run(sf, job_id, parts[0], "completed", 2)
    cut = _run(sf, job_id, parts[1], "running", 3)
    _job_unused, _spec, done, going = runner._prepare(job_id)
    assert done == {0: done0, 2: done2} and going == {}  # one process: a run left running is nobody's
    with sf() as s:
        assert cut not in set(s.scalars(select(JobRun.run_id)).all())
        assert s.get(VerificationRun, job_id) is not None  # the sampling secret exists before any new work
        job = s.get(Job, job_id)
        outputs = job_outputs(s, job=job, encode=lambda p: _encode("m", p, None), decode=None, batch_size=2)
    assert [o["prompt"] for o in outputs] == PROMPTS
    assert [o["tokens"] for o in outputs] == [[7, 2], [7, 2], None, None, [7, 1]]


def test_funded_job_without_a_worker_for_its_model_is_refunded_after_the_route_wait(tmp_path: Path) -> None:
    from market.db import Settlement

    runner, sf = _runner(tmp_path)
    job_id = _job(sf, "funded")
    with sf() as s:
        s.get(Job, job_id).updated_at = NOW - timedelta(seconds=runner.route_wait_s - 1)  # funded just now
        s.commit()
    assert runner._claim(set(), resume=False) == []
    with sf() as s:
        assert s.get(Job, job_id).status == "funded"  # still waiting for a worker
        s.get(Job, job_id).updated_at = NOW - timedelta(seconds=runner.route_wait_s + 1)
        s.commit()
    assert runner._claim(set(), resume=False) == []
    with sf() as s:
        assert s.get(Job, job_id).status == "cancelled"
        refund = s.scalar(select(Settlement).where(Settlement.job_id == job_id))
        assert refund is not None and (refund.kind, refund.status) == ("refund", "pending")
