#!/usr/bin/env bash
# Set everything up, then serve SmolLM2 135M Instruct on this machine, with no network:
# the OpenAI API at http://127.0.0.1:9997/v1, the broker for more workers at tcp://127.0.0.1:9998.
# Extra arguments go to xb-broker (for example --api-port 8000); a --launch of your own
# (a registry family, xb-demo, or /path/model.gguf) replaces SmolLM2.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
launch=(--launch smollm2-instruct)
for arg in "$@"; do
    case $arg in --launch | --launch=*) launch=() ;; esac
done
exec "$root/.venv/bin/xb-broker" --local "${launch[@]}" "$@"
