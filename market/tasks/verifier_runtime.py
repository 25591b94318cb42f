"""Per-process resources of the verification, settlement and indexer tasks (next to `celery_app.Runtime`).

`configure_verifier(app, ...)` injects them (tests, or an entry point that builds a coordinator-backed
`WorkSource`); otherwise they are built lazily from the app's Settings on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from globai.chain.web3_market import Web3Operator
from globai.errors import ConfigError
from market.services.operator import operator_from_settings
from market.services.verification import VerifierConfig, WorkSource
from market.tasks.celery_app import runtime


@dataclass
class VerifierRuntime:
    source: WorkSource | None = None
    config: VerifierConfig | None = None
    operator: Web3Operator | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)


def configure_verifier(
    app: Celery,
    *,
    source: WorkSource | None = None,
    config: VerifierConfig | None = None,
    operator: Web3Operator | None = None,
) -> VerifierRuntime:
    vr = VerifierRuntime(source=source, config=config, operator=operator)
    app.globai_verifier = vr  # type: ignore[attr-defined]
    return vr


def _vr(app: Celery) -> VerifierRuntime:
    vr: VerifierRuntime | None = getattr(app, "globai_verifier", None)
    if vr is None:
        vr = configure_verifier(app)
    return vr


def verifier_config(app: Celery) -> VerifierConfig:
    vr = _vr(app)
    with vr._lock:
        if vr.config is None:
            from market.verifier.compare import load_tolerances

            s = runtime(app).settings
            vr.config = VerifierConfig(
                tolerances=load_tolerances(s.tolerances_path or None), slash_amount=s.slash_amount_wei
            )
        return vr.config


def work_source(app: Celery) -> WorkSource:
    vr = _vr(app)
    with vr._lock:
        if vr.source is None:
            vr.source = _default_source(app)
        return vr.source


def chain_operator(app: Celery) -> Web3Operator:
    vr = _vr(app)
    with vr._lock:
        if vr.operator is None:
            vr.operator = operator_from_settings(runtime(app).settings)
        if vr.operator is None:
            raise ConfigError("no chain operator: set GLOBAI_OPERATOR_PRIVATE_KEY and the contract addresses")
        return vr.operator


def _default_source(app: Celery) -> Any:
    try:
        from market.services.inference_source import source_from_settings
    except ModuleNotFoundError:
        raise ConfigError("no WorkSource: the coordinator's verification source is not installed") from None
    return source_from_settings(runtime(app).settings)
