#!/usr/bin/env bash
# Set everything up, then run the linters, the type checker and the whole test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
