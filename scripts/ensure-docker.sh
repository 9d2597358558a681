#!/usr/bin/env bash
# Make a Docker engine available on this (systemd-less, root) Debian machine:
# install docker.io, debootstrap, docker-registry and runsc when absent, register runsc as an
# OCI runtime in /etc/docker/daemon.json (merged, other keys kept), start
# dockerd in the background when its socket does not answer, and wait for it.
#
# Idempotent and quiet when everything is already in place. Used by .ci/run and
# by developers before running the `docker`-marked tests.
#
# Environment:
#   DOCKERD_LOG             dockerd's log file        (default /var/log/dockerd.log)
#   DOCKERD_START_TIMEOUT   seconds to wait for it    (default 60)
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"
DOCKER_SOCK=/var/run/docker.sock
DAEMON_JSON=/etc/docker/daemon.json

say() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts dockerd)"

# --- packages ------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# The swarm tests' registry (tests/swarm): run by the tests as a process of their own.
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
[ -x /usr/bin/runsc ] || missing+=(runsc)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No init system here: keep the packages' maintainer scripts from trying to
    # start services (dockerd is started below, under our control).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    trap 'if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
    apt-get update -q >/dev/null
    # runsc is optional: only gVisor-sandboxed runtimes need it, so a mirror
    # without it must not stop the engine from coming up.
    required=()
    for pkg in "${missing[@]}"; do
        [ "$pkg" = runsc ] || required+=("$pkg")
    done
    if [ "${#required[@]}" -gt 0 ]; then
        apt-get install -y -q --no-install-recommends "${required[@]}" >/dev/null
    fi
    if [[ " ${missing[*]} " == *" docker-registry "* ]]; then
        # Its package starts a registry of its own (:5000 on every address, htpasswd
        # auth) where an init system lets it; the tests start theirs: keep that one off.
        if [ -x /etc/init.d/docker-registry ]; then
            /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
        fi
        update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
    if [[ " ${missing[*]} " == *" runsc "* ]]; then
        # Captured first: `grep -q` closing the pipe early would fail it under pipefail.
        runsc_policy="$(apt-cache policy runsc 2>/dev/null || true)"
        if [[ "$runsc_policy" == *"Candidate: "[0-9]* ]]; then
            apt-get install -y -q --no-install-recommends runsc >/dev/null
        else
            say "runsc is not available from the configured apt sources; skipping gVisor"
        fi
    fi
fi

# --- daemon.json: register runsc, keep every other key ------------------
if [ -x /usr/bin/runsc ]; then
    mkdir -p "$(dirname "$DAEMON_JSON")"
    daemon_json_changed="$(python3 - "$DAEMON_JSON" <<'PY'
import json
import os
import sys

path = sys.argv[1]
# --network=host: gVisor's own netstack does not start on this kernel.
# --host-uds=all: sandboxes with network "none" serve their channel on a Unix
# socket in a bind-mounted host directory; gVisor only exposes it with this.
wanted = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host", "--host-uds=all"]}
try:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    config = json.loads(text) if text.strip() else {}
except FileNotFoundError:
    config = {}
if config.get("runtimes", {}).get("runsc") != wanted:
    config.setdefault("runtimes", {})["runsc"] = wanted
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print("changed")
PY
)"
    if [ -n "$daemon_json_changed" ]; then
        say "registered runsc in $DAEMON_JSON"
        # A running dockerd reloads its runtimes on SIGHUP; no restart needed.
        if dockerd_pid="$(pgrep -r R,S,D -x dockerd)"; then
            kill -HUP $dockerd_pid
        fi
    fi
fi

# --- dockerd -------------------------------------------------------------
engine_answers() { curl -sf --max-time 2 --unix-socket "$DOCKER_SOCK" http://docker/_ping >/dev/null 2>&1; }

if engine_answers; then
    exit 0
fi

if ! pgrep -r R,S,D -x dockerd >/dev/null 2>&1; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # A socket left behind by a dockerd that died would make the new one fail.
    rm -f "$DOCKER_SOCK"
    # setsid: dockerd must outlive this script and the shell that ran it.
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

deadline=$((SECONDS + DOCKERD_START_TIMEOUT))
until engine_answers; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "dockerd did not answer on $DOCKER_SOCK within ${DOCKERD_START_TIMEOUT}s; last log lines:"
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
    if ! pgrep -r R,S,D -x dockerd >/dev/null 2>&1; then
        say "dockerd exited while starting; last log lines:"
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
    sleep 0.2
done
say "dockerd is up"
