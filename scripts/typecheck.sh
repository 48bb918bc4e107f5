#!/usr/bin/env bash
# mypy --strict over the installed package layout. The role folders are mapped into the one
# `xb` namespace by pyproject.toml, which mypy cannot read, so stage that layout with symlinks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/xb"
: >"$stage/xb/__init__.py"  # at run time `xb` is a namespace; mypy is told of it as a package
for role in core broker worker api client tui serve; do ln -s "$root/$role" "$stage/xb/$role"; done
cd "$stage"
"$python" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" -p xb
