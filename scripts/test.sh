#!/usr/bin/env bash
# Set up everything this project needs, then run the whole test suite against real services:
# Anvil (started by the tests), Redis (local one, or a private redis-server), Postgres when it runs
# (the Postgres legs are skipped only where no Postgres is reachable; SQLite always runs).
# Lint, format and types first (ruff, mypy): a failure there stops the run before the long suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
echo "ruff + mypy..."
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy --no-error-summary market worker globai
export PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q "$@"
