#!/usr/bin/env bash
# Create .venv and install xb with the llama.cpp and chatglm.cpp backends and the test tools,
# once. llama-cpp-python and chatglm-cpp compile from source the first time (about 4 and 3
# minutes on 2 cores); pip caches the wheels.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "xb needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.xb-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # chatglm-cpp's CMake files predate CMake 4; this lets current CMake configure them.
    CMAKE_POLICY_VERSION_MINIMUM=3.5 .venv/bin/python -m pip install --quiet -e ".[llama,chatglm,test]"
    echo "$want" > "$stamp"
fi
