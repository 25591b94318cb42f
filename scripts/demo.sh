#!/usr/bin/env bash
# Set up everything, then run the end-to-end demo on embedded defaults (devnet Anvil, SQLite, local Redis).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/globai demo run "$@"
