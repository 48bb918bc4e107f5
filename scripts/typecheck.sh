#!/usr/bin/env bash
# mypy --strict over the installed package layout. The role folders are mapped into the one
# `xb` package by pyproject.toml, which mypy cannot read, so stage that layout with symlinks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/xb"
for file in "$root"/core/*; do ln -s "$file" "$stage/xb/"; done
for role in broker worker api client tui; do ln -s "$root/$role" "$stage/xb/$role"; done
cd "$stage"
"$python" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" -p xb
