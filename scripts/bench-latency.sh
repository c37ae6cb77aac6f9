#!/bin/bash
# Latency and daemon CPU per signed request with the daemon and the load generator on cores of
# their choosing: starts `SIGNERD dev` on a fresh development directory DIR (removed first)
# listening on PORT, warms it up for 2 s (64 clients, closed loop), then loads it for 8 s with
# 64 clients (`signerctl bench`) and reads the daemon's utime + stime from /proc/<pid>/stat
# before and after.
#
#   scripts/bench-latency.sh LABEL SIGNERD DIR PORT DAEMON_CPUS LG_CPUS peak
#   scripts/bench-latency.sh LABEL SIGNERD DIR PORT DAEMON_CPUS LG_CPUS rate RATE
#
# peak: closed loop (throughput); rate: `--rate RATE` (paced; latency from each due time).
# DAEMON_CPUS and LG_CPUS are `taskset -c` lists, or `all` for no pinning. The load generator
# is this tree's signerctl (or $SIGNERCTL), so only the daemon changes between builds.
set -eu
label=$1; bin=$2; dir=$3; port=$4; dcpu=$5; lcpu=$6; mode=$7; rate=${8:-}
ctl=${SIGNERCTL:-$(dirname "$0")/../target/release/signerctl}
rm -rf "$dir"
pin() { local c=$1; shift; if [ "$c" = all ]; then "$@"; else taskset -c "$c" "$@"; fi; }
if [ "$dcpu" = all ]; then
  "$bin" dev --dir "$dir" --listen "127.0.0.1:$port" --log-level warn >"$dir.log" 2>&1 &
else
  taskset -c "$dcpu" "$bin" dev --dir "$dir" --listen "127.0.0.1:$port" --log-level warn >"$dir.log" 2>&1 &
fi
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then break; fi
  sleep 0.5
done
pin "$lcpu" "$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency 64 --duration 2 >/dev/null
t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
if [ "$mode" = peak ]; then
  out=$(pin "$lcpu" "$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency 64 --duration 8)
else
  out=$(pin "$lcpu" "$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency 64 --duration 8 --rate "$rate")
fi
t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
n=$(echo "$out" | grep -oP '\d+(?= signed in)' | head -1)
hz=$(getconf CLK_TCK)
echo "== $label"
echo "$out"
echo "$label: daemon CPU $(( (t1 - t0) * 1000 / hz )) ms, $(( (t1 - t0) * 1000000 / hz / n )) µs per signed request"
