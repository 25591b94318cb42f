"""Malformed, oversized and out-of-place frames get a clear error back and break nothing else."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from eth_account.signers.local import LocalAccount
from websockets.sync.client import connect

from globai.client import sign_in
from globai.models.manifest import load_manifest
from globai.models.reference import generate_reference
from globai.protocol.pipeline import WS_PATH, scope_to_json
from globai.protocol.signing import ChunkScope
from globai.protocol.tensors import decode_message, encode_message, encode_tensor
from tests.runtime.conftest import MODEL, InProcessWorker, MarketServer, Requester
from worker.runtime.server import StageServer
from worker.stage import Stage


def _error(raw: bytes) -> dict:  # type: ignore[type-arg]
    message = decode_message(raw, max_bytes=0)
    assert message.header["op"] == "error", message.header
    return message.header


def test_bad_frames_from_a_worker_are_answered_and_the_market_goes_on(
    market: MarketServer,
    requester: Requester,
    staked: list[LocalAccount],
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def admitted(link: object) -> bool:  # the hand-driven socket below answers no join challenge
        return True

    monkeypatch.setattr(market.coordinator, "admit", admitted)
    workers = [
        InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}") for i, layers in enumerate(["0:2", "2:4"])
    ]
    rogue = staked[3]
    import httpx

    with httpx.Client(base_url=market.url) as http:
        token = sign_in(http, rogue, ["worker"])
        http.headers["Authorization"] = f"Bearer {token}"
        http.post(
            "/v1/workers",
            json={
                "device": "cpu:test",
                "memory_bytes": 1 << 30,
                "throughput_tokens_s": 1.0,
                "bandwidth_bytes_s": 1.0,
                "latency_ms": 1.0,
                "reference_layer": "x",
                "operator_id": "rogue",
            },
        ).raise_for_status()
    try:
        market.wait_workers(2)
        digest = load_manifest(tiny_model).digest()
        url = market.url.replace("http://", "ws://") + WS_PATH
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None) as ws:
            # layers [0, 1) never chain with the others' [0, 2) + [2, 4): this link is never on a route
            ws.send(
                encode_message(
                    {
                        "op": "hello",
                        "model": MODEL,
                        "digest": digest,
                        "layer_start": 0,
                        "layer_end": 1,
                        "max_batch": 1,
                        "max_tokens": 16,
                    }
                )
            )
            assert decode_message(ws.recv(), max_bytes=0).header["op"] == "welcome"

            ws.send(b"definitely not a frame")
            assert _error(ws.recv())["code"] == "bad_frame:bad_magic"

            # a frame header announcing a 4 GB float32 payload, with nothing behind it: refused before allocating
            fixed = struct.Struct("<4sBBBBIQ")
            huge = fixed.pack(b"GLBT", 1, 1, 1, 0, fixed.size + 8 + 32, 4 * 10**9) + struct.pack("<Q", 10**9)
            body = encode_message({"op": "result", "rid": 1})
            ws.send(body[:5] + bytes([1]) + body[6:] + huge + b"\0" * 32)
            err = _error(ws.recv())
            assert err["code"] == "bad_frame:oversized" and "limit" in err["message"]

            frame = bytearray(encode_message({"op": "result", "rid": 2}, [torch.ones(2, 3)]))
            frame[-1] ^= 0xFF
            ws.send(bytes(frame))
            assert _error(ws.recv())["code"] == "bad_frame:hash_mismatch"

            ws.send("text frames are not part of the protocol")
            assert _error(ws.recv())["code"] == "bad_frame:text"

            ws.send(encode_message({"op": "result", "rid": 12345}))
            err = _error(ws.recv())
            assert err["code"] == "bad_frame:bad_header" and "rid" in err["message"]

            # The rogue connection is still up and registered; real work goes on, exactly.
            assert any(lnk.address == rogue.address for lnk in market.coordinator.links.live(MODEL))
            prompt = torch.randint(3, 500, (2, 5), generator=torch.Generator().manual_seed(3))
            done = requester.generate(prompt.tolist(), 8)
            assert done["tokens"] == generate_reference(tiny_model, prompt, 8).tolist()
            assert [h["layers"] for h in done["route"]] == [[0, 2], [2, 4]]
    finally:
        for w in workers:
            w.stop()


def test_worker_answers_bad_requests_with_errors_and_keeps_its_sessions(tiny_model: Path) -> None:
    from eth_account import Account

    server = StageServer(Stage(tiny_model, 2, 4), Account.from_key(b"\x55" * 32))
    scope = ChunkScope(31337, b"\1" * 32, b"\2" * 32, 2, b"\3" * 32)
    opened = decode_message(
        server.handle(encode_message({"op": "open", "rid": 1, "session": "s", "scope": scope_to_json(scope)})),
        max_bytes=0,
    )
    assert opened.header["op"] == "result"
    hidden = torch.randn(1, 4, 128, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(4)[None]

    def forward(rid: int, tensors: list[torch.Tensor], **extra: object) -> dict:  # type: ignore[type-arg]
        raw = server.handle(
            encode_message(
                {
                    "op": "forward",
                    "rid": rid,
                    "session": "s",
                    "step": 0,
                    "first_position": 0,
                    "last_token_only": True,
                    **extra,
                },
                tensors,
            )
        )
        assert raw is not None
        return decode_message(raw, max_bytes=1 << 24)  # type: ignore[return-value]

    cases = {
        "wrong hidden size": [torch.randn(1, 4, 64), positions],
        "wrong dtype": [hidden.half(), positions],
        "token ids where states are due": [torch.ones(1, 4, dtype=torch.int64), positions],
        "batch above max_batch": [torch.randn(9, 4, 128), torch.arange(4)[None]],
        "positions do not match": [hidden, torch.arange(3)[None]],
        "missing positions": [hidden],
    }
    for rid, (what, tensors) in enumerate(cases.items(), start=10):
        reply = forward(rid, tensors)
        assert reply.header["op"] == "error" and reply.header["rid"] == rid, what  # type: ignore[attr-defined]
        assert reply.header["code"].startswith("bad_frame:"), (what, reply.header)  # type: ignore[attr-defined]
    assert server.handle(b"\x00" * 3) is not None  # garbage: an error answer, never an exception
    assert decode_message(server.handle(encode_tensor(hidden)), max_bytes=0).header["op"] == "error"  # type: ignore[arg-type]
    # the session is intact: the valid request gives what a fresh stage gives
    good = forward(99, [hidden, positions])
    assert good.header["op"] == "result"  # type: ignore[attr-defined]
    fresh = Stage(tiny_model, 2, 4).forward(None, hidden, positions, last_token_only=True)
    assert torch.equal(good.tensors[0], fresh)  # type: ignore[attr-defined]
