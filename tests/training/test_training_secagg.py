"""Secure aggregation primitives (globai/protocol/secagg.py) and the DP accountant, without a market."""

from __future__ import annotations

import math

import pytest
import torch
from eth_account import Account

from globai.protocol import secagg
from market.training.privacy import epsilon, worker_noise_std


def test_shamir_any_t_shares_recover_fewer_do_not() -> None:
    secret = bytes(range(32))
    shares = secagg.split(secret, 5, 3)
    assert secagg.combine(shares[:3]) == secret == secagg.combine([shares[4], shares[1], shares[2]])
    assert secagg.combine(shares) == secret
    with pytest.raises(secagg.SecAggError):
        secagg.combine(shares[:2])  # two points of a degree-2 polynomial: (almost surely) not the secret


def test_masked_sum_with_a_dropout_equals_the_survivors_sum() -> None:
    ctx = secagg.round_context(31337, "0x" + "ab" * 32, 0, "cd" * 32)
    parts = [secagg.Participant.new(slot, ctx) for slot in range(4)]
    c_pub = {p.slot: p.c.public for p in parts}
    s_pub = {p.slot: p.s.public for p in parts}
    t = secagg.threshold(4)
    assert t == 3
    sealed = {p.slot: p.shares_for(c_pub, t) for p in parts}
    bound = 1.0
    scale = secagg.fixed_point_scale(bound, 4)
    xs = {p.slot: torch.randn(1000, dtype=torch.float64) * 0.1 for p in parts}
    ys = {p.slot: p.mask(secagg.encode(xs[p.slot], scale, bound), s_pub) for p in parts if p.slot != 2}
    for slot, y in ys.items():  # a masked input alone says nothing about its update
        alone = secagg.decode_sum(y, scale)
        assert abs(float(torch.corrcoef(torch.stack([alone, xs[slot]]))[0, 1])) < 0.15
    # Survivors 0, 1, 3 open what the others sealed for them: b shares of survivors, s shares of the dropped.
    opened = {v: {u: parts[v].open_share(u, c_pub[u], sealed[u][v]) for u in range(4)} for v in ys}
    b = {u: secagg.combine([opened[v][u][1] for v in ys]) for u in ys}
    s2 = secagg.combine([opened[v][2][0] for v in ys])
    assert s2 == parts[2].s.private
    total = secagg.unmask_sum(ys, s_pub, b, {2: s2}, ctx)
    expected = xs[0] + xs[1] + xs[3]
    assert float((secagg.decode_sum(total, scale) - expected).abs().max()) <= 3 / scale
    # Wire form round trip; a sealed share opens only for its receiver.
    assert torch.equal(secagg.decode_masked(secagg.encode_masked(ys[0]), 1000), ys[0])
    with pytest.raises(secagg.SecAggError):
        parts[1].open_share(0, c_pub[0], sealed[0][3])


def test_key_signatures_bind_slot_and_keys() -> None:
    account = Account.create()
    kp_c, kp_s = secagg.KeyPair.generate(), secagg.KeyPair.generate()
    sig = secagg.sign_keys(account, b"ctx", 1, kp_c.public, kp_s.public)
    assert secagg.keys_signer(b"ctx", 1, kp_c.public, kp_s.public, sig) == account.address
    assert secagg.keys_signer(b"ctx", 2, kp_c.public, kp_s.public, sig) != account.address
    with pytest.raises(secagg.SecAggError):
        secagg.decode_masked(b"not safetensors", 10)


def test_accountant_gaussian_rdp() -> None:
    assert epsilon(1.0, 0, 1e-5) == 0.0 and math.isinf(epsilon(0.0, 1, 1e-5))
    one, ten = epsilon(1.0, 1, 1e-5), epsilon(1.0, 10, 1e-5)
    assert 3.0 < one < 6.0 and one < ten < 10 * one  # composition grows sublinearly under RDP
    assert epsilon(4.0, 10, 1e-5) < epsilon(2.0, 10, 1e-5)  # more noise, less ε
    assert worker_noise_std(1.0, 2.0, 4) == pytest.approx(1.0)  # any 4 workers' noise sums to std 2
