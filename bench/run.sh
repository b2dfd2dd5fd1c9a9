#!/usr/bin/env bash
# run.sh [run-anchors.sh options...] — benchmark OpenGSLB against the anchors.
#
# One command: builds the release binaries, renders the bench zones
# (zones/gslb.test.zone and, with --big, zones/big/gslb.test.zone of
# ../shared/bench) as OpenGSLB config, and runs ../shared/bench/run-anchors.sh
# with `--target-cmd opengslb=bench/serve.sh {port} {threads} {zonefile} {rundir}`,
# so OpenGSLB (controlplane + dataplane) is started, measured and stopped in
# the same interleaved run as floor, Knot, NSD, gdnsd, PowerDNS, hickory.
#
# Every other option goes to run-anchors.sh unchanged, e.g.
#   bench/run.sh --quick --servers floor,knot,gdnsd --threads 1
#   bench/run.sh --servers floor,knot,gdnsd,nsd --threads 1,2 --reps 3
#   bench/run.sh --big --big-servers knot,gdnsd
# Results land in bench/results/<UTC timestamp>/ unless --out is given.
# Environment: ANCHORS (the run-anchors.sh folder, default
# <repo>/../shared/bench), NO_BUILD=1 (skip cargo build), OPENGSLB_BIN (folder
# of prebuilt binaries to measure instead of target/release), DEFENCES
# (e.g. `on,off,default`: measure OpenGSLB once per setting of serve.sh's
# OPENGSLB_BENCH_DEFENCES, as targets opengslb-on, opengslb-off, …, in the
# same interleaved run; default: one target, opengslb, with the defaults).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOP=$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")
ANCHORS=${ANCHORS:-$TOP/../shared/bench}
[ -x "$ANCHORS/run-anchors.sh" ] || { echo "run.sh: no run-anchors.sh in $ANCHORS (set ANCHORS)" >&2; exit 1; }
ANCHORS=$(cd "$ANCHORS" && pwd)

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -p opengslb-dataplane -p opengslb-controlplane)
fi
BIN=${OPENGSLB_BIN:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release}
for b in opengslb-controlplane opengslb-dataplane; do
  [ -x "$BIN/$b" ] || { echo "run.sh: $BIN/$b missing" >&2; exit 1; }
done

# The zones run-anchors will serve: beside it when writable, else its cache
# (the same rule run-anchors.sh follows). Render them ahead, so the
# conversion is not counted in the load time.
DATA=$ANCHORS
[ -w "$ANCHORS" ] || DATA=${XDG_CACHE_HOME:-$HOME/.cache}/dns-bench-anchors
if ! [ -f "$DATA/zones/big/gslb.test.zone" ]; then
  mkdir -p "$DATA"
  python3 "$ANCHORS/gen-data.py" --out "$DATA"
fi
CACHE=$HERE/results/.zones
mkdir -p "$CACHE"
for z in "$DATA/zones/gslb.test.zone" "$DATA/zones/big/gslb.test.zone"; do
  key=$(printf '%s' "$(readlink -f "$z")" | md5sum | cut -c1-12)
  [ "$z" -nt "$CACHE/zone-$key.yaml" ] || [ ! -s "$CACHE/zone-$key.yaml" ] || continue
  python3 "$HERE/zone2yaml.py" "$z" > "$CACHE/zone-$key.yaml"
done

args=("$@")
have_out=0
for a in "${args[@]}"; do [ "$a" = --out ] && have_out=1; done
[ $have_out = 1 ] || args+=(--out "$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)")

export OPENGSLB_BIN=$BIN OPENGSLB_BENCH_CACHE=$CACHE
targets=()
if [ -n "${DEFENCES:-}" ]; then
  for d in ${DEFENCES//,/ }; do
    targets+=(--target-cmd "opengslb-$d=env OPENGSLB_BENCH_DEFENCES=$d $HERE/serve.sh {port} {threads} {zonefile} {rundir}")
  done
else
  targets=(--target-cmd "opengslb=$HERE/serve.sh {port} {threads} {zonefile} {rundir}")
fi
exec "$ANCHORS/run-anchors.sh" "${targets[@]}" "${args[@]}"
