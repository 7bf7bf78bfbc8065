#!/usr/bin/env bash
# benches/profile.sh — where each proxy's CPU goes: syscalls per transaction (strace -c) and
# the top symbols (perf) of pgtenant and PgBouncer 1.25, under the same pgbench load and the
# same setup as benches/compare.sh (benches/pair.sh: SCRAM clients, transaction mode, pool 20).
#
# For each case (BENCH_CASES, default "-S" and TPC-B, 16 clients / 2 threads) and proxy:
#   1. `strace -c -f -p PID` during a pgbench run: every syscall's count divided by the
#      transactions pgbench completed (strace slows the proxy down; counts per transaction
#      hold, except epoll_wait's, which falls as more is ready per wake-up);
#   2. `perf record -e cpu-clock -p PID` (the software clock: this machine's VM has no
#      hardware counters) during another run: `perf report --no-children` top symbols, and
#      the proxy's CPU µs per transaction from /proc/PID/stat for that run.
# With BENCH_CALLGRAPH=1, perf also records DWARF call graphs (heavier) and the report shows
# callers of the top symbols.
# Outputs (reports and raw perf.data) go to BENCH_OUT.
#
# Environment:
#   BENCH_SECONDS     seconds per pgbench run (default 6)
#   BENCH_SCALE       pgbench -i scale factor (default 10)
#   BENCH_CASES       only cases whose name matches this regex (cases: "-S", "TPC-B",
#                     "-S -M prepared", "-S 1 client", "-S -C")
#   BENCH_OUT         directory for the reports (default /tmp/pgtenant-profile)
#   BENCH_CALLGRAPH   1: perf with DWARF call graphs
#   PGTENANT_BIN, PGTENANT_WORKERS, PGBOUNCER   as for benches/compare.sh
#
# Usage: benches/profile.sh        (as root: strace and perf attach to the proxies)
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-6}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_CASES=${BENCH_CASES:-'^(-S|TPC-B)$'}
BENCH_OUT=${BENCH_OUT:-/tmp/pgtenant-profile}
PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
POOL_SIZE=20
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[profile] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
command -v strace >/dev/null || die "strace not found (apt-get install strace)"
command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"
make_tmp profile
mkdir -p "$BENCH_OUT"

build_pgtenant
PGBOUNCER_BIN=""
find_pgbouncer 1.25
# shellcheck source=benches/pair.sh
source "$REPO/benches/pair.sh"
pair_cluster
pair_start_pgtenant
[[ -n $PGBOUNCER_BIN ]] && pair_start_pgbouncer

CASES=(
    "-S|-S -c 16 -j 2"
    "TPC-B|-c 16 -j 2"
    "-S -M prepared|-S -M prepared -c 16 -j 2"
    "-S 1 client|-S -c 1 -j 1"
    "-S -C|-S -C -c 16 -j 2"
)
TARGETS=(pgtenant)
[[ -n $PGB_PID ]] && TARGETS+=(pgbouncer)
target_conn() {
    case $1 in
        pgtenant)  echo "-h 127.0.0.1 -p $PGT_PORT -U bench.bench" ;;
        pgbouncer) echo "-h 127.0.0.1 -p $PGB_PORT -U bench" ;;
    esac
}
target_pid() { if [[ $1 == pgtenant ]]; then echo "$PGT_PID"; else echo "$PGB_PID"; fi; }
prepare() {
    su_sql -d bench -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
        -c 'TRUNCATE pgbench_history' -c 'CHECKPOINT' >/dev/null
}
# run_pgbench OPTS TARGET OUT: one pgbench run; prints the transactions it completed.
run_pgbench() {
    # shellcheck disable=SC2046,SC2086
    "$PGBENCH" -n $1 -T "$BENCH_SECONDS" $(target_conn "$2") bench >"$3" 2>&1 \
        || { show_log "$3" 10; die "pgbench failed"; }
    awk '/^number of transactions actually processed: / {print $6; exit}' "$3"
}

SUMMARY=$BENCH_OUT/summary.txt
: >"$SUMMARY"
for c in "${CASES[@]}"; do
    name=${c%%|*}
    opts=${c#*|}
    [[ $name =~ $BENCH_CASES ]] || continue
    slug=$(echo "$name" | tr -c 'A-Za-z0-9\n' '_')
    for t in "${TARGETS[@]}"; do
        pid=$(target_pid "$t")
        base=$BENCH_OUT/$slug-$t

        # 1. Syscalls per transaction.
        prepare
        log "$name -> $t: strace -c"
        strace -c -f -q -p "$pid" -o "$base.strace" &
        st=$!
        sleep 0.5
        xacts=$(run_pgbench "$opts" "$t" "$base.strace-pgbench.log")
        kill -INT "$st"; wait "$st" 2>/dev/null || true
        {
            echo "== $name -> $t: syscalls per transaction (strace -c -f, $xacts transactions)"
            # % time, seconds, usecs/call, calls, [errors], syscall
            awk -v x="$xacts" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
                    calls = $4; name = $NF; errs = (NF == 6) ? $5 : 0
                    printf "  %-16s %8.2f per tx  (%d errors)\n", name, calls / x, errs; total += calls }
                END { printf "  %-16s %8.2f per tx\n", "total", total / x }' "$base.strace"
        } >>"$SUMMARY"

        # 2. perf: top symbols and CPU per transaction.
        prepare
        log "$name -> $t: perf record"
        graph=()
        [[ ${BENCH_CALLGRAPH:-0} == 1 ]] && graph=(--call-graph dwarf,16384)
        perf record -q -e cpu-clock -F 2000 "${graph[@]}" -p "$pid" -o "$base.perf.data" >/dev/null 2>&1 &
        pf=$!
        sleep 0.5
        cpu0=$(cpu_ticks "$pid")
        xacts=$(run_pgbench "$opts" "$t" "$base.perf-pgbench.log")
        cpu1=$(cpu_ticks "$pid")
        kill -INT "$pf"; wait "$pf" 2>/dev/null || true
        perf report -i "$base.perf.data" --no-children --stdio --percent-limit 0.7 \
            --sort symbol 2>/dev/null >"$base.perf.txt" || true
        {
            echo "== $name -> $t: perf (cpu-clock), $xacts transactions," \
                "$(awk -v t=$((cpu1 - cpu0)) -v x="$xacts" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t * 1e6 / hz / x }') CPU us/tx (perf attached)"
            echo "  by object (kernel vs the proxy's own code and libraries):"
            perf report -i "$base.perf.data" --no-children --stdio --sort dso 2>/dev/null \
                | grep -E '^ +[0-9.]+%' | head -n 6
            echo "  top symbols:"
            grep -E '^ +[0-9.]+%' "$base.perf.txt" | head -n 40
        } >>"$SUMMARY"
    done
done
cat "$SUMMARY"
log "reports in $BENCH_OUT"
