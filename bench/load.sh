#!/usr/bin/env bash
# load.sh [--names N] [--reps R] [--out DIR] — zone load time and RSS of a
# big zone: Knot DNS and OpenGSLB started the same way, interleaved, on CPU 0.
#
# The zone is ../shared/bench/gen-data.py's big zone with N names (default
# 100000: the harness' --big zone; 1000000 works too and needs ~2 GiB of
# memory for the controlplane's YAML). Per rep, three starts:
#
#   knot      knotd with the harness' knot.conf.in, exec -> last name answers
#   opengslb  bench/serve.sh as run-anchors starts it: exec -> last name
#             answers, which counts the controlplane's start, its YAML parse
#             and compile, the stream, and the dataplane's decode, validation,
#             compile and swap. The dataplane's own log adds how long it took
#             from the decoded snapshot's arrival to serving it (`served_ms`:
#             validated, compiled, swapped in; every name answers from then)
#             and to having also written the cache (`applied_ms`, fsync).
#   dp-cache  the dataplane alone, restarted on the snapshot cache the
#             opengslb start wrote (`snapshot.bin`, the same bytes the
#             stream carried) with no controlplane reachable: exec -> last
#             name answers. This is the like-for-like of Knot loading its zone
#             file: a local file of the whole zone, read, checked, compiled.
#
# RSS is the serving process' VmRSS 0.5 s after the last name answered (the
# dataplane's alone; the controlplane's is printed beside it). Needs knotd,
# kdig, taskset, python3; loopback only; stops everything it started.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ANCHORS=${ANCHORS:-$ROOT/../shared/bench}
BIN=${OPENGSLB_BIN:-$ROOT/target/release}
NAMES=100000 REPS=3 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --names) NAMES=$2; shift 2;;
    --reps) REPS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    *) echo "usage: $0 [--names N] [--reps R] [--out DIR]" >&2; exit 2;;
  esac
done
for b in opengslb-controlplane opengslb-dataplane; do
  [ -x "$BIN/$b" ] || { echo "load.sh: $BIN/$b missing (cargo build --release)" >&2; exit 1; }
done
command -v knotd >/dev/null && command -v kdig >/dev/null || { echo "load.sh: needs knotd and kdig" >&2; exit 1; }
WORK=$(mktemp -d /tmp/opengslb-load.XXXXXX)
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
declare -a PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK/data" "$WORK"/run-*; }
trap cleanup EXIT

DATA=$WORK/data
python3 "$ANCHORS/gen-data.py" --out "$DATA" --names "$NAMES" --big-queries 1000 > /dev/null
ZD=$DATA/zones/big
ZONE=$ZD/gslb.test.zone
PROBE=$(printf 'h%06d.gslb.test' $((NAMES - 1)))
export OPENGSLB_BIN=$BIN OPENGSLB_BENCH_CACHE=$WORK/zcache
mkdir -p "$OPENGSLB_BENCH_CACHE"
# Rendered ahead, as run.sh does, so the conversion is not counted.
key=$(printf '%s' "$(readlink -f "$ZONE")" | md5sum | cut -c1-12)
python3 "$HERE/zone2yaml.py" "$ZONE" > "$OPENGSLB_BENCH_CACHE/zone-$key.yaml"
NOGROUP=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)
PORT=5391

now() { date +%s.%N; }
rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo NA; }
# wait_answer PID -> seconds since T0 when PROBE answered, or exit
wait_answer() {
  local pid=$1 deadline=$(( $(date +%s) + 600 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "load.sh: server exited" >&2; return 1; }
    if [ -n "$(ss -Hlun "sport = :$PORT" 2>/dev/null)" ] \
       && [ -n "$(kdig @127.0.0.1 -p $PORT +short +time=1 +retry=0 +notcp "$PROBE" A 2>/dev/null)" ]; then
      awk -v a="$(now)" -v b="$T0" 'BEGIN{printf "%.3f", a-b}'; return 0
    fi
    sleep 0.01
  done
  return 1
}
stop() { kill -TERM "$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done; kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

printf 'rep\tserver\tstart_s\trss_kb\tcp_rss_kb\tserved_ms\tapplied_ms\n' > "$OUT/load.tsv"
for rep in $(seq 1 "$REPS"); do
  # knot
  run=$WORK/run-knot-$rep; mkdir -p "$run/db"
  sed -e "s|@NOGROUP@|$NOGROUP|g" -e "s|@PORT@|$PORT|g" -e "s|@THREADS@|1|g" -e "s|@RUN@|$run|g" \
      -e "s|@ZONEDIR@|$ZD|g" "$ANCHORS/configs/knot.conf.in" > "$run/knot.conf"
  T0=$(now); taskset -c 0 knotd -c "$run/knot.conf" > "$run/log" 2>&1 & pid=$!; PIDS+=("$pid")
  s=$(wait_answer "$pid"); sleep 0.5; r=$(rss "$pid"); stop "$pid"
  printf '%s\tknot\t%s\t%s\tNA\tNA\tNA\n' "$rep" "$s" "$r" | tee -a "$OUT/load.tsv"

  # opengslb, as the harness starts it (info logs, for the dataplane's own time)
  run=$WORK/run-og-$rep; mkdir -p "$run"
  T0=$(now); OPENGSLB_BENCH_LOG=info taskset -c 0 "$HERE/serve.sh" $PORT 1 "$ZONE" "$run" > "$run/server.log" 2>&1 & pid=$!; PIDS+=("$pid")
  s=$(wait_answer "$pid"); sleep 0.5; r=$(rss "$pid"); c=$(rss "$(cat "$run/cp.pid")")
  applied=$(grep -a 'snapshot applied' "$run/server.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'elapsed_us=[0-9]*' | cut -d= -f2)
  applied=$(awk -v u="${applied:-}" 'BEGIN{ if (u == "") print "NA"; else printf "%.1f", u/1000 }')
  served=$(grep -a 'serving snapshot' "$run/server.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'compile_us=[0-9]*' | cut -d= -f2)
  served=$(awk -v u="${served:-}" 'BEGIN{ if (u == "") print "NA"; else printf "%.1f", u/1000 }')
  stop "$pid"
  printf '%s\topengslb\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$s" "$r" "$c" "$served" "$applied" | tee -a "$OUT/load.tsv"
  cp "$run/cp.log" "$OUT/cp-$rep.log" 2>/dev/null || true; cp "$run/server.log" "$OUT/dp-$rep.log"

  # the dataplane alone, from the snapshot cache that start wrote
  [ -s "$run/dp-cache/snapshot.bin" ] || { echo "load.sh: no snapshot cache written" >&2; exit 1; }
  T0=$(now)
  taskset -c 0 "$BIN/opengslb-dataplane" --config "$run/dataplane.json" --listen "127.0.0.1:$PORT" --workers 1 \
    --controlplane 127.0.0.1:1 --cache-dir "$run/dp-cache" --log-level error --log-format text > "$run/cache.log" 2>&1 & pid=$!; PIDS+=("$pid")
  s=$(wait_answer "$pid"); sleep 0.5; r=$(rss "$pid"); stop "$pid"
  printf '%s\tdp-cache\t%s\t%s\tNA\tNA\tNA\n' "$rep" "$s" "$r" | tee -a "$OUT/load.tsv"
  rm -rf "$run"
done

echo
echo "names=$NAMES probe=$PROBE snapshot.bin from the last opengslb start; medians of $REPS:"
awk -F'\t' 'NR>1{k=$2; n[k]++; s[k,n[k]]=$3; r[k,n[k]]=$4; c[k,n[k]]=$5; v[k,n[k]]=$6; a[k,n[k]]=$7}
  function med(arr,k,   i,j,t,v,m){m=n[k]; for(i=1;i<=m;i++)v[i]=arr[k,i]; for(i=1;i<=m;i++)for(j=i+1;j<=m;j++)if(v[j]+0<v[i]+0){t=v[i];v[i]=v[j];v[j]=t}; return v[int((m+1)/2)]}
  END{printf "%-9s %9s %10s %12s %10s %11s\n","server","start_s","RSS MiB","cp RSS MiB","served_ms","applied_ms";
    for(k in n){cr=med(c,k); printf "%-9s %9s %10.1f %12s %10s %11s\n",k,med(s,k),med(r,k)/1024,(cr=="NA"?"":sprintf("%.1f",cr/1024)),(med(v,k)=="NA"?"":med(v,k)),(med(a,k)=="NA"?"":med(a,k))}}' "$OUT/load.tsv" | tee "$OUT/summary.txt"
echo "raw: $OUT"
