"""Nothing GlobAI runs touches a Redis it was not told about.

A sentinel redis-server listens on 127.0.0.1:6379 — the address every default used to point at — inside a network
namespace of the test's own (so the machine's real :6379 is never touched either), with a canary key in each of its
16 databases. The suite's Redis-using tests and `globai demo run` then run in that namespace without
GLOBAI_REDIS_URL / GLOBAI_TEST_REDIS_URL. Afterwards every canary is intact and no database holds a key more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCRIPT = r"""
set -u
ip link set lo up
redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$VAR/sentinel.pid"
for i in $(seq 1 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
for db in $(seq 0 15); do redis-cli -p 6379 -n $db set globai-canary "canary-$db" >/dev/null; done
"$PY" -m pytest -q -p no:cacheprovider --import-mode=importlib tests/market/test_celery.py > "$VAR/tests.log" 2>&1
echo "tests=$?"
"$PY" -c "from market.cli import main; main()" demo run --model tiny --tokens 4 --var "$VAR/demo" > "$VAR/demo.log" 2>&1
echo "demo=$?"
"$PY" -c "from market.cli import main; main()" devnet down > "$VAR/devnet-down.log" 2>&1  # the demo leaves it up
for db in $(seq 0 15); do
  echo "db$db $(redis-cli -p 6379 -n $db get globai-canary) $(redis-cli -p 6379 -n $db dbsize)"
done
redis-cli -p 6379 shutdown nosave >/dev/null 2>&1
"""


@pytest.mark.skipif(
    shutil.which("unshare") is None
    or shutil.which("redis-server") is None
    or not hasattr(os, "geteuid")
    or os.geteuid() != 0,
    reason="needs root, unshare and redis-server for a private network namespace",
)
def test_demo_and_redis_tests_leave_a_sentinel_redis_alone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GLOBAI_REDIS_URL", "GLOBAI_TEST_REDIS_URL")}
    env.update(
        VAR=str(tmp_path),
        PY=sys.executable,
        GLOBAI_DEVNET_DIR=str(tmp_path / "devnet"),
        GLOBAI_DEV_STATE=str(tmp_path / "no-dev-stack.json"),
        PYTHONPATH=str(ROOT),
    )
    (tmp_path / "devnet").mkdir()
    out = subprocess.run(
        ["unshare", "-n", "bash", "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=840
    )
    lines = out.stdout.splitlines()
    logs = {
        name: (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
        for name in ("tests", "demo")
        if (tmp_path / f"{name}.log").exists()
    }
    assert "tests=0" in lines, logs.get("tests")
    assert "demo=0" in lines, logs.get("demo")
    dbs = [line.split() for line in lines if line.startswith("db")]
    assert len(dbs) == 16, out.stdout + out.stderr
    for name, value, size in dbs:
        n = name.removeprefix("db")
        assert value == f"canary-{n}", f"canary of database {n} changed: {value!r}"
        assert size == "1", f"database {n} holds {size} keys: something wrote to a Redis it was not given"
