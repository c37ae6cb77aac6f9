#!/usr/bin/env bash
# Creates a SoftHSM2 token for signerd development and tests.
#
#   hsm-config/create-softhsm-token.sh DIR [LABEL]
#
# Writes, under DIR (created, mode 0700):
#   softhsm2.conf   SoftHSM configuration whose token directory is DIR/tokens
#   tokens/         the token store
#   pin             the user PIN (random, mode 0600): point `pin_file` at it
#   so-pin          the security officer PIN (random, mode 0600)
# and prints the environment signerd and pkcs11-tool need:
#   SOFTHSM2_CONF=DIR/softhsm2.conf
#
# The PINs pass through softhsm2-util's command line, which other local users can see
# while it runs: this is for development and tests, never for a production token.
set -euo pipefail

dir=${1:?usage: create-softhsm-token.sh DIR [LABEL]}
label=${2:-signerd-dev}
here=$(cd "$(dirname "$0")" && pwd)

command -v softhsm2-util >/dev/null || {
  echo "softhsm2-util not found: install SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2)" >&2
  exit 1
}
if [ -e "$dir/tokens" ]; then
  echo "$dir/tokens already exists; refusing to overwrite a token store" >&2
  exit 1
fi

umask 077
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.template" >"$dir/softhsm2.conf"
od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$dir/pin"
od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$dir/so-pin"

SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
  --pin "$(cat "$dir/pin")" --so-pin "$(cat "$dir/so-pin")" >/dev/null

echo "SOFTHSM2_CONF=$dir/softhsm2.conf"
