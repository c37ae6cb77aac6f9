#!/usr/bin/env bash
# What the attestation of every answered group (docs/audit-log.md, "Attestation: nothing is
# answered before a checkpoint covers it") costs, per audit-key backend: two signerd binaries
# (NEW and BASE, e.g. the release before attestation) run alternately on the same
# installation, each run on a fresh audit log and state store, loaded by this tree's
# signerctl (so only the daemon changes).
#
#   scripts/bench-attest.sh WORKDIR NEW_SIGNERD BASE_SIGNERD [soft] [pkcs11] [vault]
#
# For each backend named (default: all three), the audit checkpoint key lives in that backend
# (`[audit] signing_key_backend`), and so do the client keys (a held audit key needs the same
# `keys.backend`):
#   soft    `signerd dev`'s installation; load: EIP-191 messages for `dev-secp256k1`
#   pkcs11  `signerd dev --backend pkcs11` (a SoftHSM2 token); the audit key is generated in
#           the token by the first start; load: EIP-191 messages for `dev-secp256k1`
#   vault   an OpenBao dev server (`bao server -dev`, in memory) with transit; the audit key is
#           a transit key created by the first start; load: `SignDigest` for the transit
#           Ed25519 key `dev-ed25519`
# Each run: start the daemon on an empty `audit` and `state`, 2 s of warm-up at 64 clients,
# then SECS seconds at 64 clients (throughput), then SECS seconds at 1 client with the load
# generator pinned to core LG_CPU (latency). Around each phase it reads the daemon's
# utime + stime from /proc/<pid>/stat and the audit directory's records (lines) and bytes.
# Every run is one line of WORKDIR/results.tsv; the summary at the end gives per backend the
# median and the mean of each figure for NEW and BASE, and the ratios NEW / BASE.
#
# Environment: ROUNDS (default 3; each round runs both binaries, the order alternating from
# round to round), SECS (default 8), LG_CPU (default 1), SIGNERCTL (default this tree's
# target/release/signerctl), PORT (signerd, default 50161), BAO_PORT (default 8261), BAO
# (default `bao`). Needs SoftHSM2 for pkcs11, OpenBao's `bao` for vault, python3, jq, bc, taskset.
set -euo pipefail
work=$1; new=$(realpath "$2"); base=$(realpath "$3"); shift 3
backends=("$@")
if [ ${#backends[@]} -eq 0 ]; then backends=(soft pkcs11 vault); fi
rounds=${ROUNDS:-3}; secs=${SECS:-8}; lg_cpu=${LG_CPU:-1}
port=${PORT:-50161}; bao_port=${BAO_PORT:-8261}; bao=${BAO:-bao}
ctl=$(realpath "${SIGNERCTL:-$(dirname "$0")/../target/release/signerctl}")
hz=$(getconf CLK_TCK)
mkdir -p "$work"
work=$(realpath "$work")
results=$work/results.tsv
printf 'backend\tdaemon\tround\tc64_signed\tc64_per_s\tc64_cpu_us\tc64_records\tc64_bytes\tc1_signed\tc1_per_s\tc1_p50_ms\tc1_p99_ms\tc1_cpu_us\tc1_records\tc1_bytes\n' >"$results"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { # FILE TEXT
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

# A `signerd dev` installation in DIR (created by NEW, stopped once it listens).
dev_install() { # DIR [dev options]
  local dir=$1; shift
  "$new" dev --dir "$dir" --listen "127.0.0.1:$port" "$@" >"$dir.first.log" 2>&1 &
  local p=$!
  wait_for "$dir.first.log" "listening"
  kill -TERM "$p"; wait "$p" 2>/dev/null || true
}

# DIR/signerd.toml with the audit key held by BACKEND (`soft`: unchanged). It stays the
# configuration `signerctl --dev DIR` reads.
held_audit_key() { # DIR BACKEND
  python3 - "$1" "$2" <<'PY'
import sys, pathlib
d, backend = pathlib.Path(sys.argv[1]), sys.argv[2]
text = (d / "signerd.toml").read_text()
audit = '[audit]\ndir = "audit"\nsigning_key_dir = "audit-key"\norigin = "signerd-dev/audit"\n'
assert text.count(audit) == 1, "the dev configuration changed shape"
if backend != "soft":
    text = text.replace('signing_key_passphrase_file = "keystore.pass"\n', "").replace(
        audit, '[audit]\ndir = "audit"\norigin = "signerd-dev/audit"\n'
        'signing_key_backend = "%s"\n' % backend)
(d / "signerd.toml").write_text(text)
PY
}

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
records() { cat "$1"/audit/segment-*.jsonl | wc -l; }
bytes() { cat "$1"/audit/segment-*.jsonl | wc -c; }
field() { jq -c "$1"; }

run_one() { # BACKEND LABEL BIN DIR KEY ROUND
  local backend=$1 label=$2 bin=$3 dir=$4 key=$5 round=$6
  rm -rf "$dir/audit" "$dir/state"
  local log=$work/$backend-$label-$round.log
  "$bin" run --config "$dir/signerd.toml" --log-level warn >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local ok=
  for _ in $(seq 1 120); do
    if "$ctl" --dev "$dir" --as app keys list >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  if [ -z "$ok" ]; then echo "$label did not start:" >&2; cat "$log" >&2; exit 1; fi
  "$ctl" --dev "$dir" --as app bench --key "$key" --concurrency 64 --duration 2 >/dev/null
  local t0 r0 b0 t1 r1 b1 t2 r2 b2 out64 out1
  t0=$(cpu "$pid"); r0=$(records "$dir"); b0=$(bytes "$dir")
  out64=$("$ctl" --dev "$dir" --as app --json bench --key "$key" --concurrency 64 --duration "$secs")
  t1=$(cpu "$pid"); r1=$(records "$dir"); b1=$(bytes "$dir")
  out1=$(taskset -c "$lg_cpu" "$ctl" --dev "$dir" --as app --json bench --key "$key" \
    --concurrency 1 --duration "$secs")
  t2=$(cpu "$pid"); r2=$(records "$dir"); b2=$(bytes "$dir")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  unset 'pids[-1]'
  local n64 n1 e64 e1
  n64=$(field .ok <<<"$out64"); n1=$(field .ok <<<"$out1")
  e64=$(field .errors <<<"$out64"); e1=$(field .errors <<<"$out1")
  if [ "$e64" != "{}" ] || [ "$e1" != "{}" ]; then
    echo "$backend $label round $round: errors: $e64 $e1" >&2; exit 1
  fi
  printf '%s\t%s\t%s\t%s\t%.0f\t%.1f\t%.3f\t%.1f\t%s\t%.0f\t%.3f\t%.3f\t%.1f\t%.3f\t%.1f\n' \
    "$backend" "$label" "$round" \
    "$n64" "$(field .throughput_per_s <<<"$out64")" \
    "$(echo "($t1 - $t0) * 1000000 / $hz / $n64" | bc -l)" \
    "$(echo "($r1 - $r0) / $n64" | bc -l)" "$(echo "($b1 - $b0) / $n64" | bc -l)" \
    "$n1" "$(field .throughput_per_s <<<"$out1")" \
    "$(field .latency_ms.p50 <<<"$out1")" "$(field .latency_ms.p99 <<<"$out1")" \
    "$(echo "($t2 - $t1) * 1000000 / $hz / $n1" | bc -l)" \
    "$(echo "($r2 - $r1) / $n1" | bc -l)" "$(echo "($b2 - $b1) / $n1" | bc -l)" \
    | tee -a "$results"
}

for backend in "${backends[@]}"; do
  dir=$work/$backend
  rm -rf "$dir"
  unset SOFTHSM2_CONF
  case $backend in
    soft)
      dev_install "$dir"
      key=dev-secp256k1
      ;;
    pkcs11)
      dev_install "$dir" --backend pkcs11
      export SOFTHSM2_CONF=$dir/hsm/softhsm2.conf
      key=dev-secp256k1
      ;;
    vault)
      mkdir -p "$dir.bao"
      "$bao" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" \
        >"$dir.bao/bao.log" 2>&1 &
      pids+=($!)
      wait_for "$dir.bao/bao.log" "Development mode"
      BAO_ADDR=http://127.0.0.1:$bao_port BAO_TOKEN=root "$bao" secrets enable transit >/dev/null
      BAO_ADDR=http://127.0.0.1:$bao_port BAO_TOKEN=root "$bao" write -f transit/keys/signerd-wrap \
        >/dev/null
      dev_install "$dir"
      (umask 077; printf 'root\n' >"$dir/vault.token")
      python3 - "$dir" "http://127.0.0.1:$bao_port" <<'PY'
import sys, pathlib
d = pathlib.Path(sys.argv[1]); text = (d / "signerd.toml").read_text()
soft = 'backend = "soft"\n\n[keys.soft]\ndir = "keys"\npassphrase_file = "keystore.pass"\n'
assert soft in text, "the dev configuration changed shape"
vault = ('backend = "vault"\n\n[keys.vault]\naddress = "%s"\nwrapping_key = "signerd-wrap"\n'
         'wrapped_dir = "wrapped"\ntoken_file = "vault.token"\n' % sys.argv[2])
(d / "signerd.toml").write_text(text.replace(soft, vault))
PY
      held_audit_key "$dir" vault
      "$ctl" keys generate --backend vault --config "$dir/signerd.toml" --id dev-ed25519 \
        --algorithm ed25519 >/dev/null
      key=dev-ed25519
      ;;
    *) echo "unknown backend: $backend" >&2; exit 2 ;;
  esac
  if [ "$backend" != vault ]; then held_audit_key "$dir" "$backend"; fi
  for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then order=(base new); else order=(new base); fi
    for label in "${order[@]}"; do
      if [ "$label" = new ]; then bin=$new; else bin=$base; fi
      run_one "$backend" "$label" "$bin" "$dir" "$key" "$round"
    done
  done
  if [ "$backend" = vault ]; then kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; fi
done

python3 - "$results" <<'PY'
import csv, sys, statistics as st
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = [("c64_per_s", "signed/s, 64 clients"), ("c64_cpu_us", "daemon CPU µs/request, 64"),
        ("c64_records", "records/request, 64"), ("c64_bytes", "log bytes/request, 64"),
        ("c1_per_s", "signed/s, 1 client"), ("c1_p50_ms", "p50 ms, 1 client"),
        ("c1_p99_ms", "p99 ms, 1 client"), ("c1_cpu_us", "daemon CPU µs/request, 1"),
        ("c1_records", "records/request, 1"), ("c1_bytes", "log bytes/request, 1")]
for backend in dict.fromkeys(r["backend"] for r in rows):
    n = sum(r["backend"] == backend and r["daemon"] == "new" for r in rows)
    print(f"== {backend}: {n} runs of each; median (and mean) of the runs, ratio new / base")
    print(f"{'':28} {'base':>9} {'new':>9} {'ratio':>6} {'mean base':>10} {'mean new':>9} {'ratio':>6}")
    for c, name in cols:
        v = {d: [float(r[c]) for r in rows if r["backend"] == backend and r["daemon"] == d]
             for d in ("base", "new")}
        md = {d: st.median(x) for d, x in v.items()}
        mn = {d: st.mean(x) for d, x in v.items()}
        print(f"{name:28} {md['base']:9.3f} {md['new']:9.3f} {md['new'] / md['base']:6.3f}"
              f" {mn['base']:10.3f} {mn['new']:9.3f} {mn['new'] / mn['base']:6.3f}")
PY
