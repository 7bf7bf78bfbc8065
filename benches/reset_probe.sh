#!/usr/bin/env bash
# benches/reset_probe.sh — runs benches/reset_probe.py (the wire-level facts a pipelined
# cross-tenant reset relies on) against a throwaway PostgreSQL cluster.
# Usage: benches/reset_probe.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[reset_probe] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
make_tmp reset-probe
init_cluster trust
start_cluster
python3 "$REPO/benches/reset_probe.py" "$PG_SOCK" "$PG_PORT"
