"""The small pieces every command shares: GLB amounts, the dev stack's environment, the market's error lines,
the lazy `--help`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from globai.amounts import fmt_glb, parse_glb
from globai.client import error_detail
from globai.dev.stack import StackState, apply_env
from globai.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_glb_amounts() -> None:
    assert parse_glb("0.001", what="--price") == 10**15
    assert parse_glb("12.5", what="--amount") == 12 * 10**18 + 5 * 10**17
    assert parse_glb("1000", what="--price", wei=True) == 1000
    for bad, says in (
        ("-5", "more than zero"),
        ("0", "more than zero"),
        ("abc", "not a number"),
        ("1e-19", "finer than 1 wei"),
        ("1.5", "finer than 1 wei"),
        ("nan", "not a number"),
        ("1e80", "too large"),
    ):
        with pytest.raises(ConfigError, match=says):
            parse_glb(bad, what="--price", wei=bad == "1.5")
    assert fmt_glb(10**15) == "0.001 GLB" and fmt_glb(2 * 10**18) == "2 GLB"


def _state(tmp: Path) -> StackState:
    return StackState(
        var=str(tmp),
        rpc_url="http://127.0.0.1:1111",
        chain_id=31337,
        genesis_hash="0x" + "ab" * 32,
        token="0x" + "11" * 20,
        vault="0x" + "22" * 20,
        escrow="0x" + "33" * 20,
        first_block=3,
        redis_url="redis://127.0.0.1:2222/0",
        market_url="http://127.0.0.1:3333",
        database_url="sqlite:///x.db",
        models_dir=str(tmp / "models"),
        auth_secret="s" * 64,
    )


def test_dev_state_fills_endpoints_unless_another_chain_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    _state(tmp_path).save(path)
    monkeypatch.setenv("GLOBAI_DEV_STATE", str(path))
    env: dict[str, str] = {}
    assert apply_env(env) is not None
    assert env["GLOBAI_RPC_URL"] == "http://127.0.0.1:1111" and env["GLOBAI_MARKET_URL"] == "http://127.0.0.1:3333"
    assert env["GLOBAI_JOB_ESCROW_ADDRESS"] == "0x" + "33" * 20 and "GLOBAI_AUTH_SECRET" not in env
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # it holds the local market's secret
    # Another chain named explicitly: nothing of the stack is taken (no market of one chain with another's RPC).
    other = {"GLOBAI_RPC_URL": "http://127.0.0.1:9999"}
    assert apply_env(other) is None and other == {"GLOBAI_RPC_URL": "http://127.0.0.1:9999"}
    # A value the user set wins over the file.
    mine = {"GLOBAI_MODELS_DIR": "elsewhere"}
    apply_env(mine)
    assert mine["GLOBAI_MODELS_DIR"] == "elsewhere"
    path.write_text("{not json")
    assert apply_env({}) is None  # a broken file is ignored here; `globai dev status` names it


def test_market_error_detail_is_one_line() -> None:
    detail = [
        {"loc": ["body", "spec", "prompts"], "msg": "Field required", "type": "missing"},
        {"loc": ["query", "limit"], "msg": "Input should be greater than or equal to 1\nsecond line"},
    ]
    line = error_detail(httpx.Response(422, content=json.dumps({"detail": detail}).encode()))
    assert line == "spec.prompts: Field required; query.limit: Input should be greater than or equal to 1 second line"
    assert error_detail(httpx.Response(500, content=b"x" * 5000)).endswith("…")


def test_help_lists_every_sub_command_without_importing_them() -> None:
    code = (
        "import sys; from market.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'web3', 'fastapi', 'eth_account') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    from market.cli import SUBCOMMANDS

    for entry in SUBCOMMANDS:
        assert entry[0] in out.stdout
