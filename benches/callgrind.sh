#!/usr/bin/env bash
# benches/callgrind.sh — pgtenant's instructions per transaction under valgrind's callgrind,
# for before/after comparisons that the machine's load cannot blur (instruction counts do
# not depend on what else runs). Same setup as benches/compare.sh (benches/pair.sh: SCRAM
# clients, transaction mode, pool 20), pgtenant started under callgrind, then a fixed
# `pgbench -t N` per case, each in a fresh pgtenant process. The figure is the process's
# total instruction count divided by the transactions: it includes startup and the clients'
# logins (the same for every binary, and small next to N transactions).
#
# Each binary of PGTENANT_BINS (default: PGTENANT_BIN or a fresh release build) is run on
# the same cluster, one after the other.
#
# Environment:
#   BENCH_TX        transactions per client for "-S" cases (default 3000; TPC-B gets 1/5)
#   BENCH_CASES     only cases whose name matches this regex ("-S", "TPC-B", "-S 1 client")
#   PGTENANT_BINS   space-separated binaries to compare
#   BENCH_OUT       where the callgrind.out files go (default /tmp/pgtenant-callgrind)
#
# Usage: PGTENANT_BINS="/tmp/pgtenant-before target/release/pgtenant" benches/callgrind.sh
set -euo pipefail

BENCH_TX=${BENCH_TX:-3000}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_CASES=${BENCH_CASES:-'^(-S|TPC-B|-S 1 client)$'}
BENCH_OUT=${BENCH_OUT:-/tmp/pgtenant-callgrind}
PGTENANT_WORKERS=0
POOL_SIZE=20
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[callgrind] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
make_tmp callgrind
mkdir -p "$BENCH_OUT"
if [[ -n ${PGTENANT_BINS:-} ]]; then
    BINS=$PGTENANT_BINS
    PGTENANT_BIN=${BINS%% *}
else
    build_pgtenant
    BINS=$PGTENANT_BIN
fi
# shellcheck source=benches/pair.sh
source "$REPO/benches/pair.sh"
pair_cluster
# pair_start_pgtenant writes the config; the process it starts is replaced below.
pair_start_pgtenant
stop_pid "$PGT_PID" TERM
PGT_PID=""

CASES=(
    "-S|-S -c 4 -j 1|$BENCH_TX"
    "TPC-B|-c 4 -j 1|$((BENCH_TX / 5))"
    "-S 1 client|-S -c 1 -j 1|$BENCH_TX"
)

printf '%-12s | %-40s | %12s | %8s | %10s\n' case binary instructions tx "Ir per tx"
for spec in "${CASES[@]}"; do
    IFS='|' read -r name args per_client <<<"$spec"
    [[ $name =~ $BENCH_CASES ]] || continue
    for bin in $BINS; do
        out="$BENCH_OUT/callgrind.$(basename "$bin").${name// /_}.out"
        RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$bin" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
        PGT_PID=$!
        wait_ready "$PGT_PORT" bench.bench "$PGT_PID" "$TMP/pgtenant.log"
        # shellcheck disable=SC2086
        res=$("$PGBENCH" -n $args -t "$per_client" -h 127.0.0.1 -p "$PGT_PORT" -U bench.bench bench 2>&1) ||
            { printf '%s\n' "$res" >&2; die "pgbench failed"; }
        tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$res")
        kill -INT "$PGT_PID"
        wait "$PGT_PID" 2>/dev/null || true
        PGT_PID=""
        ir=$(sed -n 's/^summary: \([0-9]*\)/\1/p' "$out" | head -1)
        [[ -n $ir ]] || ir=$(sed -n 's/^totals: \([0-9]*\)/\1/p' "$out" | head -1)
        printf '%-12s | %-40s | %12s | %8s | %10.0f\n' "$name" "$bin" "$ir" "$tx" "$(echo "$ir / $tx" | bc -l)"
    done
done
