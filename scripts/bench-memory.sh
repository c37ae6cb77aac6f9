#!/usr/bin/env bash
# Whether the daemon's memory is bounded by its configuration or grows with its history: one
# `signerd dev` installation, started once on an empty audit log and state store, loaded RUNS
# times by `signerctl bench` (CLIENTS clients for SECS seconds each, EIP-191 messages for
# `dev-secp256k1`); after each run, and once more after IDLE seconds without load, the
# daemon's VmRSS and VmHWM from /proc/<pid>/status.
#
#   scripts/bench-memory.sh LABEL SIGNERD DIR
#
# Environment: RUNS (default 10), CLIENTS (default 512), SECS (default 10), IDLE (default 10),
# STATE_SETTINGS (a line added to `[state]` of the installation's signerd.toml before the
# runs, such as `cache_bytes = 16777216`), SIGNERCTL (default this tree's target/release/signerctl; give the same one to both
# binaries so only the daemon changes), LISTEN (default 127.0.0.1:50051).
# Prints one line per run: `LABEL run N signed S rss_kb R hwm_kb H`, then the idle line and
# the ratio of the RSS after the last run to the RSS after the first.
set -euo pipefail
label=$1; bin=$2; dir=$3
runs=${RUNS:-10}; clients=${CLIENTS:-512}; secs=${SECS:-10}; idle=${IDLE:-10}
listen=${LISTEN:-127.0.0.1:50051}
ctl=${SIGNERCTL:-$(dirname "$0")/../target/release/signerctl}
rm -rf "$dir"
"$bin" dev --dir "$dir" --log-level warn --listen "$listen" >"$dir.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then break; fi
  sleep 0.5
done
if [ -n "${STATE_SETTINGS:-}" ]; then
  # The installation exists now: restart it with the extra `[state]` settings.
  kill -TERM $pid; wait $pid || true
  sed -i "/^\[state\]/a $STATE_SETTINGS" "$dir/signerd.toml"
  "$bin" dev --dir "$dir" --log-level warn --listen "$listen" >>"$dir.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
fi
status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
echo "$label start rss_kb $(status VmRSS)"
first=
for i in $(seq 1 "$runs"); do
  out=$("$ctl" --dev "$dir" --as app bench --key dev-secp256k1 --concurrency "$clients" \
    --duration "$secs" 2>&1)
  n=$(echo "$out" | grep -oP '\d+(?= signed in)' | head -1)
  rss=$(status VmRSS)
  first=${first:-$rss}
  last=$rss
  echo "$label run $i signed ${n:-?} rss_kb $rss hwm_kb $(status VmHWM)"
done
sleep "$idle"
rss=$(status VmRSS)
echo "$label idle ${idle}s rss_kb $rss"
echo "$label RSS after run $runs / after run 1: $(echo "scale=3; $last / $first" | bc)"
