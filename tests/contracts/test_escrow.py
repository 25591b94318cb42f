"""JobEscrow on a real Anvil: every function's happy path and every custom error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_utils import keccak

from globai.chain.deploy import GLB, role_id
from globai.chain.ids import job_id_bytes, job_key_bytes
from globai.chain.permit import sign_glb_permit

from .conftest import DAY, Env, assert_reverts, job, job_id_of, names, report_root

FUNDED, SETTLED, REFUNDED = 1, 2, 3


@pytest.fixture(autouse=True)
def _staked_payees(env: Env) -> Iterator[None]:
    env.stake_payees()
    yield


def test_fund_pulls_tokens_records_job_and_emits(env: Env) -> None:
    escrow, before = env.c.escrow, env.glb(env.requester)
    deadline = env.now() + DAY
    job_id = job_id_of(env.requester.address, job("a"))
    receipt = env.tx(escrow.functions.fundJob(job("a"), 100 * GLB, keccak(b"spec"), deadline), env.requester)

    assert env.glb(env.requester) == before - 100 * GLB
    assert env.glb(escrow.address) == 100 * GLB
    assert escrow.functions.getJob(job_id).call() == [env.requester.address, 100 * GLB, deadline, FUNDED, b"\0" * 32]
    funded = [e for e in env.events(receipt) if e.address == escrow.address]
    assert names(funded) == ["JobFunded"]
    assert funded[0].args == {
        "jobId": job_id,
        "requester": env.requester.address,
        "amount": 100 * GLB,
        "specHash": keccak(b"spec"),
        "deadline": deadline,
    }


def test_fund_rejects_bad_input(env: Env) -> None:
    fund, now = env.c.escrow.functions.fundJob, env.now()
    assert_reverts(env.client, fund(job("z"), 0, b"\0" * 32, now + DAY), env.requester, "JobEscrowZeroAmount")
    assert_reverts(
        env.client, fund(job("z"), 2**96, b"\0" * 32, now + DAY), env.requester, "JobEscrowAmountTooLarge", 2**96
    )
    assert_reverts(env.client, fund(job("z"), GLB, b"\0" * 32, now - 1), env.requester, "JobEscrowInvalidDeadline")
    job_id = env.fund("dup")
    assert_reverts(
        env.client, fund(job("dup"), GLB, b"\0" * 32, now + DAY), env.requester, "JobEscrowJobExists", job_id
    )


def test_job_ids_are_bound_to_the_requester_so_nobody_can_squat_one(env: Env) -> None:
    """The 1-wei squat of issue 14: an outsider funding the requester's job key first lands on its own id."""
    escrow, key = env.c.escrow, job("squat")
    env.tx(escrow.functions.fundJob(key, 1, b"\0" * 32, env.now() + DAY), env.outsider)
    assert escrow.functions.getJob(job_id_of(env.outsider.address, key)).call()[3] == FUNDED
    job_id = env.fund("squat", 10 * GLB)  # the real requester's funding still succeeds
    assert job_id == job_id_of(env.requester.address, key) != job_id_of(env.outsider.address, key)
    assert escrow.functions.getJob(job_id).call()[:2] == [env.requester.address, 10 * GLB]
    # The view, the contract and the market's derivation (`globai.chain.ids`) agree.
    uuid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert escrow.functions.jobIdOf(env.requester.address, job_key_bytes(uuid)).call() == job_id_bytes(
        uuid, env.requester.address
    )


def test_fund_without_allowance_reverts_with_token_error(env: Env) -> None:
    env.tx(env.c.token.functions.approve(env.c.escrow.address, 0), env.requester)
    fn = env.c.escrow.functions.fundJob(job("x"), GLB, b"\0" * 32, env.now() + DAY)
    assert_reverts(env.client, fn, env.requester, "ERC20InsufficientAllowance", env.c.escrow.address, 0, GLB)


def test_closed_job_id_cannot_be_funded_again(env: Env) -> None:
    job_id = env.fund("once")
    env.settle(job_id, [env.worker.address], [10 * GLB])
    fn = env.c.escrow.functions.fundJob(job("once"), GLB, b"\0" * 32, env.now() + DAY)
    assert_reverts(env.client, fn, env.requester, "JobEscrowJobExists", job_id)


def test_fund_with_permit_needs_no_prior_approval(env: Env) -> None:
    token, escrow = env.c.token, env.c.escrow
    env.tx(token.functions.approve(escrow.address, 0), env.requester)
    deadline = env.now() + DAY
    permit = sign_glb_permit(
        env.client, env.requester, token=token.address, spender=escrow.address, value=50 * GLB, deadline=deadline
    )
    fn = escrow.functions.fundJobWithPermit(
        job("p"), 50 * GLB, keccak(b"s"), deadline, permit.deadline, permit.v, permit.r, permit.s
    )
    receipt = env.tx(fn, env.requester)
    assert "Approval" in names(env.events(receipt))
    assert escrow.functions.getJob(job_id_of(env.requester.address, job("p"))).call()[3] == FUNDED
    assert token.functions.nonces(env.requester.address).call() == 1
    assert token.functions.allowance(env.requester.address, escrow.address).call() == 0


def test_fund_with_a_permit_signed_by_someone_else_fails_on_allowance(env: Env) -> None:
    token, escrow = env.c.token, env.c.escrow
    env.tx(token.functions.approve(escrow.address, 0), env.requester)
    deadline = env.now() + DAY
    permit = sign_glb_permit(  # signed by requester2, sent by requester: the permit reverts and is ignored
        env.client, env.requester2, token=token.address, spender=escrow.address, value=GLB, deadline=deadline
    )
    fn = escrow.functions.fundJobWithPermit(
        job("q"), GLB, keccak(b"s"), deadline, deadline, permit.v, permit.r, permit.s
    )
    assert_reverts(env.client, fn, env.requester, "ERC20InsufficientAllowance")


def test_settle_credits_payees_fee_and_requester_remainder(env: Env) -> None:
    escrow = env.c.escrow
    job_id = env.fund("s", 100 * GLB)
    receipt = env.settle(job_id, [env.worker.address, env.worker2.address], [60 * GLB, 30 * GLB])

    fee = 90 * GLB * 200 // 10_000
    assert escrow.functions.balanceOf(env.worker.address).call() == 60 * GLB
    assert escrow.functions.balanceOf(env.worker2.address).call() == 30 * GLB
    assert escrow.functions.balanceOf(env.admin.address).call() == fee  # the devnet fee recipient
    assert escrow.functions.balanceOf(env.requester.address).call() == 10 * GLB - fee
    assert env.glb(escrow.address) == 100 * GLB  # credits only: no token moved
    # Closed: only the status and the report root stay in storage.
    assert escrow.functions.getJob(job_id).call() == [
        "0x0000000000000000000000000000000000000000",
        0,
        0,
        SETTLED,
        report_root(job_id),
    ]
    events = env.events(receipt)
    assert names(events) == ["PaymentCredited", "PaymentCredited", "JobSettled"]
    assert events[0].args == {"jobId": job_id, "payee": env.worker.address, "amount": 60 * GLB}
    assert events[2].args == {
        "jobId": job_id,
        "reportRoot": report_root(job_id),
        "paid": 90 * GLB,
        "fee": fee,
        "refunded": 10 * GLB - fee,
    }


def test_settle_pays_only_staked_payees_the_rest_goes_back_to_the_requester(env: Env) -> None:
    """Settlement is bounded by the vault: an address without stake (active or unbonding) is not credited."""
    escrow = env.c.escrow
    job_id = env.fund("unstaked", 100 * GLB)
    receipt = env.settle(job_id, [env.worker.address, env.outsider.address], [50 * GLB, 40 * GLB])
    fee = 50 * GLB * 200 // 10_000  # no fee on the forfeited payment
    assert escrow.functions.balanceOf(env.outsider.address).call() == 0
    assert escrow.functions.balanceOf(env.worker.address).call() == 50 * GLB
    assert escrow.functions.balanceOf(env.requester.address).call() == 50 * GLB - fee
    events = env.events(receipt)
    assert names(events) == ["PaymentCredited", "PaymentForfeited", "JobSettled"]
    assert events[1].args == {"jobId": job_id, "payee": env.outsider.address, "amount": 40 * GLB}
    assert (events[2].args["paid"], events[2].args["fee"]) == (50 * GLB, fee)
    # Unbonding stake still counts (the worker is still slashable); none left (withdrawn) does not.
    vault = env.c.vault
    assert (
        escrow.functions.isPayee(env.worker.address).call()
        and not escrow.functions.isPayee(env.outsider.address).call()
    )
    env.tx(vault.functions.requestUnstake(1), env.worker)
    assert escrow.functions.isPayee(env.worker.address).call() and vault.functions.hasStake(env.worker.address).call()
    env.warp(7 * DAY)
    env.tx(vault.functions.withdraw(), env.worker)
    assert not escrow.functions.isPayee(env.worker.address).call()
    assert escrow.functions.balanceOf(env.worker.address).call() == 50 * GLB  # the mark is not part of the balance
    left = env.fund("left", 10 * GLB)
    assert names(env.events(env.settle(left, [env.worker.address], [GLB]))) == ["PaymentForfeited", "JobSettled"]
    env.tx(escrow.functions.withdraw(), env.worker)  # earlier credits can still be taken
    assert escrow.functions.balanceOf(env.worker.address).call() == 0
    # Only the vault (STAKES_ROLE) marks payees.
    mark = escrow.functions.setPayee(env.outsider.address, True)
    assert_reverts(env.client, mark, env.outsider, "AccessControlUnauthorizedAccount")
    # Forfeited amounts still count against the job's amount.
    over = env.fund("over", 10 * GLB)
    fn = escrow.functions.settle(over, [env.outsider.address] * 2, [6 * GLB, 6 * GLB], report_root(over))
    assert_reverts(env.client, fn, env.admin, "JobEscrowOverpaid", over, 10 * GLB, 12 * GLB)


def test_settle_skips_zero_amounts_and_allows_paying_everything(env: Env) -> None:
    job_id = env.fund("full", 102 * GLB)  # 100 paid + 2 % fee = the whole amount: nothing back
    receipt = env.settle(job_id, [env.worker.address, env.worker2.address], [100 * GLB, 0])
    assert names(env.events(receipt)) == ["PaymentCredited", "JobSettled"]
    assert env.c.escrow.functions.balanceOf(env.requester.address).call() == 0


def test_settling_twice_reverts(env: Env) -> None:
    job_id = env.fund("twice")
    env.settle(job_id, [env.worker.address], [GLB])
    fn = env.c.escrow.functions.settle(job_id, [env.worker.address], [GLB], report_root(job_id))
    assert_reverts(env.client, fn, env.admin, "JobEscrowNotFunded", job_id, SETTLED)


def test_settle_rejects_bad_input(env: Env) -> None:
    settle, worker = env.c.escrow.functions.settle, env.worker.address
    job_id = env.fund("bad", 10 * GLB)
    root = report_root(job_id)
    assert_reverts(
        env.client, settle(job("nope"), [worker], [1], root), env.admin, "JobEscrowNotFunded", job("nope"), 0
    )
    assert_reverts(env.client, settle(job_id, [worker], [1, 2], root), env.admin, "JobEscrowLengthMismatch", 1, 2)
    zero = "0x0000000000000000000000000000000000000000"
    assert_reverts(env.client, settle(job_id, [zero], [1], root), env.admin, "JobEscrowZeroPayee", job_id)
    # 10 GLB paid plus its 2 % fee exceeds the 10 GLB held.
    overpaid = settle(job_id, [worker], [10 * GLB], root)
    assert_reverts(env.client, overpaid, env.admin, "JobEscrowOverpaid", job_id, 10 * GLB, 10 * GLB + GLB // 5)
    # One value above the whole amount is refused as it is read (the sums after it are unchecked).
    huge = settle(job_id, [worker, worker], [2**256 - 1, 2], root)
    assert_reverts(env.client, huge, env.admin, "JobEscrowOverpaid", job_id, 10 * GLB, 2**256 - 1)
    # Values that fit one by one but not together.
    split = settle(job_id, [worker, worker], [6 * GLB, 6 * GLB], root)
    assert_reverts(env.client, split, env.admin, "JobEscrowOverpaid", job_id, 10 * GLB, 12 * GLB + 12 * GLB // 50)
    for low in (b"\0" * 32, (2**65 - 1).to_bytes(32, "big")):
        assert_reverts(env.client, settle(job_id, [worker], [1], low), env.admin, "JobEscrowInvalidReportRoot", low)
    assert env.c.escrow.functions.getJob(job_id).call()[3] == FUNDED


def test_only_settlers_settle(env: Env) -> None:
    job_id = env.fund("role")
    fn = env.c.escrow.functions.settle(job_id, [env.worker.address], [GLB], report_root(job_id))
    settler = role_id("SETTLER_ROLE")
    assert_reverts(env.client, fn, env.outsider, "AccessControlUnauthorizedAccount", env.outsider.address, settler)
    batch = env.c.escrow.functions.settleBatch([(job_id, [env.worker.address], [GLB], report_root(job_id))])
    assert_reverts(env.client, batch, env.outsider, "AccessControlUnauthorizedAccount")
    env.tx(env.c.escrow.functions.grantRole(settler, env.outsider.address), env.admin)
    env.tx(fn, env.outsider)
    assert env.c.escrow.functions.getJob(job_id).call()[3] == SETTLED


def test_withdraw_pays_the_whole_credit_once(env: Env) -> None:
    escrow = env.c.escrow
    env.settle(env.fund("w1"), [env.worker.address], [40 * GLB])
    env.settle(env.fund("w2"), [env.worker.address], [2 * GLB])
    before = env.glb(env.worker)
    receipt = env.tx(escrow.functions.withdraw(), env.worker)
    assert env.glb(env.worker) == before + 42 * GLB
    assert escrow.functions.balanceOf(env.worker.address).call() == 0
    (event,) = [e for e in env.events(receipt) if e.address == escrow.address]
    assert (event.name, event.args) == ("Withdrawn", {"account": env.worker.address, "amount": 42 * GLB})
    assert_reverts(
        env.client, escrow.functions.withdraw(), env.worker, "JobEscrowNothingToWithdraw", env.worker.address
    )


def test_refund_after_deadline_by_anyone(env: Env) -> None:
    escrow = env.c.escrow
    deadline = env.now() + DAY
    job_id = env.fund("r", 30 * GLB, deadline=deadline)
    before = env.glb(env.requester)
    fn = escrow.functions.refund(job_id)
    assert_reverts(env.client, fn, env.outsider, "JobEscrowDeadlineNotReached", job_id, deadline)
    env.warp(DAY + 1)
    receipt = env.tx(fn, env.outsider)
    assert env.glb(env.requester) == before + 30 * GLB
    assert escrow.functions.getJob(job_id).call() == [
        "0x0000000000000000000000000000000000000000",
        0,
        deadline,
        REFUNDED,
        b"\0" * 32,
    ]
    (event,) = [e for e in env.events(receipt) if e.address == escrow.address]
    assert event.args == {"jobId": job_id, "requester": env.requester.address, "amount": 30 * GLB}
    assert_reverts(env.client, fn, env.outsider, "JobEscrowNotFunded", job_id, REFUNDED)
    settle = escrow.functions.settle(job_id, [env.worker.address], [GLB], report_root(job_id))
    assert_reverts(env.client, settle, env.admin, "JobEscrowNotFunded", job_id, REFUNDED)


def test_refund_of_settled_or_unknown_job_reverts(env: Env) -> None:
    job_id = env.fund("rs")
    env.settle(job_id, [env.worker.address], [GLB])
    env.warp(2 * DAY)
    refund = env.c.escrow.functions.refund
    assert_reverts(env.client, refund(job_id), env.requester, "JobEscrowNotFunded", job_id, SETTLED)
    assert_reverts(env.client, refund(job("ghost")), env.requester, "JobEscrowNotFunded", job("ghost"), 0)


def test_settle_after_deadline_is_allowed_while_unrefunded(env: Env) -> None:
    job_id = env.fund("late")
    env.warp(2 * DAY)
    env.settle(job_id, [env.worker.address], [GLB])
    assert env.c.escrow.functions.getJob(job_id).call()[3] == SETTLED


def test_settle_batch_settles_all_and_credits_fee_once(env: Env) -> None:
    escrow = env.c.escrow
    jobs = [env.fund("b1"), env.fund("b2"), env.fund("b3", requester=env.requester2), env.fund("b4")]
    items = [(j, [env.worker.address], [10 * GLB], report_root(j)) for j in jobs]
    receipt = env.tx(escrow.functions.settleBatch(items), env.admin)

    fee = 10 * GLB * 200 // 10_000
    assert escrow.functions.balanceOf(env.worker.address).call() == 40 * GLB
    assert escrow.functions.balanceOf(env.admin.address).call() == 4 * fee
    assert escrow.functions.balanceOf(env.requester.address).call() == 3 * (90 * GLB - fee)
    assert escrow.functions.balanceOf(env.requester2.address).call() == 90 * GLB - fee
    assert all(escrow.functions.getJob(j).call()[3] == SETTLED for j in jobs)
    assert names(env.events(receipt)) == ["PaymentCredited", "JobSettled"] * 4


def test_settle_batch_is_all_or_nothing(env: Env) -> None:
    escrow = env.c.escrow
    ok, done = env.fund("ok"), env.fund("done")
    env.settle(done, [env.worker.address], [GLB])
    items = [(ok, [env.worker.address], [GLB], report_root(ok)), (done, [env.worker.address], [GLB], report_root(done))]
    assert_reverts(env.client, escrow.functions.settleBatch(items), env.admin, "JobEscrowNotFunded", done, SETTLED)
    assert escrow.functions.getJob(ok).call()[3] == FUNDED


def test_pause_stops_funding_and_settlement_but_not_exits(env: Env) -> None:
    escrow = env.c.escrow
    job_id = env.fund("p1")
    env.settle(env.fund("p2"), [env.worker.address], [GLB])
    assert_reverts(env.client, escrow.functions.pause(), env.outsider, "AccessControlUnauthorizedAccount")
    receipt = env.tx(escrow.functions.pause(), env.admin)
    assert names(env.events(receipt)) == ["Paused"]

    fund = escrow.functions.fundJob(job("p3"), GLB, b"\0" * 32, env.now() + DAY)
    assert_reverts(env.client, fund, env.requester, "EnforcedPause")
    settle = escrow.functions.settle(job_id, [env.worker.address], [GLB], report_root(job_id))
    assert_reverts(env.client, settle, env.admin, "EnforcedPause")
    batch = escrow.functions.settleBatch([(job_id, [env.worker.address], [GLB], report_root(job_id))])
    assert_reverts(env.client, batch, env.admin, "EnforcedPause")
    env.tx(escrow.functions.withdraw(), env.worker)  # credited funds can always leave
    env.warp(DAY + 1)
    env.tx(escrow.functions.refund(job_id), env.requester)

    assert_reverts(env.client, escrow.functions.unpause(), env.outsider, "AccessControlUnauthorizedAccount")
    env.tx(escrow.functions.unpause(), env.admin)
    env.fund("p4")


def test_views_and_constructor_checks(env: Env) -> None:
    escrow = env.c.escrow
    assert escrow.functions.feeBps().call() == 200
    assert escrow.functions.feeRecipient().call() == env.admin.address
    assert escrow.functions.token().call() == env.c.token.address
    token, zero = env.c.token.address, "0x" + "00" * 20
    client, admin = env.client, env.admin
    for args, error in (
        ((token, admin.address, admin.address, 10_001), "JobEscrowInvalidFee"),
        ((zero, admin.address, admin.address, 0), "JobEscrowZeroAddress"),
        ((token, zero, admin.address, 0), "JobEscrowZeroAddress"),
        ((token, admin.address, zero, 0), "JobEscrowZeroAddress"),
    ):
        factory = client.w3.eth.contract(abi=escrow.abi, bytecode=_bytecode("JobEscrow"))
        assert_reverts(client, factory.constructor(*args), admin, error)


def test_revert_data_starts_with_the_custom_error_selector(env: Env) -> None:
    """The raw revert data of a mined failing transaction is `selector ‖ abi(args)` of the declared error."""
    from eth_abi import decode

    job_id = job("raw")
    fn = env.c.escrow.functions.refund(job_id)
    built = fn.build_transaction({"from": env.requester.address, "gas": 100_000, "nonce": 0})
    try:
        env.client.w3.eth.call({"from": env.requester.address, "to": built["to"], "data": built["data"]})
    except Exception as exc:  # web3 raises with the revert data attached
        data = bytes.fromhex(str(exc.data)[2:])  # type: ignore[attr-defined]
    else:
        raise AssertionError("refund of an unknown job did not revert")
    assert data[:4] == keccak(text="JobEscrowNotFunded(bytes32,uint8)")[:4]
    assert decode(["bytes32", "uint8"], data[4:]) == (job_id, 0)


def _bytecode(name: str) -> str:
    from globai.chain.artifacts import bytecode

    return bytecode(name)


def test_settle_refuses_a_dirty_address_word(env: Env) -> None:
    """Payees are read from calldata without the ABI decoder: an address word with high bits set is refused."""
    escrow = env.c.escrow
    job_id = env.fund("dirty")
    data = bytearray(
        bytes.fromhex(escrow.encode_abi("settle", args=[job_id, [env.worker.address], [GLB], report_root(job_id)])[2:])
    )
    word = data.find(bytes.fromhex(env.worker.address[2:]))
    data[word - 1] = 0x01  # the byte just above the 20 address bytes
    try:
        env.client.w3.eth.call({"from": env.admin.address, "to": escrow.address, "data": "0x" + data.hex()})
    except Exception as exc:
        reverted = bytes.fromhex(str(exc.data)[2:])  # type: ignore[attr-defined]
    else:
        raise AssertionError("a dirty payee word was accepted")
    assert reverted[:4] == keccak(text="JobEscrowZeroPayee(bytes32)")[:4]
