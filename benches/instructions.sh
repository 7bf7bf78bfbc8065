#!/usr/bin/env bash
# benches/instructions.sh — CPU instructions per transaction, counted by callgrind, for
# pgtenant builds side by side (and PgBouncer 1.25 when found).
#
# Instruction counts do not depend on what else the machine is doing, so this is the
# figure to compare two pgtenant builds (before/after a change) on a shared, noisy machine,
# or pgtenant against PgBouncer on the same load. Each target runs under
# `valgrind --tool=callgrind`, gets a warm-up pgbench run (pool connections opened, logins
# done), has its counters zeroed, serves the measured pgbench run, and is dumped: the
# instructions of that run divided by its transactions.
#
# Environment:
#   PGTENANT_BIN    the pgtenant binary (default: cargo build --release)
#   PGTENANT_BASE   a second pgtenant binary to compare with (e.g. a build of main)
#   PGBOUNCER       PgBouncer 1.25+ (default: found as compare.sh finds it; skipped if absent)
#   BENCH_TARGETS   targets to run (default "base pgtenant pgbouncer"; pgbouncer only when found).
#                   PgBouncer is not reached through callgrind_control (vgdb hangs on a
#                   single-threaded process asleep in epoll_wait here): each case runs it twice
#                   under callgrind, fresh each time and stopped so that it writes its counts,
#                   once for the warm-up alone and once for the warm-up and the measured run;
#                   the difference is the measured run's (startup and warm-up cancel out).
#   BENCH_TX        transactions per client in the measured run (default 1000)
#   BENCH_CLIENTS   pgbench clients (default 4)
#   BENCH_MODES     pgbench cases, ';'-separated pgbench options (default "-S;-S -M prepared;-N")
#   BENCH_SCALE     pgbench scale (default 1)
#   BENCH_KEEP_LOGS a directory to copy the logs and callgrind outputs (cg/) to, for
#                   callgrind_annotate
#
# Caveat: the count is not quite load-free. Each wake-up of pgtenant's event loop (tokio's
# park: epoll_wait, the timer wheel) costs ~1,100 instructions, and how many transactions
# one wake-up serves depends on timing: the same binary measured 3,033 and 5,650 wake-ups
# for the -S run on a quiet and a busy machine (±500 instructions/tx). Compare the rest
# with callgrind_annotate (BENCH_KEEP_LOGS) when totals differ by less than that.
#
# Usage: PGTENANT_BASE=/tmp/pgtenant-main benches/instructions.sh
set -euo pipefail

BENCH_SCALE=${BENCH_SCALE:-1}
BENCH_TX=${BENCH_TX:-1000}
BENCH_CLIENTS=${BENCH_CLIENTS:-4}
BENCH_MODES=${BENCH_MODES:-"-S;-S -M prepared;-N"}
POOL_SIZE=${POOL_SIZE:-4}
PGTENANT_WORKERS=1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[instructions] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
# shellcheck source=benches/pair.sh
source "$REPO/benches/pair.sh"

command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control is not installed (valgrind)"

make_tmp instructions cg
chmod 755 "$TMP"
mkdir -p "$TMP/cg" && chmod 777 "$TMP/cg"
build_pgtenant
REAL_PGTENANT=$PGTENANT_BIN

PGBOUNCER_BIN="" PGBOUNCER_VERSION=""
if find_pgbouncer 1.25 2>/dev/null; then :; fi

targets=${BENCH_TARGETS:-"base pgtenant pgbouncer"}

# wrap NAME BIN [VALGRIND_OPTION]: a script that runs BIN's `serve` (or PgBouncer itself)
# under callgrind and any other subcommand (hash-password, check-config) directly.
wrap() {
    local name=$1 bin=$2 opt=${3:-} w="$TMP/run-$1"
    cat >"$w" <<EOF
#!/bin/sh
case "\$1" in
  hash-password|check-config) exec "$bin" "\$@" ;;
esac
exec valgrind -q $opt --tool=callgrind --callgrind-out-file=$TMP/cg/$name.out "$bin" "\$@"
EOF
    chmod 755 "$w"
    echo "$w"
}

PGTENANT_BIN=$REAL_PGTENANT
pair_cluster

# measure NAME PORT USER PID: instructions per transaction for each case in BENCH_MODES.
declare -A RESULT
measure() {
    local name=$1 port=$2 user=$3 pid=$4 mode tx before after out
    IFS=';' read -ra modes <<<"$BENCH_MODES"
    for mode in "${modes[@]}"; do
        # shellcheck disable=SC2086
        "$PGBENCH" -n $mode -t 50 -c "$BENCH_CLIENTS" -h 127.0.0.1 -p "$port" -U "$user" bench \
            >"$TMP/warm-$name.log" 2>&1 || { show_log "$TMP/warm-$name.log"; die "warm-up failed"; }
        callgrind_control -z "$pid" >/dev/null
        # shellcheck disable=SC2086
        "$PGBENCH" -n $mode -t "$BENCH_TX" -c "$BENCH_CLIENTS" -h 127.0.0.1 -p "$port" -U "$user" bench \
            >"$TMP/run-$name.log" 2>&1 || { show_log "$TMP/run-$name.log"; die "pgbench failed"; }
        tx=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]}' "$TMP/run-$name.log")
        before=$(ls "$TMP/cg" | wc -l)
        callgrind_control -d "$pid" >/dev/null
        for _ in $(seq 1 100); do
            after=$(ls "$TMP/cg" | wc -l)
            [[ $after -gt $before ]] && break
            sleep 0.1
        done
        sleep 0.5
        out=$(ls -t "$TMP"/cg/"$name".out* | head -1)
        local ir
        ir=$(totals "$out")
        RESULT["$name|$mode"]=$(awk -v ir="$ir" -v tx="$tx" 'BEGIN { printf "%.0f", ir / tx }')
        log "$name $mode: $tx transactions, $ir instructions"
    done
}

# totals FILE: the instructions a callgrind output file counts.
totals() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

# measure_pgbouncer: PgBouncer's instructions per transaction, by difference (see BENCH_TARGETS).
measure_pgbouncer() {
    local real=$PGBOUNCER_BIN mode i=0 phase tx ir_warm ir_full
    IFS=';' read -ra modes <<<"$BENCH_MODES"
    for mode in "${modes[@]}"; do
        i=$((i + 1))
        for phase in warm full; do
            PGBOUNCER_BIN=$(wrap "pgbouncer-$i-$phase" "$real" --vgdb=no)
            pair_start_pgbouncer
            # shellcheck disable=SC2086
            "$PGBENCH" -n $mode -t 50 -c "$BENCH_CLIENTS" -h 127.0.0.1 -p "$PGB_PORT" -U bench bench \
                >"$TMP/warm-pgbouncer.log" 2>&1 || { show_log "$TMP/warm-pgbouncer.log"; die "warm-up failed"; }
            if [[ $phase == full ]]; then
                # shellcheck disable=SC2086
                "$PGBENCH" -n $mode -t "$BENCH_TX" -c "$BENCH_CLIENTS" -h 127.0.0.1 -p "$PGB_PORT" -U bench bench \
                    >"$TMP/run-pgbouncer.log" 2>&1 || { show_log "$TMP/run-pgbouncer.log"; die "pgbench failed"; }
                tx=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]}' "$TMP/run-pgbouncer.log")
            fi
            stop_pid "$PGB_PID" INT; PGB_PID=""
            [[ -s $TMP/cg/pgbouncer-$i-$phase.out ]] || die "PgBouncer wrote no callgrind counts"
        done
        ir_warm=$(totals "$TMP/cg/pgbouncer-$i-warm.out")
        ir_full=$(totals "$TMP/cg/pgbouncer-$i-full.out")
        RESULT["pgbouncer|$mode"]=$(awk -v a="$ir_full" -v b="$ir_warm" -v tx="$tx" 'BEGIN { printf "%.0f", (a - b) / tx }')
        log "pgbouncer $mode: $tx transactions, $((ir_full - ir_warm)) instructions"
    done
    PGBOUNCER_BIN=$real
}

for t in $targets; do
    case $t in
        base)
            [[ -n ${PGTENANT_BASE:-} ]] || continue
            PGTENANT_BIN=$(wrap base "$PGTENANT_BASE")
            pair_start_pgtenant
            measure base "$PGT_PORT" bench.bench "$PGT_PID"
            stop_pid "$PGT_PID" TERM; PGT_PID=""
            ;;
        pgtenant)
            PGTENANT_BIN=$(wrap pgtenant "$REAL_PGTENANT")
            pair_start_pgtenant
            measure pgtenant "$PGT_PORT" bench.bench "$PGT_PID"
            stop_pid "$PGT_PID" TERM; PGT_PID=""
            ;;
        pgbouncer)
            [[ -n $PGBOUNCER_BIN ]] || { log "no PgBouncer 1.25+ found: skipped"; continue; }
            measure_pgbouncer
            ;;
    esac
done

printf '\ninstructions per transaction (callgrind; pgbench -t %s -c %s, scale %s, pool %s, transaction mode, SCRAM clients)\n' \
    "$BENCH_TX" "$BENCH_CLIENTS" "$BENCH_SCALE" "$POOL_SIZE"
printf '%-18s %14s %14s %14s %12s %12s\n' case base pgtenant pgbouncer new/base new/pgb
IFS=';' read -ra modes <<<"$BENCH_MODES"
for mode in "${modes[@]}"; do
    b=${RESULT["base|$mode"]:-} n=${RESULT["pgtenant|$mode"]:-} p=${RESULT["pgbouncer|$mode"]:-}
    rb=$([[ -n $b && -n $n ]] && awk -v a="$n" -v b="$b" 'BEGIN { printf "%.3f", a / b }' || echo -)
    rp=$([[ -n $p && -n $n ]] && awk -v a="$n" -v b="$p" 'BEGIN { printf "%.3f", a / b }' || echo -)
    printf '%-18s %14s %14s %14s %12s %12s\n' "$mode" "${b:--}" "${n:--}" "${p:--}" "$rb" "$rp"
done
