#!/usr/bin/env bash
# Set everything up, then serve the built-in demo model on this machine:
# the OpenAI API at http://127.0.0.1:9997/v1, the broker for more workers at tcp://127.0.0.1:9998.
# Extra arguments go to xb-broker (for example --api-port 8000, or --launch /path/model.gguf).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/xb-broker" --local --launch xb-demo "$@"
