"""StakingVault on a real Anvil: staking, unbonding, withdrawal, slashing (also during unbonding), roles, pause."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from globai.chain.artifacts import bytecode
from globai.chain.deploy import GLB, role_id
from globai.protocol.signing import ChunkScope, commit_digest, sign_digest

from .conftest import DAY, Env, assert_reverts, names

WEEK = 7 * DAY
ZERO = "0x" + "00" * 20


def stake(env: Env, amount: int, worker=None) -> dict:  # type: ignore[no-untyped-def]
    return env.tx(env.c.vault.functions.stake(amount), worker or env.worker)


def signed(worker: LocalAccount, label: str) -> tuple[bytes, bytes]:
    """(evidence digest, `worker`'s EIP-191 signature over it): what `slash` needs."""
    evidence = keccak(text=f"evidence:{label}")
    return evidence, sign_digest(worker, evidence)


def slash(env: Env, amount: int, label: str, requester: str = ZERO, finder: str = ZERO):  # type: ignore[no-untyped-def]
    evidence, signature = signed(env.worker, label)
    return env.c.vault.functions.slash(env.worker.address, amount, keccak(b"j"), evidence, signature, requester, finder)


def test_stake_adds_up_and_makes_eligible(env: Env) -> None:
    vault = env.c.vault
    before = env.glb(env.worker)
    receipt = stake(env, 60 * GLB)
    assert not vault.functions.isEligible(env.worker.address).call()
    stake(env, 40 * GLB)
    assert vault.functions.stakeOf(env.worker.address).call() == 100 * GLB
    assert vault.functions.isEligible(env.worker.address).call()
    assert env.glb(env.worker) == before - 100 * GLB
    assert env.glb(vault.address) == 100 * GLB
    (event,) = [e for e in env.events(receipt) if e.address == vault.address]
    assert (event.name, event.args) == (
        "Staked",
        {"worker": env.worker.address, "amount": 60 * GLB, "newStake": 60 * GLB},
    )
    assert_reverts(env.client, vault.functions.stake(0), env.worker, "StakingVaultZeroAmount")


def test_unstake_unbonds_then_withdraws_after_the_period(env: Env) -> None:
    vault = env.c.vault
    stake(env, 100 * GLB)
    receipt = env.tx(vault.functions.requestUnstake(30 * GLB), env.worker)
    release = env.now() + WEEK
    assert vault.functions.stakeOf(env.worker.address).call() == 70 * GLB
    assert vault.functions.unbondingOf(env.worker.address).call() == [30 * GLB, release]
    assert env.events(receipt)[0].args == {"worker": env.worker.address, "amount": 30 * GLB, "releaseTime": release}
    assert not vault.functions.isEligible(env.worker.address).call()

    assert_reverts(env.client, vault.functions.withdraw(), env.worker, "StakingVaultStillUnbonding", release)
    env.warp(WEEK)
    before = env.glb(env.worker)
    receipt = env.tx(vault.functions.withdraw(), env.worker)
    assert env.glb(env.worker) == before + 30 * GLB
    assert vault.functions.unbondingOf(env.worker.address).call() == [0, 0]
    assert [(e.name, e.args) for e in env.events(receipt) if e.address == vault.address] == [
        ("Withdrawn", {"worker": env.worker.address, "amount": 30 * GLB})
    ]
    assert_reverts(
        env.client, vault.functions.withdraw(), env.worker, "StakingVaultNothingToWithdraw", env.worker.address
    )


def test_a_new_unstake_request_restarts_the_release_time(env: Env) -> None:
    vault = env.c.vault
    stake(env, 100 * GLB)
    env.tx(vault.functions.requestUnstake(10 * GLB), env.worker)
    env.warp(WEEK - DAY)
    env.tx(vault.functions.requestUnstake(5 * GLB), env.worker)
    release = env.now() + WEEK
    assert vault.functions.unbondingOf(env.worker.address).call() == [15 * GLB, release]
    env.warp(DAY + 1)
    assert_reverts(env.client, vault.functions.withdraw(), env.worker, "StakingVaultStillUnbonding", release)


def test_unstake_rejects_more_than_active_stake(env: Env) -> None:
    vault = env.c.vault
    stake(env, 10 * GLB)
    fn = vault.functions.requestUnstake(11 * GLB)
    assert_reverts(env.client, fn, env.worker, "StakingVaultInsufficientStake", 10 * GLB, 11 * GLB)
    assert_reverts(env.client, vault.functions.requestUnstake(0), env.worker, "StakingVaultZeroAmount")


def test_slash_splits_between_requester_finder_and_burn(env: Env) -> None:
    vault, token = env.c.vault, env.c.token
    stake(env, 100 * GLB)
    supply = token.functions.totalSupply().call()
    req_before, finder_before = env.glb(env.requester), env.glb(env.finder)
    job_id, (evidence, signature) = keccak(b"job"), signed(env.worker, "split")
    fn = vault.functions.slash(
        env.worker.address, 40 * GLB, job_id, evidence, signature, env.requester.address, env.finder.address
    )
    receipt = env.tx(fn, env.admin)

    assert vault.functions.stakeOf(env.worker.address).call() == 60 * GLB
    assert env.glb(env.requester) == req_before + 20 * GLB  # 50 %
    assert env.glb(env.finder) == finder_before + 4 * GLB  # 10 %
    assert token.functions.totalSupply().call() == supply - 16 * GLB  # 40 % burned
    assert env.glb(vault.address) == 60 * GLB
    slashed = [e for e in env.events(receipt) if e.name == "Slashed"]
    assert slashed[0].args == {
        "worker": env.worker.address,
        "jobId": job_id,
        "evidenceHash": evidence,
        "amount": 40 * GLB,
        "toRequester": 20 * GLB,
        "toFinder": 4 * GLB,
        "burned": 16 * GLB,
    }


def test_slash_reaches_unbonding_stake(env: Env) -> None:
    """A cheater who asked to leave is still slashable until the unbonding period ends."""
    vault = env.c.vault
    stake(env, 100 * GLB)
    env.tx(vault.functions.requestUnstake(80 * GLB), env.worker)
    env.warp(WEEK - 60)
    receipt = env.tx(slash(env, 50 * GLB, "unbonding-1", requester=env.requester.address), env.admin)
    # 20 from active stake first, then 30 from unbonding.
    assert vault.functions.stakeOf(env.worker.address).call() == 0
    assert vault.functions.unbondingOf(env.worker.address).call()[0] == 50 * GLB
    slashed = next(e for e in env.events(receipt) if e.name == "Slashed")
    assert (slashed.args["toRequester"], slashed.args["toFinder"], slashed.args["burned"]) == (25 * GLB, 0, 25 * GLB)

    # Taking more than is left takes everything and reports what was actually taken.
    receipt = env.tx(slash(env, 500 * GLB, "unbonding-2"), env.admin)
    slashed = next(e for e in env.events(receipt) if e.name == "Slashed")
    assert (slashed.args["amount"], slashed.args["burned"]) == (50 * GLB, 50 * GLB)
    assert vault.functions.unbondingOf(env.worker.address).call() == [0, 0]
    env.warp(DAY)
    assert_reverts(env.client, vault.functions.withdraw(), env.worker, "StakingVaultNothingToWithdraw")
    assert_reverts(
        env.client, slash(env, GLB, "unbonding-3"), env.admin, "StakingVaultNothingToSlash", env.worker.address
    )


def test_slash_needs_the_workers_own_signature_over_the_evidence_once(env: Env) -> None:
    vault = env.c.vault
    stake(env, 100 * GLB)
    stake(env, 100 * GLB, env.worker2)
    evidence, by_worker2 = signed(env.worker2, "not-yours")
    job = keccak(b"j")
    # Signed by another worker, by nobody valid, or a bare digest: refused on chain.
    for signature in (by_worker2, b"\x00" * 65, b"", by_worker2[:64]):
        fn = vault.functions.slash(env.worker.address, GLB, job, evidence, signature, ZERO, ZERO)
        assert_reverts(env.client, fn, env.admin, "StakingVaultBadEvidence", env.worker.address, evidence)
    # A real chunk commitment of the market's format, signed by the worker: accepted, and once only.
    scope = ChunkScope(chain_id=env.client.chain_id, job_id=job, task_id=keccak(b"t"), stage=0, job_nonce=b"\x07" * 32)
    digest = commit_digest(scope, 3, keccak(b"out"), keccak(b"sketch"))
    fn = vault.functions.slash(env.worker.address, GLB, job, digest, sign_digest(env.worker, digest), ZERO, ZERO)
    env.tx(fn, env.admin)
    assert vault.functions.evidenceUsed(digest).call()
    assert vault.functions.stakeOf(env.worker.address).call() == 99 * GLB
    assert_reverts(env.client, fn, env.admin, "StakingVaultEvidenceUsed", digest)
    assert vault.functions.stakeOf(env.worker2.address).call() == 100 * GLB


def test_only_slashers_slash(env: Env) -> None:
    vault = env.c.vault
    stake(env, 10 * GLB)
    fn = slash(env, GLB, "roles")
    slasher = role_id("SLASHER_ROLE")
    assert_reverts(env.client, fn, env.outsider, "AccessControlUnauthorizedAccount", env.outsider.address, slasher)
    zero = slash(env, 0, "zero")
    assert_reverts(env.client, zero, env.admin, "StakingVaultZeroAmount")
    # Only the admin role can grant roles.
    grant = vault.functions.grantRole(slasher, env.outsider.address)
    assert_reverts(env.client, grant, env.outsider, "AccessControlUnauthorizedAccount")
    env.tx(grant, env.admin)
    env.tx(fn, env.outsider)


def test_pause_stops_staking_but_not_slashing_or_withdrawal(env: Env) -> None:
    vault = env.c.vault
    stake(env, 50 * GLB)
    env.tx(vault.functions.requestUnstake(10 * GLB), env.worker)
    assert_reverts(env.client, vault.functions.pause(), env.outsider, "AccessControlUnauthorizedAccount")
    assert names(env.events(env.tx(vault.functions.pause(), env.admin))) == ["Paused"]
    assert_reverts(env.client, vault.functions.stake(GLB), env.worker, "EnforcedPause")
    assert_reverts(env.client, vault.functions.requestUnstake(GLB), env.worker, "EnforcedPause")
    env.tx(slash(env, GLB, "paused"), env.admin)
    env.warp(WEEK)
    env.tx(vault.functions.withdraw(), env.worker)
    env.tx(vault.functions.unpause(), env.admin)
    stake(env, GLB)


def test_views_and_constructor_checks(env: Env) -> None:
    vault = env.c.vault
    assert vault.functions.minStake().call() == 100 * GLB
    assert vault.functions.unbondingPeriod().call() == WEEK
    assert (vault.functions.requesterBps().call(), vault.functions.finderBps().call()) == (5_000, 1_000)
    assert vault.functions.token().call() == env.c.token.address
    assert vault.functions.escrow().call() == env.c.escrow.address
    token, escrow, admin = env.c.token.address, env.c.escrow.address, env.admin
    factory = env.client.w3.eth.contract(abi=vault.abi, bytecode=bytecode("StakingVault"))
    for args, error in (
        ((token, escrow, admin.address, GLB, WEEK, 9_000, 1_001), "StakingVaultInvalidSplit"),
        ((token, escrow, admin.address, GLB, 0, 0, 0), "StakingVaultInvalidUnbondingPeriod"),
        ((ZERO, escrow, admin.address, GLB, WEEK, 0, 0), "StakingVaultZeroAddress"),
        ((token, ZERO, admin.address, GLB, WEEK, 0, 0), "StakingVaultZeroAddress"),
        ((token, escrow, ZERO, GLB, WEEK, 0, 0), "StakingVaultZeroAddress"),
    ):
        assert_reverts(env.client, factory.constructor(*args), admin, error)
