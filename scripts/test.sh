#!/usr/bin/env bash
# Run the whole test suite, Docker tests included (sets the machine up first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.local/bin:$PATH"
exec uv run --frozen pytest "$@"
