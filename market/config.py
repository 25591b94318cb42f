"""Market process settings: one `Settings` object, read once at the entry point and passed down.

Libraries never read the environment themselves; tests build `Settings(...)` explicitly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that ship in examples and docs: accepted only in the dev profile so nobody runs production with them.
PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "dev-secret-change-me", "secret"})
DEV_SECRET = "dev-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLOBAI_", env_file=None, extra="ignore")

    profile: Literal["dev", "test", "prod"] = "dev"

    # Storage. SQLite is the embedded default; Postgres for scale-out (many API processes).
    database_url: str = "sqlite:///var/globai.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    db_pool_size: int = Field(default=20, ge=1)
    # Postgres only: don't wait for the WAL flush at commit. Leases and heartbeats are soft state (a lost claim
    # is requeued, a lost submit is resent), so this trades the last ~0.6 s of commits on a DB crash for claim
    # throughput on slow disks. Off by default.
    db_async_commit: bool = False

    # Chain. Addresses come from the deployment file or the environment; empty means "no chain configured".
    rpc_url: str = "http://127.0.0.1:8545"
    chain_id: int = 31337
    staking_vault_address: str = ""
    job_escrow_address: str = ""
    token_address: str = ""
    # Logs are read in pages so one call never asks an RPC node for an unbounded range.
    log_page_blocks: int = Field(default=2000, ge=1)
    # Blocks to wait before trusting an event; 0 on a devnet, more on a real chain (reorgs).
    confirmations: int = Field(default=0, ge=0)
    # Where event sync starts on an empty cursor: the contracts' deployment block (no need to scan from genesis).
    chain_start_block: int = Field(default=0, ge=0)
    # Fallback when the vault is not reachable; the vault's own `minStake()` wins when it is.
    min_stake_wei: int = Field(default=0, ge=0)

    # Sign-in with Ethereum.
    auth_secret: SecretStr = SecretStr(DEV_SECRET)
    auth_domain: str = "localhost:8000"
    auth_uri: str = "http://localhost:8000"
    token_ttl_s: int = Field(default=900, ge=10, le=86_400)
    nonce_ttl_s: int = Field(default=300, ge=10, le=3600)
    # Longest accepted gap between a message's issued-at and expiration (a signed message is a credential).
    max_message_lifetime_s: int = Field(default=600, ge=10)
    clock_skew_s: int = Field(default=30, ge=0)
    admin_addresses: list[str] = Field(default_factory=list)
    # Who may take the read-only auditor role (it reads every job's prompts and results); admins may too.
    auditor_addresses: list[str] = Field(default_factory=list)

    # Limits.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # Keep the rate-limit buckets in Redis (GLOBAI_REDIS_URL), shared by every API process; off: per process.
    rate_limit_shared: bool = False

    # Leasing.
    lease_ttl_s: int = Field(default=60, ge=1)
    max_task_attempts: int = Field(default=5, ge=1)
    # Eligible workers are cached per API process for this long (claim/submit hot path): a stake loss, slash or
    # ban takes effect within it. 0 disables the cache.
    worker_cache_ttl_s: float = Field(default=2.0, ge=0)
    worker_heartbeat_ttl_s: int = Field(default=120, ge=1)
    requeue_interval_s: float = Field(default=10.0, gt=0)

    # Verification and settlement (Celery verifiers, settlement and indexer; docs/settlement.md).
    # Key holding SETTLER_ROLE on JobEscrow and SLASHER_ROLE on StakingVault (the devnet deployer by default).
    operator_private_key: SecretStr | None = None
    # GLB wei slashed from a worker found cheating in a job; 0 means the vault's minStake.
    slash_amount_wei: int = Field(default=0, ge=0)
    # Calibration JSON from `globai verifier calibrate --out`; empty means the embedded defaults.
    tolerances_path: str = ""
    index_interval_s: float = Field(default=5.0, gt=0)
    settle_interval_s: float = Field(default=10.0, gt=0)
    verify_interval_s: float = Field(default=5.0, gt=0)
    # Crash recovery (market.services.recovery): a verification run with no progress for `recovery_stale_s` has
    # its pending steps enqueued again; a replay pending for `check_max_age_s` is void. Celery redelivers an
    # unacknowledged task after `task_visibility_timeout_s` (must exceed the longest task; hard time limit 0.8x).
    recovery_stale_s: float = Field(default=120.0, gt=0)
    check_max_age_s: float = Field(default=1800.0, gt=0)
    task_visibility_timeout_s: float = Field(default=900.0, ge=60)

    # Pipeline inference (docs/inference.md): served models, recorded stage inputs, worker call timeout.
    models_dir: str = "var/models"
    blob_dir: str = "var/blobs"
    blob_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    stage_timeout_s: float = Field(default=60.0, gt=0)
    # A new worker link answers a challenge forward (timed, checked) before it is routed (docs/inference.md).
    # Off only for tests that drive a worker socket by hand.
    join_challenge: bool = True

    # The paid OpenAI-compatible API (docs/openai.md). Per-token prices in GLB wei (multiples of 1 gwei, the
    # settlement unit of a credit): the defaults, and per model {"name": {"prompt": wei, "completion": wei}}.
    prompt_price_wei: int = Field(default=10**12, ge=0)
    completion_price_wei: int = Field(default=2 * 10**12, ge=0)
    model_prices: dict[str, dict[str, int]] = Field(default_factory=dict)
    api_key_rate_limit_per_min: int = Field(default=600, ge=1, le=1_000_000)  # default for new keys
    credit_deadline_days: float = Field(default=30.0, gt=0, le=365)
    # A credit closes this long before its escrow deadline, so it settles before anyone may refund it.
    credit_close_margin_s: float = Field(default=3600.0, ge=0)

    # Training jobs (docs/training.md): uploaded datasets, received pseudo-gradients and checkpoints live here.
    training_dir: str = "var/training"
    training_max_dataset_bytes: int = Field(default=64 << 20, ge=1024)
    training_max_update_bytes: int = Field(default=256 << 20, ge=1024)
    # How often beat looks at running training jobs (round deadlines, replays that never came).
    training_tick_s: float = Field(default=5.0, gt=0)
    # Retention: when a job completes, keep version 0 and the last N versions of its lineage (0: keep all).
    training_keep_versions: int = Field(default=0, ge=0)

    # Observability (docs/observability.md). A block explorer's transaction URL with `{tx}` for the dashboard's
    # links (e.g. https://etherscan.io/tx/{tx}); empty: links open the indexed events of the transaction.
    explorer_tx_url: str = ""
    # When set, GET /metrics needs `Authorization: Bearer <token>`; empty: /metrics is open (firewall it).
    metrics_token: SecretStr | None = None

    # Many market processes (docs/scaleout.md): worker links, relayed calls and run progress shared through
    # GLOBAI_REDIS_URL under this key prefix, so every process serves every request. `market serve --workers N`
    # (N > 1) turns it on.
    shared_coordinator: bool = False
    coordinator_prefix: str = "globai:coord"

    # Serving.
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    # Client side (the `globai job` CLI).
    market_url: str = "http://127.0.0.1:8000"
    private_key: SecretStr | None = None

    @field_validator("admin_addresses", "auditor_addresses")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [a.lower() for a in value]

    @model_validator(mode="after")
    def _prices_in_gwei(self) -> Settings:
        prices = [self.prompt_price_wei, self.completion_price_wei]
        for name, p in self.model_prices.items():
            if set(p) != {"prompt", "completion"}:
                raise ValueError(f"model_prices[{name}] needs exactly 'prompt' and 'completion'")
            prices += [int(p["prompt"]), int(p["completion"])]
        if any(p < 0 or p % 10**9 for p in prices):
            raise ValueError("token prices must be non-negative multiples of 1 gwei (10**9 wei)")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        secret = self.auth_secret.get_secret_value()
        if self.profile != "dev" and (secret.lower() in PLACEHOLDER_SECRETS or len(secret) < 32):
            raise ValueError(
                "GLOBAI_AUTH_SECRET is a placeholder or shorter than 32 characters; "
                "set a random secret (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
