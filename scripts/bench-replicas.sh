#!/bin/bash
# Replicas on PostgreSQL against the embedded store, in one session:
#   1. one signerd on the embedded sled store (the baseline),
#   2. the same signerd on PostgreSQL,
#   3. three replicas on that PostgreSQL, loaded together (`signerctl bench` spreads its clients
#      over the three endpoints).
# Each run: 2 s of warm-up, then DURATION s with CONCURRENCY clients (closed loop), signing
# EIP-191 messages with the development secp256k1 key. It prints signerctl's report, the
# daemons' CPU per signed request (utime + stime from /proc/<pid>/stat) and, on PostgreSQL, the
# database round trips per signed request (signerd_state_db_round_trips_total).
#
#   scripts/bench-replicas.sh DIR [DURATION] [CONCURRENCY]
#
# DIR is removed first. PostgreSQL is a throwaway cluster in DIR/pg (initdb and pg_ctl from
# PATH or /usr/lib/postgresql/*/bin; run as the `postgres` user when this runs as root), on
# loopback, with Debian's defaults (fsync and synchronous_commit on).
set -eu
dir=$1; dur=${2:-10}; conc=${3:-64}
root="$(cd "$(dirname "$0")/.." && pwd)"
signerd=${SIGNERD:-$root/target/release/signerd}
ctl=${SIGNERCTL:-$root/target/release/signerctl}
hz=$(getconf CLK_TCK)

initdb=$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)
[ -n "$initdb" ] || { echo "no initdb: install PostgreSQL (Debian: apt-get install postgresql)" >&2; exit 1; }
pgbin=$(dirname "$(readlink -f "$initdb")")
as_pg() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }

rm -rf "$dir"; mkdir -p "$dir/pg"; chmod 711 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pg"
superpw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
pgpw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$superpw" > "$dir/pg/super.pw"; [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pg/super.pw"
as_pg "$pgbin/initdb" -D "$dir/pg/data" -U postgres -A scram-sha-256 --pwfile "$dir/pg/super.pw" >"$dir/pg/initdb.log"
pgport=$((20000 + RANDOM % 10000))
as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
  -o "-p $pgport -h 127.0.0.1 -c unix_socket_directories=''" start >/dev/null
dirs_to_stop=("$dir/pg/data")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  as_pg "$pgbin/pg_ctl" -D "${dirs_to_stop[0]}" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
PGPASSWORD=$superpw "$pgbin/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -d postgres \
  -c "CREATE ROLE signerd LOGIN PASSWORD '$pgpw'" -c "CREATE DATABASE signerd OWNER signerd"
printf '%s\n' "$pgpw" > "$dir/pg.pw"; chmod 600 "$dir/pg.pw"

# The development installation (certificates, keys, signed policy): made by `signerd dev`.
dev="$dir/dev"
"$signerd" dev --dir "$dev" --listen 127.0.0.1:50150 --log-level warn >"$dir/dev.log" 2>&1 &
devpid=$!
for _ in $(seq 1 120); do
  if "$ctl" --dev "$dev" --as app keys list >/dev/null 2>&1; then break; fi
  sleep 0.5
done
kill -TERM $devpid; wait $devpid || true

# config NAME LISTEN_PORT METRICS_PORT [REPLICA]: sled without REPLICA, else PostgreSQL.
config() {
  local name=$1 port=$2 mport=$3 replica=${4:-}
  python3 - "$dev/signerd.toml" "$dev/$name.toml" "$port" "$mport" "$replica" "$pgport" <<'EOF'
import re, sys
src, dst, port, mport, replica, pgport = sys.argv[1:]
s = open(src).read()
s = re.sub(r'(?m)^listen = "[^"]*"', f'listen = "127.0.0.1:{port}"', s, count=1)
s += f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
if replica:
    s = s.replace('[state]\ndir = "state"\n', f'''[state]
backend = "postgres"

[state.postgres]
host = "127.0.0.1"
port = {pgport}
user = "signerd"
dbname = "signerd"
password_file = "../pg.pw"
tls = "disable"
pool_size = 16
''', 1)
    s = s.replace('[audit]\ndir = "audit"\n', f'[audit]\ndir = "audit-{replica}"\n', 1)
    s = s.replace('origin = "signerd-dev/audit"', f'origin = "replica-{replica}.bench/signerd"', 1)
    s = s.replace('[policy]\nfile = "policy.toml"\n', f'[policy]\nfile = "policy.toml"\nsignatures = "policy-{replica}.sig"\n', 1)
    assert 'backend = "postgres"' in s and f'replica-{replica}' in s and f'policy-{replica}.sig' in s, s
open(dst, 'w').write(s)
EOF
  chmod 600 "$dev/$name.toml"
  if [ -n "$replica" ]; then
    "$ctl" policy sign --config "$dev/$name.toml" --key "$dev/policy-admin.key" --name dev-admin \
      --yes "$dev/policy.toml" >/dev/null
  fi
}
config sled 50151 9561
for i in 0 1 2; do config "pg-$i" $((50160 + i)) $((9570 + i)) "$i"; done

start() { # NAME -> pid in $started
  "$signerd" run --config "$dev/$1.toml" --log-level warn >"$dir/$1.log" 2>&1 &
  started=$!
  pids+=("$started")
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The PostgreSQL server's processes (postmaster and backends), together.
pgcpu() { local t=0 p; for p in $(pgrep -u postgres -f "postgres"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
trips() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^signerd_state_db_round_trips_total/ {print $2; f=1} END {if (!f) print 0}'; }
wait_up() {
  for _ in $(seq 1 120); do
    if "$ctl" --dev "$dev" --as app --endpoint "https://127.0.0.1:$1" keys list >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  echo "no signerd on port $1" >&2; exit 1
}

# run LABEL "PIDS" "METRICS_PORTS" ENDPOINT_ARGS...
run() {
  local label=$1 rpids=$2 mports=$3; shift 3
  "$ctl" --dev "$dev" --as app "$@" bench --key dev-secp256k1 --concurrency "$conc" --duration 2 >/dev/null
  local t0=0 t1=0 r0=0 r1=0 p m g0 g1
  g0=$(pgcpu)
  for p in $rpids; do t0=$((t0 + $(cpu "$p"))); done
  for m in $mports; do r0=$((r0 + $(trips "$m"))); done
  local out; out=$("$ctl" --dev "$dev" --as app "$@" bench --key dev-secp256k1 --concurrency "$conc" --duration "$dur")
  for p in $rpids; do t1=$((t1 + $(cpu "$p"))); done
  g1=$(pgcpu)
  for m in $mports; do r1=$((r1 + $(trips "$m"))); done
  local n; n=$(echo "$out" | grep -oP '\d+(?= signed in)' | head -1)
  echo "== $label"
  echo "$out"
  echo "$label: daemons' CPU $(( (t1 - t0) * 1000 / hz )) ms, $(( (t1 - t0) * 1000000 / hz / n )) µs per signed request"
  if [ "$mports" != none ]; then
    echo "$label: $((r1 - r0)) database round trips, $(awk -v r=$((r1 - r0)) -v n="$n" 'BEGIN {printf "%.2f", r / n}') per signed request"
    echo "$label: PostgreSQL's CPU $(( (g1 - g0) * 1000 / hz )) ms, $(( (g1 - g0) * 1000000 / hz / n )) µs per signed request (backends that ended during the run are not counted)"
  fi
}

start sled; p=$started; wait_up 50151
run "sled, one instance" "$p" none --endpoint https://127.0.0.1:50151
kill -TERM "$p"; wait "$p" || true

start pg-0; p0=$started; wait_up 50160
run "postgres, one replica" "$p0" 9570 --endpoint https://127.0.0.1:50160
start pg-1; p1=$started; start pg-2; p2=$started; wait_up 50161; wait_up 50162
run "postgres, three replicas" "$p0 $p1 $p2" "9570 9571 9572" \
  --endpoint https://127.0.0.1:50160 --endpoint https://127.0.0.1:50161 --endpoint https://127.0.0.1:50162
