#!/usr/bin/env bash
# Stops every peer start.sh started (by the pid files in $HERALD_CI_PEERS).
PEERS="${HERALD_CI_PEERS:?}"
for f in "$PEERS"/*.pid; do
  [ -f "$f" ] || continue
  kill "$(cat "$f")" 2>/dev/null || true
done
