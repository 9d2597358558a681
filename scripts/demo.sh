#!/usr/bin/env bash
# Set up (see scripts/setup.sh), then run the main job: a real sandbox driven by
# a short scripted agent session, its events streamed and recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.local/bin:$PATH"
exec uv run --frozen openhands-rt demo "$@"
