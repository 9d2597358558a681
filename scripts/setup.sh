#!/usr/bin/env bash
# Set up everything openhands-rt needs on a fresh Debian/Ubuntu machine:
# uv, the project's locked environment, a Docker engine (with gVisor's runsc
# registered) and a base image bootstrapped locally when no registry is reachable.
# Idempotent: re-running it on a ready machine takes a second or two.
#   OPENHANDS_RT_NO_DOCKER=1  skip the Docker part (LocalRuntime only).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
    say "installing uv"
    python3 -m pip install --quiet --disable-pip-version-check uv \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages uv
fi
export PATH="$HOME/.local/bin:$PATH"

say "installing the project environment (uv sync --frozen)"
uv sync --frozen --all-extras --quiet

# The runtime bundle's static shell (runtime_mode="mount"), and the busybox-only test image's.
if ! dpkg-query -W bash-static busybox-static >/dev/null 2>&1; then
    say "installing bash-static and busybox-static"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends bash-static busybox-static >/dev/null
fi
if [ "${OPENHANDS_RT_NO_DOCKER:-0}" != "1" ]; then
    say "checking the Docker engine"
    bash scripts/ensure-docker.sh
    say "checking the base image"
    uv run --frozen openhands-rt base-image bootstrap
fi
