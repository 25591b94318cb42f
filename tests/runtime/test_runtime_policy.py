"""Pure policy (placement, routing), the blob store, and resumable shard downloads."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from globai.client import sign_in
from globai.models.manifest import load_manifest
from market.blobstore import BlobNotFound, BlobStore
from market.coordinator.routing import RouteCandidate, plan_route, plan_span, replicated
from market.scheduler.reputation import Reputation
from tests.runtime.conftest import MarketServer
from worker.runtime.placement import choose_layer_range, layers_that_fit, parse_layers
from worker.runtime.shards import download_file


def test_placement_fills_the_thinnest_layers_within_memory(tiny_model: Path) -> None:
    m = load_manifest(tiny_model)
    per_layer = m.shard("layer.1").size
    everything = sum(s.size for s in m.shards) * 2
    assert choose_layer_range(m, everything, [0, 0, 0, 0]) == (0, 4)
    two = int((per_layer * 2 + m.shard("embed").size + m.shard("head").size) / 0.75) + 1
    assert layers_that_fit(m, two, 2) == 2
    assert choose_layer_range(m, two, [1, 1, 0, 0]) == (2, 4)  # the gap first
    assert choose_layer_range(m, two, [0, 0, 3, 3])[0] == 0
    with pytest.raises(ValueError):
        choose_layer_range(m, 10, [0, 0, 0, 0])
    assert parse_layers("1:3", 4) == (1, 3)
    with pytest.raises(ValueError):
        parse_layers("3:9", 4)


def _cand(
    link: str, op: str, a: int, b: int, *, tps: float = 1000.0, lat: float = 1.0, good: float = 1.0
) -> RouteCandidate:
    return RouteCandidate(link, op, a, b, tps, lat, Reputation(alpha=1 + good * 10, beta=1.0, evidence=good * 10))


def test_routing_tiles_all_layers_prefers_fast_trusted_workers_and_adds_standbys() -> None:
    cands = [
        _cand("a", "o1", 0, 2),
        _cand("b", "o2", 2, 4),
        _cand("slow", "o3", 2, 4, tps=10.0),
        _cand("b2", "o4", 2, 4),
        _cand("b3", "o2", 2, 4),
    ]
    hops = plan_route(4, cands, rng=random.Random(0))
    assert hops is not None and [(h.start, h.end) for h in hops] == [(0, 2), (2, 4)]
    assert hops[1].primary in ("b", "b2")
    assert all(s not in (hops[1].primary, "slow") for s in hops[1].standbys) or hops[1].standbys == ("slow",)
    # the standby is never of the primary's operator
    ops = {c.link_id: c.operator_id for c in cands}
    assert all(ops[s] != ops[hops[1].primary] for s in hops[1].standbys)
    untrusted = [_cand("a", "o1", 0, 4, good=0.0), _cand("x", "o2", 0, 2), _cand("y", "o3", 2, 4)]
    assert [c.link_id for c in plan_span(0, 4, untrusted) or []] in (["a"], ["x", "y"])
    assert plan_route(4, [_cand("a", "o1", 0, 2)]) is None  # a gap: no route
    assert [c.link_id for c in plan_span(2, 4, cands, exclude={"b", "b2", "b3"}) or []] == ["slow"]


def test_blob_store_is_content_addressed_and_sweeps(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    a, b = store.put(b"alpha"), store.put(b"beta")
    assert store.put(b"alpha") == a and store.get(a) == b"alpha" and store.has(b)
    assert store.sweep([a]) == 1 and not store.has(b)
    with pytest.raises(BlobNotFound):
        store.get(b)
    (tmp_path / a[:2] / a[2:]).write_bytes(b"tampered")
    with pytest.raises(BlobNotFound):
        store.get(a)


def test_shard_download_resumes_with_range_and_checks_sha256(
    market: MarketServer, tiny_model: Path, tmp_path: Path
) -> None:
    m = load_manifest(tiny_model)
    entry = m.shard("layer.2")
    data = (tiny_model / entry.path).read_bytes()
    part = tmp_path / (entry.path + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])
    with httpx.Client(base_url=market.url) as http:
        token = sign_in(http, Account.from_key(b"\x79" * 32), ["requester"])
        http.headers["Authorization"] = f"Bearer {token}"
        fetched = download_file(http, m.name, entry, tmp_path, None)
        assert fetched == len(data) - len(data) // 3  # only the missing bytes travelled
        assert (tmp_path / entry.path).read_bytes() == data and not part.exists()
        assert download_file(http, m.name, entry, tmp_path, None) == 0  # complete: nothing to fetch
        # a corrupted partial file is detected and never installed
        (tmp_path / entry.path).unlink()
        part.write_bytes(b"\0" * (len(data) // 2))
        from globai.models.errors import ShardIntegrityError

        with pytest.raises(ShardIntegrityError):
            download_file(http, m.name, entry, tmp_path, None)
        assert not (tmp_path / entry.path).exists()
        # files the manifest does not pin are not served
        assert http.get(f"/v1/models/{m.name}/files/hf/config.json").status_code == 404


def test_unstaked_worker_is_refused_before_downloading(market: MarketServer, tmp_path: Path) -> None:
    from tests.runtime.conftest import MODEL
    from worker.runtime.daemon import NotEligibleError, WorkerConfig, WorkerDaemon

    daemon = WorkerDaemon(
        WorkerConfig(
            market_url=market.url,
            account=Account.from_key(b"\x7a" * 32),
            model=MODEL,
            layers="0:2",
            cache_dir=tmp_path / "cache",
            show_progress=False,
        )
    )
    try:
        with pytest.raises(NotEligibleError, match="stake"):
            daemon.prepare()
    finally:
        daemon.close()
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_routing_prefers_spans_an_independent_replica_can_check() -> None:
    # A faster worker whose range no other operator covers loses to a chain whose every span has a replica of
    # another operator (its work could not be checked, so it could not be paid).
    alone = _cand("wide", "o1", 0, 3, tps=2000.0)
    tail = _cand("tail", "o1", 3, 4)
    chain = [_cand("x", "o2", 0, 2), _cand("x2", "o3", 0, 2), _cand("y", "o4", 2, 4), _cand("y2", "o5", 2, 4)]
    path = plan_span(0, 4, [alone, tail, *chain])
    assert path is not None and [(c.start, c.end) for c in path] == [(0, 2), (2, 4)]
    # Where nothing replicable chains, the unreplicated route is still used.
    assert [c.link_id for c in plan_span(0, 4, [alone, tail, chain[0]]) or []] == ["wide", "tail"]
    # A replica of the same operator does not count as independent.
    same_op = [alone, tail, _cand("wide2", "o1", 0, 3), _cand("tail2", "o1", 3, 4), *chain]
    assert [c.link_id for c in plan_span(0, 4, same_op) or []] in (["x", "y"], ["x", "y2"], ["x2", "y"], ["x2", "y2"])
    # A range no single other worker serves is still checkable through a chain of other operators' workers that
    # together cover it (Deliver 3: a replay across a chain), so the fast whole-model worker is used.
    whole = _cand("whole", "o1", 0, 4, tps=2000.0)
    assert [c.link_id for c in plan_span(0, 4, [whole, *chain]) or []] == ["whole"]
    assert replicated([whole, chain[0]]) == set()  # [2, 4) uncovered: no chain


def test_declared_speed_is_capped_by_what_the_coordinator_measures() -> None:
    from market.coordinator.links import WorkerLink

    async def send(_raw: bytes) -> None:
        return None

    def link(link_id: str, declared: float) -> WorkerLink:
        return WorkerLink(
            link_id,
            f"0x{link_id}",
            link_id,
            f"op-{link_id}",
            "m",
            "d",
            0,
            4,
            8,
            2048,
            declared,
            1.0,
            Reputation(alpha=11, beta=1, evidence=10),
            send,
        )

    liar, honest = link("liar", 1e9), link("honest", 2000.0)
    for _ in range(5):  # what the calls actually took: the liar 40 ms per decode step, the honest one 4 ms
        liar.observe(1, 40.0, 39.0)
        honest.observe(1, 4.0, 3.0)
    assert liar.effective_tokens_s < 200 and honest.effective_tokens_s == pytest.approx(1000.0)
    assert liar.effective_latency_ms >= 1.0
    cands = [
        RouteCandidate(
            lnk.link_id, lnk.operator_id, 0, 4, lnk.effective_tokens_s, lnk.effective_latency_ms, lnk.reputation
        )
        for lnk in (liar, honest)
    ]
    assert [c.link_id for c in plan_span(0, 4, cands) or []] == ["honest"]
    # Before any observation the declared figure stands (a new worker gets a chance to be measured).
    assert link("new", 5000.0).effective_tokens_s == 5000.0
