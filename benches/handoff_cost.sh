#!/usr/bin/env bash
# benches/handoff_cost.sh — what a cross-tenant handoff costs PostgreSQL, in instructions of
# the backend (callgrind: the same figure whatever else the machine runs). A throwaway
# cluster runs under `valgrind --tool=callgrind --trace-children=yes`; for each variant of
# benches/handoff_cost.py a session runs it N = 0 and N = BENCH_N times (after the same
# warm-up), and the backend's instruction difference over N is the cost of one iteration
# (the handoff plus a primary-key SELECT); the `select` variant is the SELECT alone.
#
# Environment:
#   BENCH_N           iterations (default 300)
#   BENCH_KEEP_LOGS   a directory to copy the backends' callgrind files to (callgrind_annotate)
#   BENCH_VARIANTS    variants to run (default "select handoff select_reseed guarded no_reseed";
#                   also appname_select, appname_set)
#
# Usage: benches/handoff_cost.sh   (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_N=${BENCH_N:-300}
BENCH_VARIANTS=${BENCH_VARIANTS:-"select handoff select_reseed guarded no_reseed"}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[handoff] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
make_tmp handoff
init_cluster trust
start_cluster
su_sql -d postgres -c "CREATE SCHEMA t1; CREATE SCHEMA t2;
  CREATE TABLE t1.pgbench_accounts (aid int PRIMARY KEY, abalance int);
  INSERT INTO t1.pgbench_accounts SELECT g, 0 FROM generate_series(1, 10000) g;
  CREATE TABLE t2.pgbench_accounts (LIKE t1.pgbench_accounts INCLUDING ALL);
  INSERT INTO t2.pgbench_accounts SELECT * FROM t1.pgbench_accounts; ANALYZE;" >/dev/null
stop_pid "$PG_PID" INT
CG="$TMP/cg"
mkdir -p "$CG" && chmod 777 "$CG"
log "restarting postgres under callgrind ..."
as_pg_bg "$TMP/postgres-cg.log" valgrind --tool=callgrind --trace-children=yes \
    --callgrind-out-file="$CG/cg.%p" "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" -k "$PG_SOCK" \
    -c listen_addresses=127.0.0.1 -c autovacuum=off
PG_PID=$BG_PID
for _ in $(seq 1 600); do
    "$PG_BIN/pg_isready" -q -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres && break
    sleep 0.2
done

# The instructions of the backend of a session that runs VARIANT N times: its callgrind file,
# complete once the session ended (each backend writes its own at exit).
run_one() { # run_one N VARIANT
    local pid file
    pid=$(python3 "$REPO/benches/handoff_cost.py" 127.0.0.1 "$PG_PORT" "$1" "$2") || die "variant $2 failed"
    file="$CG/cg.$pid"
    for _ in $(seq 1 300); do
        grep -q '^summary:' "$file" 2>/dev/null && break
        sleep 0.2
    done
    awk '/^summary:/ { print $2 }' "$file"
}

printf '%-14s %14s %14s\n' variant "instr/iter" "minus SELECT"
select_cost=
for v in $BENCH_VARIANTS; do
    zero=$(run_one 0 "$v") || exit 1
    many=$(run_one "$BENCH_N" "$v") || exit 1
    per=$(( (many - zero) / BENCH_N ))
    [[ $v == select ]] && select_cost=$per
    printf '%-14s %14d %14s\n' "$v" "$per" "${select_cost:+$(( per - select_cost ))}"
done
if [[ -n ${BENCH_KEEP_LOGS:-} ]]; then
    mkdir -p "$BENCH_KEEP_LOGS" && cp -r "$CG" "$BENCH_KEEP_LOGS/" && log "callgrind files copied to $BENCH_KEEP_LOGS/cg"
fi
