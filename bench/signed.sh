#!/usr/bin/env bash
# signed.sh [REPS] [SECS] [OUT] — signed against unsigned answers, OpenGSLB and
# Knot DNS side by side (issue 6 point 4, issue 8 conditions).
#
# ../shared/bench/run-anchors.sh serves its zone unsigned only (its Knot
# config says "no DNSSEC"), so this script starts the servers itself, with
# the same zone (../shared/bench/zones/gslb.test.zone), the same query mix
# (queries/small.txt), the same pinning (server `taskset -c 0`, 1 worker;
# dnsperf `taskset -c 1`) and the same CPU and qps accounting as
# run-anchors.sh, in four configurations per rep, interleaved:
#
#   knot-unsigned      knotd, the zone as is
#   knot-signed        knotd signing the zone itself on load (automatic
#                      signing, ECDSA P-256, NSEC; bench/knot-signed.conf.in)
#   opengslb-unsigned  bench/serve.sh, OPENGSLB_BENCH_DNSSEC=off
#   opengslb-signed    bench/serve.sh, OPENGSLB_BENCH_DNSSEC=on (ECDSA P-256)
#
# Every run is `dnsperf -D` (EDNS with DO=1, 4096-octet buffer), so a signed
# zone answers with its RRSIGs (and NSEC for the NXDOMAIN names) and the only
# difference between the two configurations of a server is the signing.
# Before measuring, each server must answer `www.gslb.test A` with (signed)
# or without (unsigned) an RRSIG, checked with kdig.
#
# Output: OUT/runs.tsv (rep, config, qps, server CPU %, qps/core, lost %,
# reply octets), OUT/summary.txt (medians and the signed/unsigned ratios),
# OUT/raw/ (dnsperf output, server logs). Servers are stopped by PID.
# Environment: OPENGSLB_BIN (release binaries, default target/release),
# ANCHORS (default <repo>/../shared/bench), CONFIGS (default: all four).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPS=${1:-3}
SECS=${2:-10}
OUT=${3:-$HERE/results/signed-$(date -u +%Y%m%dT%H%M%SZ)}
ANCHORS=${ANCHORS:-$ROOT/../shared/bench}
ZONE=$ANCHORS/zones/gslb.test.zone
QUERIES=$ANCHORS/queries/small.txt
CONFIGS=${CONFIGS:-knot-unsigned knot-signed opengslb-unsigned opengslb-signed}
[ "$SECS" -le 20 ] || { echo "signed.sh: runs are bounded to 20 s" >&2; exit 2; }
for c in knotd kdig dnsperf taskset; do
  command -v "$c" >/dev/null || { echo "signed.sh: $c not installed (run bench/run.sh once: it installs the anchors)" >&2; exit 1; }
done
[ -f "$ZONE" ] && [ -f "$QUERIES" ] || { echo "signed.sh: no zone/queries in $ANCHORS" >&2; exit 1; }
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/bench-signed.XXXXXX)
PORT=5391
HZ=$(getconf CLK_TCK)
TSV=$OUT/runs.tsv
printf 'rep\tconfig\tqps\tsrv_cpu_pct\tqps_per_core\tlost_pct\tavg_reply_octets\n' > "$TSV"
SERVER_PID=""

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
tree_pids() { local p=$1 c; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done; }
cpu_ticks() { local t=0 p v; for p in $(tree_pids "$1"); do
  v=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | awk '{print $12+$13}'); t=$((t + ${v:-0})); done; echo $t; }
stop_server() {
  local pid=$SERVER_PID i p pids
  [ -n "$pid" ] || return 0
  SERVER_PID=""
  kill -0 "$pid" 2>/dev/null || return 0
  pids=$(tree_pids "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  for p in $pids; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  wait "$pid" 2>/dev/null || true
}
trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# Starts configuration $1 on cpu 0 in $2; sets SERVER_PID.
start_server() {
  local cfg=$1 run=$2
  mkdir -p "$run"
  case "$cfg" in
    knot-*)
      mkdir -p "$run/zones" "$run/db"
      cp "$ZONE" "$run/zones/gslb.test.zone"
      local signing=off
      [ "$cfg" = knot-signed ] && signing=on
      sed -e "s|@RUN@|$run|g" -e "s|@PORT@|$PORT|g" -e "s|@ZONEDIR@|$run/zones|g" \
        -e "s|@SIGNING@|$signing|g" "$HERE/knot-signed.conf.in" > "$run/knot.conf"
      echo "$cfg: taskset -c 0 knotd -c $run/knot.conf" >> "$OUT/commands.txt"
      taskset -c 0 knotd -c "$run/knot.conf" > "$run/server.log" 2>&1 &
      SERVER_PID=$! ;;
    opengslb-*)
      local dnssec=off
      [ "$cfg" = opengslb-signed ] && dnssec=on
      echo "$cfg: OPENGSLB_BENCH_DNSSEC=$dnssec taskset -c 0 bench/serve.sh $PORT 1 $ZONE $run" >> "$OUT/commands.txt"
      OPENGSLB_BENCH_DNSSEC=$dnssec taskset -c 0 "$HERE/serve.sh" "$PORT" 1 "$ZONE" "$run" > "$run/server.log" 2>&1 &
      SERVER_PID=$! ;;
    *) echo "signed.sh: unknown configuration $cfg" >&2; exit 2 ;;
  esac
  # Ready: answers www with (signed) or without (unsigned) an RRSIG.
  local want=0 i out
  case "$cfg" in *-signed) want=1 ;; esac
  for i in $(seq 1 600); do
    out=$(kdig @127.0.0.1 -p "$PORT" +dnssec +time=1 +retry=0 www.gslb.test A 2>/dev/null || true)
    if grep -q 'status: NOERROR' <<< "$out"; then
      if [ "$(grep -c 'RRSIG' <<< "$out")" -gt 0 ] && [ $want = 1 ]; then return 0; fi
      if ! grep -q 'RRSIG' <<< "$out" && [ $want = 0 ]; then return 0; fi
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$run/server.log" >&2; echo "signed.sh: $cfg exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "signed.sh: $cfg never answered as expected:" >&2; echo "$out" >&2; exit 1
}

for rep in $(seq 1 "$REPS"); do
  for cfg in $CONFIGS; do
    run=$WORK/$rep-$cfg
    start_server "$cfg" "$run"
    kdig @127.0.0.1 -p "$PORT" +dnssec www.gslb.test A > "$OUT/raw/$rep-$cfg.kdig-www.txt" 2>&1 || true
    kdig @127.0.0.1 -p "$PORT" +dnssec nx0.gslb.test A > "$OUT/raw/$rep-$cfg.kdig-nx.txt" 2>&1 || true
    sleep 0.5
    f=$OUT/raw/$rep-$cfg.dnsperf.txt
    cmd="dnsperf -s 127.0.0.1 -p $PORT -d $QUERIES -c 32 -q 200 -l $SECS -D"
    echo "taskset -c 1 $cmd" >> "$OUT/commands.txt"
    c0=$(cpu_ticks "$SERVER_PID"); w0=$(date +%s.%N)
    # shellcheck disable=SC2086
    taskset -c 1 $cmd > "$f" 2>&1
    c1=$(cpu_ticks "$SERVER_PID"); w1=$(date +%s.%N)
    cp "$run/server.log" "$OUT/raw/$rep-$cfg.server.log" 2>/dev/null || true
    stop_server
    qps=$(awk '/Queries per second/{print $4}' "$f")
    lost=$(awk '/Queries lost/{gsub(/[()%]/,"",$4); print $4}' "$f")
    octets=$(awk '/Average packet size/{print $NF}' "$f")
    cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v w0="$w0" -v w1="$w1" 'BEGIN{printf "%.1f", (b-a)/hz/(w1-w0)*100}')
    qpc=$(awk -v q="${qps:-0}" -v c="$cpu" 'BEGIN{ if (c > 0) printf "%.0f", q/(c/100); else print "NA" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$cfg" "${qps:-NA}" "$cpu" "$qpc" "${lost:-NA}" "${octets:-NA}" >> "$TSV"
    log "rep $rep $cfg: qps=${qps:-NA} srv_cpu=${cpu}% qps/core=$qpc lost=${lost:-NA}% reply=${octets:-NA} octets"
    sleep 0.5
  done
done

python3 - "$TSV" > "$OUT/summary.txt" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(cfg, key):
    v = [float(r[key]) for r in rows if r["config"] == cfg and r[key] not in ("NA", "")]
    return statistics.median(v) if v else None
cfgs = []
for r in rows:
    if r["config"] not in cfgs:
        cfgs.append(r["config"])
reps = len({r["rep"] for r in rows})
print(f"signed vs unsigned, dnsperf -D, 1 worker on cpu 0, median of {reps} rep(s)")
print(f"{'config':<20}{'qps':>10}{'srv CPU%':>10}{'qps/core':>10}{'lost%':>8}{'reply B':>9}")
for c in cfgs:
    f = lambda k, fmt: (fmt % med(c, k)) if med(c, k) is not None else "NA"
    print(f"{c:<20}{f('qps','%.0f'):>10}{f('srv_cpu_pct','%.1f'):>10}{f('qps_per_core','%.0f'):>10}{f('lost_pct','%.2f'):>8}{f('avg_reply_octets','%.0f'):>9}")
for s in ("knot", "opengslb"):
    a, b = med(f"{s}-signed", "qps_per_core"), med(f"{s}-unsigned", "qps_per_core")
    qa, qb = med(f"{s}-signed", "qps"), med(f"{s}-unsigned", "qps")
    if a and b:
        print(f"{s}: signed/unsigned qps/core = {a/b:.3f}, qps = {qa/qb:.3f}")
a, b = med("opengslb-signed", "qps_per_core"), med("knot-signed", "qps_per_core")
if a and b:
    print(f"signed: opengslb/knot qps/core = {a/b:.3f}")
PY
cat "$OUT/summary.txt"
