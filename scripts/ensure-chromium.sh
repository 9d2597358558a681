#!/usr/bin/env bash
# Make headless Chromium available for the browser tests (tests/examples/
# test_web_stream_browser.py): Debian's `chromium` package at /usr/bin/chromium,
# driven by Playwright (a dev dependency that never downloads a browser build).
#
# Idempotent and quiet when Chromium is already installed. Used by .ci/run and
# by developers before running the `browser`-marked tests.
set -euo pipefail

say() { printf 'ensure-chromium: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root to install chromium (apt-get install chromium)"

say "installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || die "apt-get installed chromium but /usr/bin/chromium is missing"
say "chromium is installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
