#!/usr/bin/env bash
# benches/compare.sh — issue 14's reference bench: pgbench through pgtenant vs PgBouncer 1.25
# vs direct PostgreSQL, with each proxy's own CPU time per transaction.
#
# One run does everything:
#   1. builds pgtenant in release mode (or uses $PGTENANT_BIN),
#   2. starts a throwaway PostgreSQL cluster in a temp dir (SCRAM over TCP),
#   3. `pgbench -i -s 10` the bench database,
#   4. starts pgtenant and PgBouncer 1.25+ in transaction mode, pool 20, both with SCRAM
#      client authentication (PgBouncer with max_prepared_statements, so -M prepared works),
#   5. runs the cases against direct Postgres, pgtenant and PgBouncer in BENCH_ROUNDS
#      interleaved rounds (round 1: every case on every target, then round 2 ...), reading
#      each proxy's utime+stime from /proc/PID/stat around every run,
#   6. prints per case and target: TPS (mean of the rounds), latency, the proxy's CPU µs per
#      transaction (its CPU time over all rounds / transactions over all rounds), the user
#      part of it (its own code and libraries; the rest is the kernel's work for it, which
#      is about the same for both proxies: same system calls), and the ratios pgtenant /
#      PgBouncer.
# Everything it started is stopped and the temp dir removed on exit.
#
# CPU per transaction is the steadier figure on a small shared machine (TPS moves with
# whatever else runs; a proxy's CPU time per transaction much less), and the one that
# decides throughput on a bigger machine.
#
# Environment:
#   BENCH_SECONDS     seconds per pgbench run (default 8)
#   BENCH_ROUNDS      interleaved rounds (default 2)
#   BENCH_SCALE       pgbench -i scale factor (default 10)
#   PGTENANT_BIN      use this pgtenant binary instead of building one
#   PGTENANT_WORKERS  [proxy] workers for pgtenant (default 0 = automatic)
#   PGBOUNCER         the PgBouncer binary (default: `pgbouncer` in PATH, else
#                     /opt/pgbouncer-1.25/bin/pgbouncer as built by
#                     ../shared/anchors/build-pgbouncer.sh); must be 1.25 or newer: an
#                     explicit older one is refused, an older one found in PATH is skipped
#   BENCH_TARGETS     targets to run (default "direct pgtenant pgbouncer")
#   BENCH_CASES       only run cases whose name matches this regex (e.g. '^-S$')
#   BENCH_KEEP_LOGS   a directory to copy every log (pgbench, servers) to before cleanup
#
# Usage: benches/compare.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-8}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_TARGETS=${BENCH_TARGETS:-"direct pgtenant pgbouncer"}
PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
POOL_SIZE=20
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Shared helpers: PostgreSQL binaries, running as the postgres user, free ports,
# the temp dir and its cleanup, the throwaway cluster, proxy CPU time.
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------------------
# Temp dir and cleanup.
# ---------------------------------------------------------------------------
make_tmp bench

# ---------------------------------------------------------------------------
# 1. pgtenant and PgBouncer binaries.
# ---------------------------------------------------------------------------
build_pgtenant
PGBOUNCER_BIN=""
[[ " $BENCH_TARGETS " == *" pgbouncer "* ]] && find_pgbouncer 1.25

# ---------------------------------------------------------------------------
# 2. Throwaway PostgreSQL cluster (SCRAM over TCP) with the pgbench database, then the two
#    proxies configured alike (benches/pair.sh).
# ---------------------------------------------------------------------------
# shellcheck source=benches/pair.sh
source "$REPO/benches/pair.sh"
pair_cluster
[[ " $BENCH_TARGETS " == *" pgtenant "* ]] && pair_start_pgtenant
[[ -n $PGBOUNCER_BIN ]] && pair_start_pgbouncer

# ---------------------------------------------------------------------------
# 3. The benchmark cases, in interleaved rounds.
# ---------------------------------------------------------------------------
# name|pgbench options
CASES=(
    "-S|-S -c 16 -j 2"
    "-S -M prepared|-S -M prepared -c 16 -j 2"
    "TPC-B|-c 16 -j 2"
    "-S -C|-S -C -c 16 -j 2"
    "-S 1 client|-S -c 1 -j 1"
    "-S -M extended|-S -M extended -c 16 -j 2"
)
TARGETS=()
for t in direct pgtenant pgbouncer; do
    [[ " $BENCH_TARGETS " == *" $t "* ]] || continue
    [[ $t == pgtenant && -z $PGT_PID ]] && continue
    [[ $t == pgbouncer && -z $PGB_PID ]] && continue
    TARGETS+=("$t")
done

# Connection options and the proxy's pid per target.
target_conn() {
    case $1 in
        direct)    echo "-h 127.0.0.1 -p $PG_PORT -U bench" ;;
        pgtenant)  echo "-h 127.0.0.1 -p $PGT_PORT -U bench.bench" ;;
        pgbouncer) echo "-h 127.0.0.1 -p $PGB_PORT -U bench" ;;
    esac
}
target_pid() {
    case $1 in
        pgtenant)  echo "$PGT_PID" ;;
        pgbouncer) echo "$PGB_PID" ;;
        *)         echo "" ;;
    esac
}

# Before every run, do pgbench's own housekeeping directly (vacuum the small
# tables, empty pgbench_history) and checkpoint, so each run starts from the
# same state and can use -n whatever it goes through.
prepare() {
    su_sql -d bench -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
        -c 'TRUNCATE pgbench_history' -c 'CHECKPOINT' >/dev/null
}

# Sums over the rounds, per case/target: TPS, latency, transactions, proxy CPU ticks.
declare -A TPS_SUM LAT_SUM RUNS XACTS TICKS UTICKS FAIL TPS_LIST
FAILED_RUNS=0
n=0
for round in $(seq 1 "$BENCH_ROUNDS"); do
    for c in "${CASES[@]}"; do
        name=${c%%|*}
        opts=${c#*|}
        [[ -n ${BENCH_CASES:-} && ! $name =~ $BENCH_CASES ]] && continue
        for t in "${TARGETS[@]}"; do
            n=$((n + 1))
            k=$name/$t
            out=$TMP/pgbench-$n-$t.log
            pid=$(target_pid "$t")
            prepare
            log "round $round: $name -> $t (pgbench -n $opts -T $BENCH_SECONDS)"
            cpu0=$(cpu_ticks "$pid") user0=$(user_ticks "$pid")
            # shellcheck disable=SC2046,SC2086
            if ! "$PGBENCH" -n $opts -T "$BENCH_SECONDS" $(target_conn "$t") bench >"$out" 2>&1; then
                log "pgbench exited non-zero for '$name' -> $t"
                show_log "$out" 15
                FAILED_RUNS=$((FAILED_RUNS + 1))
            fi
            cpu1=$(cpu_ticks "$pid") user1=$(user_ticks "$pid")
            # tps = 1234.5 (without initial connection time)   -- or, with -C,
            # tps = 1234.5 (including reconnection times)
            tps=$(awk '/^tps = / {print $3; exit}' "$out")
            lat=$(awk '/^latency average = / {print $4; exit}' "$out")
            xacts=$(awk '/^number of transactions actually processed: / {print $6; exit}' "$out")
            fail=$(awk -F'[:(]' '/^number of failed transactions/ {gsub(/ /,"",$2); print $2; exit}' "$out")
            if [[ -z $tps || -z $xacts ]]; then
                log "could not parse tps for '$name' -> $t"
                show_log "$out" 15
                continue
            fi
            TPS_SUM[$k]=$(awk -v a="${TPS_SUM[$k]:-0}" -v b="$tps" 'BEGIN { print a + b }')
            LAT_SUM[$k]=$(awk -v a="${LAT_SUM[$k]:-0}" -v b="${lat:-0}" 'BEGIN { print a + b }')
            RUNS[$k]=$(( ${RUNS[$k]:-0} + 1 ))
            XACTS[$k]=$(( ${XACTS[$k]:-0} + xacts ))
            FAIL[$k]=$(( ${FAIL[$k]:-0} + ${fail:-0} ))
            TPS_LIST[$k]+="${TPS_LIST[$k]:+/}$(printf '%.0f' "$tps")"
            [[ -n $cpu0 && -n $cpu1 ]] && TICKS[$k]=$(( ${TICKS[$k]:-0} + cpu1 - cpu0 ))
            [[ -n $user0 && -n $user1 ]] && UTICKS[$k]=$(( ${UTICKS[$k]:-0} + user1 - user0 ))
            log "  $(printf '%.1f' "$tps") tps, $xacts transactions${pid:+, proxy CPU $(( (cpu1 - cpu0) * 1000 / CLK_TCK )) ms}"
        done
    done
done
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
# 4. The table.
# ---------------------------------------------------------------------------
ratio() { # a / b with 2 decimals, "-" when either is missing
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
mean() { # sum / runs with N decimals, "-" when missing
    awk -v s="${1:-}" -v r="${2:-}" -v d="$3" 'BEGIN { if (s == "" || r == "" || r + 0 == 0) print "-"; else printf("%." d "f", s / r) }'
}
cpu_us_per_tx() { # ticks xacts -> µs of proxy CPU per transaction
    awk -v t="${1:-}" -v x="${2:-}" -v hz="$CLK_TCK" 'BEGIN { if (t == "" || x == "" || x + 0 == 0) print "-"; else printf "%.1f", t * 1e6 / hz / x }'
}

echo
echo "pgbench -T $BENCH_SECONDS x $BENCH_ROUNDS interleaved rounds, scale $BENCH_SCALE, pool $POOL_SIZE (transaction mode)," \
    "SCRAM clients; pgtenant workers=$PGTENANT_WORKERS; ${PGBOUNCER_VERSION:-no PgBouncer}"
echo "$(nproc) cores, load avg at the end $LOADAVG"
fmt_row='%-15s | %-9s | %9s | %-13s | %8s | %9s | %9s | %9s | %8s | %8s | %8s | %6s\n'
# shellcheck disable=SC2059
printf "$fmt_row" case target TPS "TPS by round" "lat ms" "CPU us/tx" "user us/tx" "vs direct" "TPS/pgb" "CPU/pgb" "user/pgb" failed
printf '%s\n' "----------------+-----------+-----------+---------------+----------+-----------+-----------+-----------+----------+----------+----------+-------"
for c in "${CASES[@]}"; do
    name=${c%%|*}
    [[ -n ${BENCH_CASES:-} && ! $name =~ $BENCH_CASES ]] && continue
    for t in "${TARGETS[@]}"; do
        k=$name/$t
        kb=$name/pgbouncer
        tps=$(mean "${TPS_SUM[$k]:-}" "${RUNS[$k]:-}" 1)
        cpu=$(cpu_us_per_tx "${TICKS[$k]:-}" "${XACTS[$k]:-}")
        user=$(cpu_us_per_tx "${UTICKS[$k]:-}" "${XACTS[$k]:-}")
        vs_tps="" vs_cpu="" vs_user=""
        if [[ $t == pgtenant && -n $PGB_PID ]]; then
            vs_tps=$(ratio "$tps" "$(mean "${TPS_SUM[$kb]:-}" "${RUNS[$kb]:-}" 1)")
            vs_cpu=$(ratio "$cpu" "$(cpu_us_per_tx "${TICKS[$kb]:-}" "${XACTS[$kb]:-}")")
            vs_user=$(ratio "$user" "$(cpu_us_per_tx "${UTICKS[$kb]:-}" "${XACTS[$kb]:-}")")
        fi
        # shellcheck disable=SC2059
        printf "$fmt_row" "$name" "$t" "$tps" "${TPS_LIST[$k]:--}" "$(mean "${LAT_SUM[$k]:-}" "${RUNS[$k]:-}" 3)" \
            "$cpu" "$user" "$(ratio "$tps" "$(mean "${TPS_SUM[$name/direct]:-}" "${RUNS[$name/direct]:-}" 1)")" \
            "$vs_tps" "$vs_cpu" "$vs_user" "${FAIL[$k]:--}"
    done
done
echo "TPS: mean over the rounds; CPU us/tx: the proxy's utime+stime (/proc/PID/stat) over all rounds"
echo "per transaction, user us/tx: its utime alone (its own code; the rest is the kernel's work for it);"
echo "TPS/pgb, CPU/pgb, user/pgb: pgtenant / PgBouncer (TPS: higher is better; CPU: lower is better)."
echo

# Anything pgtenant logged at warn or above during the runs.
if [[ -s $TMP/pgtenant.log ]]; then
    log "pgtenant logged $(wc -l <"$TMP/pgtenant.log") line(s) at warn+; last ones:"
    tail -n 5 "$TMP/pgtenant.log" >&2
fi
[[ $FAILED_RUNS -eq 0 ]] || { log "$FAILED_RUNS pgbench run(s) failed"; exit 1; }
