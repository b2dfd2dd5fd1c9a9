#!/usr/bin/env bash
# amplification.sh — bytes out ÷ bytes in for a cookieless UDP client, on
# loopback, against the dataplane serving the shared bench zone: over the
# bench query mix (../shared/bench/queries/small.txt) and for every name of
# the zone crossed with every common type (the worst single question), with
# EDNS 1232 + DO, with EDNS 4096 + DO (the server caps at edns_udp_size), and
# without EDNS. Bounded: a few hundred queries, 1 s timeout each.
# Environment: OPENGSLB_BIN (binaries, default target/release), ANCHORS,
# PORT (5397), OPENGSLB_BENCH_DNSSEC (on: the zone signed; see serve.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOP=$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")
ANCHORS=${ANCHORS:-$TOP/../shared/bench}
PORT=${PORT:-5397}
RUN=$(mktemp -d)
export OPENGSLB_BIN=${OPENGSLB_BIN:-$ROOT/target/release}
"$HERE/serve.sh" "$PORT" 1 "$ANCHORS/zones/gslb.test.zone" "$RUN" > "$RUN/server.log" 2>&1 &
DP=$!
trap 'kill $DP 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT
for _ in $(seq 1 300); do
  dig @127.0.0.1 -p "$PORT" www.gslb.test A +short +time=1 +tries=1 >/dev/null 2>&1 && break
  sleep 0.1
done
awk '$1 !~ /^[$;]/ && NF > 2 {n = $1; if (n == "@") n = ""; else n = n "."; print n "gslb.test"}' \
  "$ANCHORS/zones/gslb.test.zone" | sort -u > "$RUN/names.txt"
echo "nx-$RANDOM.gslb.test" >> "$RUN/names.txt"
for mode in "--edns 1232 --do" "--edns 4096 --do" "--edns 0"; do
  echo "== $mode"
  # shellcheck disable=SC2086
  python3 "$HERE/abuse_tools.py" amplification --port "$PORT" \
    --queries "$ANCHORS/queries/small.txt" --names "$RUN/names.txt" $mode
done
