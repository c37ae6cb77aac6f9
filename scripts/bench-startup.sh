#!/bin/bash
# Start-up time and memory against the audit log's size, with and without snapshots of derived
# state (docs/benchmarks.md, "Start-up").
#
#   [SEGMENT_BYTES=N] [RETENTION=DURATION] scripts/bench-startup.sh RECORDS DIR [SIGNERD_BIN_DIR]
#
# Snapshots are taken at segment seals, so the log must span several segments (the default
# `audit.max_segment_bytes` of 64 MiB holds about 100,000 generated records; SEGMENT_BYTES
# sets it for a smaller run). RETENTION sets `state.idempotency_retention` (default 30 days):
# every generated record is written now, so with the default the state store holds an answer
# for every generated request; a short retention stands for a log much older than it, whose
# requests left only expiry markers in the store.
# 1. `signerd dev --dir DIR` creates a development installation and is stopped once listening;
# 2. `signerctl audit generate` appends RECORDS realistic records to its log with the real
#    writer and audit key (fsync off);
# 3. start A reads the whole log (no snapshot exists yet); the daemon then builds a snapshot
#    in the background, and is stopped once the log holds an `audit.snapshot` record;
# 4. start B continues from that snapshot;
# 5. start C reads the whole log again (snapshots/ removed first).
# Each start is timed from exec to the "signerd listening" line (polled every 10 ms); its CPU
# (utime + stime) and peak RSS (VmHWM) are read from /proc when it listens. DIR is removed
# first and at the end (it holds the whole log: check `df` first, about 0.6 GB per million
# records).
set -eu
n=$1; dir=$2; bin=${3:-$(dirname "$0")/../target/release}
rm -rf "$dir"
log="$dir.log"
: >"$log"

wait_listening() { # pid out
  until grep -q "signerd listening" "$2"; do
    if ! kill -0 "$1" 2>/dev/null; then echo "signerd exited; see $log" >&2; exit 1; fi
    sleep 0.01
  done
}

start() { # label
  local out="$dir.out"
  : >"$out"
  local t0; t0=$(date +%s.%N)
  "$bin/signerd" dev --dir "$dir" --listen 127.0.0.1:0 --log-level info >"$out" 2>>"$log" &
  pid=$!
  wait_listening "$pid" "$out"
  local t1; t1=$(date +%s.%N)
  local hz; hz=$(getconf CLK_TCK)
  local cpu; cpu=$(awk -v hz="$hz" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")
  local rss; rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  printf '%s: %s records: listening after %.2f s, %s CPU-s, peak RSS %s MiB\n' \
    "$1" "$n" "$(echo "$t1 - $t0" | bc)" "$cpu" "$rss"
}

stop() {
  kill -TERM "$pid"
  wait "$pid" || true
}

start setup >/dev/null
stop
if [ -n "${SEGMENT_BYTES:-}" ]; then
  sed -i "/^\[audit\]/a max_segment_bytes = $SEGMENT_BYTES" "$dir/signerd.toml"
fi
if [ -n "${RETENTION:-}" ]; then
  sed -i "/^\[state\]/a idempotency_retention = \"$RETENTION\"" "$dir/signerd.toml"
fi
t0=$(date +%s.%N)
"$bin/signerctl" audit generate --config "$dir/signerd.toml" --records "$n"
echo "generated in $(echo "$(date +%s.%N) - $t0" | bc) s; log: $(du -sh "$dir/audit" | cut -f1)"

start "A full read (no snapshot yet)"
# The builder reads the whole log once, then records the snapshot.
until grep -q '"type":"audit.snapshot"' "$(ls "$dir"/audit/segment-*.jsonl | tail -1)"; do
  if ! kill -0 "$pid" 2>/dev/null; then echo "signerd exited; see $log" >&2; exit 1; fi
  sleep 0.5
done
stop
ls "$dir/audit/snapshots" | sed 's/^/snapshot: /'
start "B from the snapshot"
stop
rm -rf "$dir/audit/snapshots"
start "C full read (snapshots removed)"
stop
grep -h "snapshot not used\|continues from a snapshot\|no snapshot used" "$log" | sed 's/^/log: /' || true
rm -rf "$dir" "$dir.out"
