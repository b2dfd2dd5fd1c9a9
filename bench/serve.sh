#!/usr/bin/env bash
# serve.sh PORT THREADS ZONEFILE RUNDIR — start OpenGSLB serving ZONEFILE on
# 127.0.0.1:PORT with THREADS UDP workers, for run-anchors.sh --target-cmd.
#
# The controlplane starts first, detached (it is not a child of the measured
# process, so run-anchors' CPU and RSS columns are the dataplane's alone),
# with a watchdog that stops it when the dataplane exits. Then this script
# `exec`s the dataplane, which keeps this PID: the one run-anchors started,
# measures and stops. Both inherit run-anchors' taskset.
#
# Environment: OPENGSLB_BIN (folder with the release binaries, default
# <repo>/target/release), OPENGSLB_BENCH_CACHE (folder of zone fragments
# rendered ahead by run.sh; a missing one is rendered here),
# OPENGSLB_BENCH_DEFENCES (unset: the defaults, where RRL exempts loopback so
# dnsperf never reaches the limiter; `on`: RRL with no exempt networks and a
# limit no run reaches, so every reply pays the full limiter, plus cookies;
# `off`: RRL and cookies switched off; `mix`: see attack-mix.sh),
# OPENGSLB_BENCH_METRICS (dataplane /metrics address, default none),
# OPENGSLB_BENCH_DNSSEC (`off`, the default, like the anchors' unsigned zone;
# `on`: the zone is signed), OPENGSLB_BENCH_LOG (log level of both, default
# `warn`; bench/load.sh reads the dataplane's `info` lines).
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 PORT THREADS ZONEFILE RUNDIR" >&2; exit 2; }
PORT=$1 THREADS=$2 ZONEFILE=$3 RUN=$4
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${OPENGSLB_BIN:-$HERE/../target/release}
CACHE=${OPENGSLB_BENCH_CACHE:-$RUN}
mkdir -p "$RUN" "$CACHE"

key=$(printf '%s' "$(readlink -f "$ZONEFILE")" | md5sum | cut -c1-12)
frag=$CACHE/zone-$key.yaml
if ! [ -s "$frag" ] || [ "$ZONEFILE" -nt "$frag" ]; then
  python3 "$HERE/zone2yaml.py" "$ZONEFILE" > "$frag.tmp" && mv "$frag.tmp" "$frag"
fi
ln -sf "$frag" "$RUN/zone.yaml"

case "${OPENGSLB_BENCH_DEFENCES:-}" in
  ""|default) DEFENCES="  cookies: {secret_file: cookie.secret}" ;;
  on)  DEFENCES="  rrl: {enabled: true, exempt: [], responses_per_second: 100000000}
  cookies: {enabled: true, secret_file: cookie.secret}" ;;
  off) DEFENCES="  rrl: {enabled: false}
  cookies: {enabled: false}" ;;
  # attack-mix.sh: defaults, but RRL exempts the legitimate client
  # (127.0.0.1) and the flood (127.1/16, so it runs at full rate, as one from
  # many spoofed networks would), not the malformed sender (127.2.0.1); and
  # a TCP cap small enough to attack with 2 x cap.
  mix) DEFENCES="  rrl: {exempt: [127.0.0.1/32, 127.1.0.0/16]}
  tcp: {max_connections: ${OPENGSLB_BENCH_TCP_CAP:-64}}
  cookies: {secret_file: cookie.secret}" ;;
  *) echo "serve.sh: OPENGSLB_BENCH_DEFENCES must be default, on, off or mix" >&2; exit 2 ;;
esac

# The anchors serve the zone unsigned: so does OpenGSLB here, unless
# OPENGSLB_BENCH_DNSSEC=on (then every name carries its RRSIGs and NSEC).
case "${OPENGSLB_BENCH_DNSSEC:-off}" in
  off) DNSSEC="  dnssec: {enabled: false, security_acknowledgment: \"I understand that answers will be unsigned and that resolvers cannot detect forged answers\"}" ;;
  on)  DNSSEC="" ;;
  *) echo "serve.sh: OPENGSLB_BENCH_DNSSEC must be on or off" >&2; exit 2 ;;
esac

GRPC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$RUN/gslb.yaml" <<YAML
includes: [zone.yaml]
logging: {level: ${OPENGSLB_BENCH_LOG:-warn}, format: text}
dns:
  listen_address: "127.0.0.1:$PORT"
dataplane:
  workers: $THREADS
  controlplanes: ["127.0.0.1:$GRPC"]
  cache_dir: dp-cache
  metrics_address: ${OPENGSLB_BENCH_METRICS:-null}
$DEFENCES
metrics: {enabled: false}
api: {enabled: false}
overwatch:
  identity: {node_id: bench}
  grpc_address: "127.0.0.1:$GRPC"
  data_dir: cp-data
$DNSSEC
YAML
chmod 600 "$RUN/gslb.yaml"

DP_PID=$$
# Detached (double fork): reparented away from the dataplane's process tree.
( ( "$BIN/opengslb-controlplane" --config "$RUN/gslb.yaml" < /dev/null > "$RUN/cp.log" 2>&1 &
    cp=$!
    echo "$cp" > "$RUN/cp.pid"
    tail --pid="$DP_PID" -f /dev/null 2>/dev/null || true
    kill -TERM "$cp" 2>/dev/null || true
    wait "$cp" 2>/dev/null || true ) & )

# The dataplane retries with backoff; waiting for the port keeps start-up short.
for _ in $(seq 1 3000); do
  [ -n "$(ss -Hltn "sport = :$GRPC" 2>/dev/null)" ] && break
  if [ -s "$RUN/cp.pid" ] && ! kill -0 "$(cat "$RUN/cp.pid")" 2>/dev/null; then
    echo "serve.sh: the controlplane exited:" >&2; cat "$RUN/cp.log" >&2; exit 1
  fi
  sleep 0.01
done
# The dataplane's settings come from the same YAML (RRL and cookies included),
# read without the zone include: it holds no dataplane setting, and parsing
# 100k records twice would count twice in the load time.
grep -v '^includes:' "$RUN/gslb.yaml" > "$RUN/dataplane-settings.yaml"
chmod 600 "$RUN/dataplane-settings.yaml"
"$BIN/opengslb-controlplane" --config "$RUN/dataplane-settings.yaml" dataplane-config > "$RUN/dataplane.json"
exec "$BIN/opengslb-dataplane" --config "$RUN/dataplane.json" --listen "127.0.0.1:$PORT" --workers "$THREADS" \
  --controlplane "127.0.0.1:$GRPC" --cache-dir "$RUN/dp-cache" --log-level "${OPENGSLB_BENCH_LOG:-warn}" --log-format text
