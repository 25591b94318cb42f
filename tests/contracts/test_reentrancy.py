"""Reentrancy through a malicious token: an ERC-777-style hook hands control to an attacker mid-transfer.

The attacker contract (`Reenterer`) records the outcome of its reentrant call instead of reverting, so the
outer call completes and the test can check that the guard refused the second entry and nothing was paid twice.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import keccak
from web3.contract import Contract

from globai.chain.deploy import GLB, role_id

from .conftest import DAY, Env, job_id_of

GUARD_ERROR = keccak(text="ReentrancyGuardReentrantCall()")[:4]


@pytest.fixture
def hostile(env: Env) -> dict[str, Contract]:
    """A hooked token, an escrow and a vault over it, and an attacker contract."""
    client, admin = env.client, env.admin
    token, _ = client.deploy("test/ReentrantToken", admin.address, 10**9 * GLB, sender=admin)
    escrow, _ = client.deploy("JobEscrow", token.address, admin.address, admin.address, 200, sender=admin)
    client.transact(escrow.functions.grantRole(role_id("SETTLER_ROLE"), admin.address), admin)
    vault, _ = client.deploy(
        "StakingVault", token.address, escrow.address, admin.address, GLB, 7 * DAY, 5_000, 1_000, sender=admin
    )
    client.transact(escrow.functions.grantRole(role_id("STAKES_ROLE"), vault.address), admin)
    attacker, _ = client.deploy("test/Reenterer", sender=env.outsider)
    client.transact(token.functions.transfer(attacker.address, 1_000 * GLB), admin)
    client.transact(token.functions.setHookedReceiver(attacker.address), admin)
    return {"token": token, "escrow": escrow, "vault": vault, "attacker": attacker}


def as_attacker(env: Env, attacker: Contract, target: Contract, fn: str, *args: Any) -> dict[str, Any]:
    data = target.encode_abi(fn, args=list(args))
    return env.tx(attacker.functions.execute(target.address, data), env.outsider)


def arm(env: Env, attacker: Contract, target: Contract, fn: str, *args: Any) -> None:
    env.tx(attacker.functions.arm(target.address, target.encode_abi(fn, args=list(args))), env.outsider)


def assert_refused(attacker: Contract) -> None:
    assert attacker.functions.reentries().call() == 1
    assert attacker.functions.lastSuccess().call() is False
    assert attacker.functions.lastResult().call()[:4] == GUARD_ERROR


def test_escrow_withdraw_cannot_be_reentered(env: Env, hostile: dict[str, Contract]) -> None:
    token, escrow, attacker = hostile["token"], hostile["escrow"], hostile["attacker"]
    # An honest requester funds two jobs; the attacker is paid for one.
    env.tx(token.functions.transfer(env.requester.address, 500 * GLB), env.admin)
    env.tx(token.functions.approve(escrow.address, 500 * GLB), env.requester)
    for name in ("j1", "j2"):
        env.tx(escrow.functions.fundJob(keccak(text=name), 200 * GLB, b"\0" * 32, env.now() + DAY), env.requester)
    root = keccak(b"root")
    vault = hostile["vault"]
    as_attacker(env, attacker, token, "approve", vault.address, GLB)
    as_attacker(env, attacker, vault, "stake", GLB)  # a payee needs stake to be credited
    j1 = job_id_of(env.requester.address, keccak(text="j1"))
    env.tx(escrow.functions.settle(j1, [attacker.address], [50 * GLB], root), env.admin)

    arm(env, attacker, escrow, "withdraw")
    before = token.functions.balanceOf(attacker.address).call()
    as_attacker(env, attacker, escrow, "withdraw")

    assert_refused(attacker)
    assert token.functions.balanceOf(attacker.address).call() == before + 50 * GLB  # paid once
    assert escrow.functions.balanceOf(attacker.address).call() == 0
    # What the escrow still holds: the second job plus the fee and requester credits of the first.
    assert token.functions.balanceOf(escrow.address).call() == 400 * GLB - 50 * GLB


def test_escrow_refund_cannot_be_reentered_cross_function(env: Env, hostile: dict[str, Contract]) -> None:
    token, escrow, attacker = hostile["token"], hostile["escrow"], hostile["attacker"]
    as_attacker(env, attacker, token, "approve", escrow.address, 300 * GLB)
    deadline = env.now() + DAY
    for name in ("a", "b"):
        as_attacker(env, attacker, escrow, "fundJob", keccak(text=name), 100 * GLB, b"\0" * 32, deadline)
    env.warp(DAY + 1)
    # While its first refund is being paid, the attacker tries to take the second job's refund as well.
    a, b = (job_id_of(attacker.address, keccak(text=name)) for name in ("a", "b"))
    arm(env, attacker, escrow, "refund", b)
    before = token.functions.balanceOf(attacker.address).call()
    env.tx(escrow.functions.refund(a), env.outsider)

    assert_refused(attacker)
    assert token.functions.balanceOf(attacker.address).call() == before + 100 * GLB
    assert escrow.functions.getJob(b).call()[3] == 1  # still funded, refundable normally
    env.tx(escrow.functions.refund(b), env.outsider)


def test_vault_withdraw_cannot_be_reentered(env: Env, hostile: dict[str, Contract]) -> None:
    token, vault, attacker = hostile["token"], hostile["vault"], hostile["attacker"]
    as_attacker(env, attacker, token, "approve", vault.address, 100 * GLB)
    as_attacker(env, attacker, vault, "stake", 100 * GLB)
    as_attacker(env, attacker, vault, "requestUnstake", 100 * GLB)
    env.warp(7 * DAY)
    arm(env, attacker, vault, "withdraw")
    before = token.functions.balanceOf(attacker.address).call()
    as_attacker(env, attacker, vault, "withdraw")

    assert_refused(attacker)
    assert token.functions.balanceOf(attacker.address).call() == before + 100 * GLB
    assert token.functions.balanceOf(vault.address).call() == 0
