#!/bin/bash
# Overload: a `signerd dev` installation in DIR (removed first) listening on PORT, restarted
# with `signerd run` and `[server] max_in_flight = MAX_IN_FLIGHT` (empty: not set, the
# default; also for a build without the setting); 2 s of warm-up at 64 clients, then 10 s
# closed loop at CONCURRENCY clients. Prints `signerctl bench`'s report (refusals by status
# code) and the daemon's CPU per signed request from /proc/<pid>/stat.
#
#   scripts/bench-overload.sh LABEL SIGNERD DIR PORT MAX_IN_FLIGHT CONCURRENCY
set -eu
label=$1; bin=$2; dir=$3; port=$4; mif=$5; conc=$6
ctl=${SIGNERCTL:-$(dirname "$0")/../target/release/signerctl}
rm -rf "$dir"
"$bin" dev --dir "$dir" --listen "127.0.0.1:$port" --log-level warn >"$dir.first.log" 2>&1 &
p=$!
for _ in $(seq 1 120); do
  if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then break; fi
  sleep 0.5
done
kill -TERM $p; wait $p 2>/dev/null || true
if [ -n "$mif" ]; then
  python3 - "$dir/signerd.toml" "$mif" <<'PY'
import sys
p, n = sys.argv[1], sys.argv[2]
t = open(p).read()
assert t.count("[server]\n") == 1
open(p, "w").write(t.replace("[server]\n", "[server]\nmax_in_flight = %s\n" % n))
PY
fi
"$bin" run --config "$dir/signerd.toml" --log-level warn >"$dir.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then break; fi
  sleep 0.5
done
"$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency 64 --duration 2 >/dev/null
t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
out=$("$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency "$conc" --duration 10)
t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
n=$(echo "$out" | grep -oP '\d+(?= signed in)' | head -1)
hz=$(getconf CLK_TCK)
echo "== $label"; echo "$out"
echo "$label: daemon CPU $(( (t1 - t0) * 1000 / hz )) ms, $(( (t1 - t0) * 1000000 / hz / n )) µs per signed request"
