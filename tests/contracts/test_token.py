"""GLBToken: fixed supply to the treasury, EIP-2612 permits signed with eth-account, burning."""

from __future__ import annotations

from globai.chain.artifacts import bytecode
from globai.chain.deploy import GLB, DeployConfig
from globai.chain.permit import sign_glb_permit, sign_permit

from .conftest import DAY, Env, assert_reverts


def test_metadata_and_supply(env: Env) -> None:
    token = env.c.token
    assert (token.functions.name().call(), token.functions.symbol().call()) == ("GlobAI Token", "GLB")
    assert token.functions.decimals().call() == 18
    assert token.functions.totalSupply().call() == DeployConfig().initial_supply


def test_permit_sets_allowance_and_consumes_the_nonce(env: Env) -> None:
    token, owner, spender = env.c.token, env.requester, env.outsider.address
    deadline = env.now() + DAY
    permit = sign_glb_permit(env.client, owner, token=token.address, spender=spender, value=7 * GLB, deadline=deadline)
    args = (owner.address, spender, 7 * GLB, deadline, permit.v, permit.r, permit.s)
    env.tx(token.functions.permit(*args), env.outsider)  # anyone may submit it
    assert token.functions.allowance(owner.address, spender).call() == 7 * GLB
    assert token.functions.nonces(owner.address).call() == 1
    assert_reverts(env.client, token.functions.permit(*args), env.outsider, "ERC2612InvalidSigner")


def test_expired_or_foreign_permits_are_rejected(env: Env) -> None:
    token, owner, spender = env.c.token, env.requester, env.outsider.address
    past = env.now() - 1
    permit = sign_permit(
        owner, token=token.address, spender=spender, value=GLB, nonce=0, deadline=past, chain_id=env.client.chain_id
    )
    fn = token.functions.permit(owner.address, spender, GLB, past, permit.v, permit.r, permit.s)
    assert_reverts(env.client, fn, env.outsider, "ERC2612ExpiredSignature", past)
    later = env.now() + DAY
    wrong_chain = sign_permit(
        owner, token=token.address, spender=spender, value=GLB, nonce=0, deadline=later, chain_id=1
    )
    fn = token.functions.permit(owner.address, spender, GLB, later, wrong_chain.v, wrong_chain.r, wrong_chain.s)
    assert_reverts(env.client, fn, env.outsider, "ERC2612InvalidSigner")


def test_burn_reduces_supply(env: Env) -> None:
    token = env.c.token
    supply = token.functions.totalSupply().call()
    env.tx(token.functions.burn(3 * GLB), env.requester)
    assert token.functions.totalSupply().call() == supply - 3 * GLB


def test_zero_treasury_is_rejected(env: Env) -> None:
    factory = env.client.w3.eth.contract(abi=env.c.token.abi, bytecode=bytecode("GLBToken"))
    assert_reverts(env.client, factory.constructor("0x" + "00" * 20, GLB), env.admin, "GLBTokenZeroTreasury")
