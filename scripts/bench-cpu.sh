#!/bin/bash
# Daemon CPU per signed request: starts `SIGNERD dev` on a fresh development directory, warms
# it up for 2 s, then loads it for 8 s with 64 clients (`signerctl bench`) and reads the
# daemon's utime + stime from /proc/<pid>/stat before and after.
#
#   scripts/bench-cpu.sh LABEL SIGNERD DIR [soft|pkcs11]
#
# Compare two builds by alternating them, e.g.
#   for i in 1 2 3; do scripts/bench-cpu.sh old$i old/signerd /tmp/d-old
#                      scripts/bench-cpu.sh new$i target/release/signerd /tmp/d-new; done
# The load generator is always this tree's signerctl (target/release/signerctl), so only
# the daemon changes. DIR is removed first.
set -eu
label=$1; bin=$2; dir=$3; backend=${4:-soft}
ctl=${SIGNERCTL:-$(dirname "$0")/../target/release/signerctl}
rm -rf "$dir"
"$bin" dev --dir "$dir" --backend "$backend" --log-level warn >"$dir.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then break; fi
  sleep 0.5
done
"$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency 64 --duration 2 >/dev/null
t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
out=$("$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency 64 --duration 8)
t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
n=$(echo "$out" | grep -oP '\d+(?= signed in)' | head -1)
rate=$(echo "$out" | grep -oP '\d+(?=/s$)' | head -1)
hz=$(getconf CLK_TCK)
echo "$label: $n signed, $rate/s, daemon CPU $(( (t1 - t0) * 1000 / hz )) ms," \
  "$(( (t1 - t0) * 1000000 / hz / n )) µs per signed request"
