#!/usr/bin/env bash
# geo.sh [SECONDS] [OUTDIR] — geolocation + EDNS Client Subnet answers
# against plain A answers, and the range table's compile time and memory.
#
# 1. `geo_table` generates a GeoIP2-Country-format database of 420,000
#    networks (bench/src/bin/geo_table.rs) and measures its read + compile
#    time, the dataplane's decode time and memory.
# 2. One controlplane + dataplane (1 UDP worker, taskset core 0) serve
#    `plain.geo.test` (round-robin, one address) and `geo.geo.test`
#    (geolocation over 8 regions, the generated database, ECS on).
# 3. dnsperf (taskset core 1, `-c 32 -q 200`, EDNS), REPS runs of SLICES
#    interleaved slice pairs of SECONDS/SLICES each: plain A, then geo A with
#    an ECS option of a random /24 in the database's IPv4 space (a new one
#    per slice: dnsperf's -E sends one option per run). A run's QPS is the
#    mean over its slices; the ratio is geo/plain of the medians.
#
# Environment: OPENGSLB_BIN (release binaries, default <repo>/target/release;
# built when missing), REPS (3), SLICES (4), NETWORKS (420000).
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
SECS=${1:-12}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${2:-$HERE/results/geo-$(date -u +%Y%m%dT%H%M%SZ)}
BIN=${OPENGSLB_BIN:-$HERE/../target/release}
REPS=${REPS:-3}
SLICES=${SLICES:-4}
NETWORKS=${NETWORKS:-420000}
mkdir -p "$OUT"
command -v dnsperf >/dev/null || { echo "geo.sh: dnsperf is required" >&2; exit 2; }
if ! [ -x "$BIN/opengslb-dataplane" ] || ! [ -x "$BIN/geo_table" ]; then
  (cd "$HERE/.." && cargo build --release -p opengslb-dataplane -p opengslb-controlplane -p opengslb-bench --bin opengslb-dataplane --bin opengslb-controlplane --bin geo_table)
fi

echo "== range table (geo_table $NETWORKS 3)" | tee "$OUT/summary.txt"
"$BIN/geo_table" "$NETWORKS" 3 "$OUT/bench.mmdb" | tee -a "$OUT/summary.txt"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GRPC=$(free_port)
cat > "$OUT/gslb.yaml" <<YAML
logging: {level: warn, format: text}
dns:
  listen_address: "127.0.0.1:$PORT"
  zones: [{name: geo.test}]
dataplane:
  workers: 1
  controlplanes: ["127.0.0.1:$GRPC"]
  cache_dir: dp-cache
  cookies: {secret_file: cookie.secret}
regions:
  - {name: plain, servers: [{address: 192.0.2.1}], health_check: {type: none}}
  - {name: na, continents: [NA], servers: [{address: 192.0.2.11}], health_check: {type: none}}
  - {name: sa, continents: [SA], servers: [{address: 192.0.2.12}], health_check: {type: none}}
  - {name: eu, continents: [EU], servers: [{address: 192.0.2.13}], health_check: {type: none}}
  - {name: de, countries: [DE], servers: [{address: 192.0.2.14}], health_check: {type: none}}
  - {name: asia, continents: [AS, AN], servers: [{address: 192.0.2.15}], health_check: {type: none}}
  - {name: jp, countries: [JP], servers: [{address: 192.0.2.16}], health_check: {type: none}}
  - {name: oc, continents: [OC], servers: [{address: 192.0.2.17}], health_check: {type: none}}
  - {name: af, continents: [AF], servers: [{address: 192.0.2.18}], health_check: {type: none}}
domains:
  - {name: plain.geo.test, regions: [plain]}
  - {name: geo.geo.test, routing_algorithm: geolocation, regions: [na, sa, eu, de, asia, jp, oc, af]}
metrics: {enabled: false}
api: {enabled: false}
overwatch:
  identity: {node_id: geo-bench}
  grpc_address: "127.0.0.1:$GRPC"
  data_dir: cp-data
  geolocation: {database_path: bench.mmdb, default_region: eu}
  dnssec: {enabled: false, security_acknowledgment: "I understand that answers will be unsigned and that resolvers cannot detect forged answers"}
YAML
chmod 600 "$OUT/gslb.yaml"
cd "$OUT"
"$BIN/opengslb-controlplane" --config gslb.yaml dataplane-config > dataplane.json
"$BIN/opengslb-controlplane" --config gslb.yaml > cp.log 2>&1 &
CP=$!
taskset -c 0 "$BIN/opengslb-dataplane" --config dataplane.json > dp.log 2>&1 &
DP=$!
trap 'kill $DP $CP 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  dig +short +time=1 +tries=1 -p "$PORT" @127.0.0.1 geo.geo.test A 2>/dev/null | grep -q . && break
  sleep 0.1
done
dig +short -p "$PORT" @127.0.0.1 geo.geo.test A | grep -q . || { echo "geo.sh: not answering" >&2; cat cp.log dp.log >&2; exit 1; }

echo "plain.geo.test A" > plain.txt
echo "geo.geo.test A" > geo.txt
# Random /24s inside the database's IPv4 networks (1.0.0.0 up), one per slice.
subnets() {
  python3 - "$1" "$2" <<'PY'
import random, sys
random.seed(int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    a = random.randrange(1 << 24, 0x60000000) & ~0xFF
    print("%08x" % a)
PY
}
qps() { sed -n 's/.*Queries per second: *\([0-9.]*\).*/\1/p' "$1"; }
echo "== dnsperf: $REPS x (plain, geo+ECS), ${SECS}s each, -c 32 -q 200, server core 0, dnsperf core 1" | tee -a "$OUT/summary.txt"
slice=$(( SECS / SLICES )); [ "$slice" -ge 1 ] || slice=1
for rep in $(seq 1 "$REPS"); do
  # Interleaved slices (plain, then geo with the slice's random /24), so
  # that the machine's noise falls on both alike.
  ptotal=0 gtotal=0 i=0
  for hex in $(subnets "$rep" "$SLICES"); do
    i=$((i+1))
    taskset -c 1 dnsperf -s 127.0.0.1 -p "$PORT" -d plain.txt -c 32 -q 200 -l "$slice" -e \
      > "plain-$rep-$i.txt" 2>&1
    # ECS option data: FAMILY 1, SOURCE 24, SCOPE 0, three address octets.
    taskset -c 1 dnsperf -s 127.0.0.1 -p "$PORT" -d geo.txt -c 32 -q 200 -l "$slice" -e \
      -E "8:00011800${hex:0:6}" > "geo-$rep-$i.txt" 2>&1
    ptotal=$(python3 -c "print($ptotal + $(qps "plain-$rep-$i.txt"))")
    gtotal=$(python3 -c "print($gtotal + $(qps "geo-$rep-$i.txt"))")
  done
  p=$(python3 -c "print(round($ptotal / $i, 1))")
  g=$(python3 -c "print(round($gtotal / $i, 1))")
  printf 'rep %s: plain A %s qps, geo+ECS %s qps (means of %s interleaved %ss slices)\n' "$rep" "$p" "$g" "$i" "$slice" | tee -a "$OUT/summary.txt"
  printf '%s\t%s\t%s\n' "$rep" "$p" "$g" >> runs.tsv
done
python3 - runs.tsv <<'PY' | tee -a "$OUT/summary.txt"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
p = statistics.median(float(r[1]) for r in rows)
g = statistics.median(float(r[2]) for r in rows)
print(f"median: plain {p:.0f} qps, geo+ECS {g:.0f} qps, geo/plain = {g / p:.3f} (target >= 0.90)")
PY
# A sample answer, to show the ECS scope.
dig -p "$PORT" @127.0.0.1 geo.geo.test A +subnet=2.0.0.0/24 | grep -E 'CLIENT-SUBNET|^geo' | tee -a "$OUT/summary.txt" || true
