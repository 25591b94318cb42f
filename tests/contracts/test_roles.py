"""Role administration of JobEscrow and StakingVault: DEFAULT_ADMIN_ROLE administers every role (NatSpec of both)."""

from __future__ import annotations

from globai.chain.deploy import GLB, role_id

from .conftest import Env, assert_reverts, report_root

ADMIN_ROLE = b"\0" * 32


def test_default_admin_administers_every_role(env: Env) -> None:
    for contract, roles in (
        (env.c.escrow, ("SETTLER_ROLE", "PAUSER_ROLE", "STAKES_ROLE")),
        (env.c.vault, ("SLASHER_ROLE", "PAUSER_ROLE")),
    ):
        for role in (*roles, None):
            rid = ADMIN_ROLE if role is None else role_id(role)
            assert contract.functions.getRoleAdmin(rid).call() == ADMIN_ROLE
        assert contract.functions.hasRole(ADMIN_ROLE, env.admin.address).call()
        assert not contract.functions.hasRole(ADMIN_ROLE, env.outsider.address).call()
    # The vault, and only the vault, tells the escrow who has stake.
    stakes = role_id("STAKES_ROLE")
    assert env.c.escrow.functions.hasRole(stakes, env.c.vault.address).call()
    assert not env.c.escrow.functions.hasRole(stakes, env.admin.address).call()


def test_admin_handover_revocation_and_renouncing(env: Env) -> None:
    escrow, settler = env.c.escrow, role_id("SETTLER_ROLE")
    env.stake_payees()
    # Only an admin grants; a role holder cannot pass its role on.
    assert_reverts(
        env.client,
        escrow.functions.grantRole(settler, env.finder.address),
        env.outsider,
        "AccessControlUnauthorizedAccount",
    )
    # Hand the admin over: grant, then the old admin renounces and can no longer grant anything.
    env.tx(escrow.functions.grantRole(ADMIN_ROLE, env.outsider.address), env.admin)
    env.tx(escrow.functions.renounceRole(ADMIN_ROLE, env.admin.address), env.admin)
    assert_reverts(
        env.client,
        escrow.functions.grantRole(settler, env.finder.address),
        env.admin,
        "AccessControlUnauthorizedAccount",
        env.admin.address,
        ADMIN_ROLE,
    )
    # The new admin grants the settler role; the settler settles; once revoked it cannot.
    env.tx(escrow.functions.grantRole(settler, env.finder.address), env.outsider)
    job_id = env.fund("r1", 10 * GLB)
    env.tx(escrow.functions.settle(job_id, [env.worker.address], [GLB], report_root(job_id)), env.finder)
    env.tx(escrow.functions.revokeRole(settler, env.finder.address), env.outsider)
    job2 = env.fund("r2", 10 * GLB)
    fn = escrow.functions.settle(job2, [env.worker.address], [GLB], report_root(job2))
    assert_reverts(env.client, fn, env.finder, "AccessControlUnauthorizedAccount", env.finder.address, settler)
    # The old admin kept SETTLER_ROLE (granted on the devnet); renouncing it is its own choice, for itself only.
    assert_reverts(
        env.client,
        escrow.functions.renounceRole(settler, env.admin.address),
        env.outsider,
        "AccessControlBadConfirmation",
    )
    env.tx(escrow.functions.renounceRole(settler, env.admin.address), env.admin)
    assert_reverts(env.client, fn, env.admin, "AccessControlUnauthorizedAccount", env.admin.address, settler)


def test_vault_slasher_role_revoked_cannot_slash(env: Env) -> None:
    vault, slasher = env.c.vault, role_id("SLASHER_ROLE")
    env.tx(vault.functions.revokeRole(slasher, env.admin.address), env.admin)
    assert not vault.functions.hasRole(slasher, env.admin.address).call()
    fn = vault.functions.slash(
        env.worker.address, GLB, b"\1" * 32, b"\2" * 32, b"", env.admin.address, env.admin.address
    )
    assert_reverts(env.client, fn, env.admin, "AccessControlUnauthorizedAccount", env.admin.address, slasher)
