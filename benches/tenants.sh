#!/usr/bin/env bash
# benches/tenants.sh — pgtenant throughput for 1 tenant vs 100 tenants sharing one pool.
#
# What it measures: schema isolation with one shared login role. 100 tenants t0..t99
# live in one database (`shared`), each in its own schema tN, and all log in upstream as
# the same role `app`, so pgtenant gives them ONE pool of 20 server connections (the pool
# key is host, port, database, role). A server connection handed to a tenant other than
# the last one that used it must first get that tenant's search_path, so with many
# tenants most checkouts carry an extra set_config query. This script shows what that
# costs, at the same client count:
#
#   A  1 tenant     100 pgbench processes (-c 1 each) through pgtenant, all as app.t0
#   B  100 tenants  the same 100 processes through pgtenant, process i as app.t$i
#   B0 as B with tenant affinity turned off ([pool] affinity_hold = 0, set live on the
#                   console): every handoff between tenants pays the reset
#   C  direct       the same 100 processes straight to PostgreSQL as `app`, process i
#                   with options=-c search_path=t$i (no pooling: 100 backends)
#
# Each process runs a read-only custom script (a primary-key lookup in
# pgbench_accounts, 10000 rows per schema) for BENCH_SECONDS. The table shows per case:
#   total TPS   the sum of the 100 pgbench "tps = X (without initial connection time)",
#   steady TPS  transactions per second while all 100 clients were running at once,
#               from pgbench's per-transaction logs (-l). It would differ from the sum
#               if the processes were staggered (each pgbench's -T includes its
#               connection time, its tps does not, so early starters would run with
#               fewer competitors); the start gate below keeps them together,
#   the ratio of each to case A, failed transactions, and connect time avg/max,
# plus the load average at the end.
# All 100 processes of a case start together: a start gate (a lock on the tenant
# tables, see gate_close) holds their first query until every one is connected.
#
# One run does everything:
#   1. builds pgtenant in release mode (or uses $PGTENANT_BIN),
#   2. starts a throwaway PostgreSQL cluster in a temp dir (md5 over TCP),
#   3. creates the 100 schemas and tables, analyzes and prewarms them,
#   4. starts pgtenant with the 100 tenants (transaction pooling),
#   5. runs cases A, B, C and prints the table.
# Everything it started is stopped and the temp dir removed on exit.
#
# Environment:
#   BENCH_SECONDS     seconds per pgbench run (default 10)
#   PGTENANT_BIN      use this pgtenant binary instead of building one
#   PGTENANT_WORKERS  [proxy] workers for pgtenant (default 0 = automatic)
#   AFFINITY_HOLD, AFFINITY_TRANSACTIONS  [pool] tenant affinity for cases A and B
#                     (defaults: pgtenant's, 0.002 s and 16)
#   BENCH_KEEP_LOGS   a directory to copy every log (pgbench, servers) to before cleanup
#
# Usage: benches/tenants.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-10}
PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
AFFINITY_HOLD=${AFFINITY_HOLD:-0.002}
AFFINITY_TRANSACTIONS=${AFFINITY_TRANSACTIONS:-32}
TENANTS=100          # schemas t0..t99, tenants t0..t99, and pgbench processes per case
ROWS=10000           # rows per tenant table
POOL_SIZE=20         # pgtenant pool size (all tenants share the one pool)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[tenants] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Shared helpers: PostgreSQL binaries, running as the postgres user, free ports,
# the temp dir and its cleanup, the throwaway cluster.
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------------------
# Temp dir and cleanup.
# ---------------------------------------------------------------------------
GATE_PID=""
BENCH_PIDS=()   # pgbench processes of the case running now
# Run by cleanup before it stops the servers.
stop_own_jobs() {
    # pgbench processes still running (only when interrupted mid-case): by pid.
    local p
    for p in "${BENCH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${BENCH_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [[ -n $GATE_PID ]] && { kill -TERM "$GATE_PID" 2>/dev/null; wait "$GATE_PID" 2>/dev/null; }
}
make_tmp tenants runs


# ---------------------------------------------------------------------------
# 1. Build pgtenant.
# ---------------------------------------------------------------------------
build_pgtenant

# ---------------------------------------------------------------------------
# 2. Throwaway PostgreSQL cluster.
# ---------------------------------------------------------------------------
mkdir -p "$TMP/runs"   # the pgbench outputs (made first: init_cluster hands TMP to postgres)
# Superuser over the Unix socket only; md5 over TCP for everyone else, so pgtenant and
# the direct case authenticate the same way.
init_cluster md5
# shared_buffers holds all 100 tables and indexes (~140 MB), so no case reads from disk.
start_cluster -c max_connections=300 -c shared_buffers=256MB

su_sql -d postgres <<'SQL'
SET password_encryption = 'md5';
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE DATABASE shared;
SQL

# ---------------------------------------------------------------------------
# 3. 100 schemas t0..t99, each with a pgbench_accounts table of 10000 rows, readable by app.
# ---------------------------------------------------------------------------
log "creating $TENANTS schemas with $ROWS rows each ..."
su_sql -d shared >"$TMP/setup.log" 2>&1 <<SQL || { show_log "$TMP/setup.log"; die "schema setup failed"; }
DO \$\$
BEGIN
    FOR i IN 0..$((TENANTS - 1)) LOOP
        EXECUTE format('CREATE SCHEMA t%s', i);
        EXECUTE format('CREATE TABLE t%s.pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))', i);
        EXECUTE format('INSERT INTO t%s.pgbench_accounts SELECT g, 1, 0, '''' FROM generate_series(1, $ROWS) g', i);
        EXECUTE format('GRANT USAGE ON SCHEMA t%s TO app', i);
        EXECUTE format('GRANT SELECT ON t%s.pgbench_accounts TO app', i);
    END LOOP;
END
\$\$;
ANALYZE;
SQL
# Load every table and index into shared_buffers, so case A (one table) does not get a
# warm-cache advantage over B and C (100 tables). Best effort: pg_prewarm is in contrib.
if su_sql -d shared -c 'CREATE EXTENSION IF NOT EXISTS pg_prewarm' >/dev/null 2>&1; then
    su_sql -d shared -At -c "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname ~ '^t[0-9]+\$' AND c.relkind IN ('r', 'i')" >/dev/null
else
    log "note: pg_prewarm not available, tables are not prewarmed"
fi
su_sql -d postgres -c 'CHECKPOINT' >/dev/null

# The pgbench script: one primary-key lookup in the search_path's pgbench_accounts.
cat >"$TMP/script.sql" <<EOF
\\set aid random(1, $ROWS)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF

# ---------------------------------------------------------------------------
# 4. pgtenant: 100 schema-isolated tenants, one login role, so one shared pool.
# ---------------------------------------------------------------------------
free_port PGT_PORT
free_port METRICS_PORT
{
    cat <<EOF
[proxy]
listen = "127.0.0.1:$PGT_PORT"
workers = $PGTENANT_WORKERS

[pool]
mode = "transaction"
size = $POOL_SIZE
max_server_connections = $POOL_SIZE
affinity_hold = $AFFINITY_HOLD
affinity_transactions = $AFFINITY_TRANSACTIONS

[metrics]
listen = "127.0.0.1:$METRICS_PORT"

[admin]
# The console user that turns tenant affinity off for case B0.
admin_users = ["bench"]

[[upstreams]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
max_connections = 100
# The throwaway cluster uses md5 over TCP: allowed explicitly (the default is SCRAM only).
require_auth = "md5"
EOF
    for i in $(seq 0 $((TENANTS - 1))); do
        # schema defaults to the tenant id: tenant tN gets search_path "tN".
        cat <<EOF

[[tenants]]
id = "t$i"
upstream = "local"
database = "shared"
role = "app"
password = "app"
isolation = "schema"
pool_size = $POOL_SIZE
EOF
    done
} >"$TMP/pgtenant.toml"

# Wait until a query works through pgtenant (port, user, pid, log).
wait_ready() {
    local port=$1 user=$2 pid=$3 logf=$4
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { show_log "$logf"; die "process $pid ($logf) exited"; }
        "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U "$user" -d shared -c 'select 1' \
            >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    show_log "$logf"
    die "nothing answers on port $port after 30 s"
}

log "starting pgtenant on 127.0.0.1:$PGT_PORT (workers=$PGTENANT_WORKERS, $TENANTS tenants) ..."
RUST_LOG=warn "$PGTENANT_BIN" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
PGT_PID=$!
wait_ready "$PGT_PORT" app.t0 "$PGT_PID" "$TMP/pgtenant.log"

# Sanity check: the tenants really see their own schema (t0 and the last one).
for t in t0 "t$((TENANTS - 1))"; do
    got=$("$PSQL" -X -At -h 127.0.0.1 -p "$PGT_PORT" -U "app.$t" -d shared -c 'SHOW search_path') \
        || die "SHOW search_path through pgtenant failed for $t"
    [[ $got == "$t" || $got == "\"$t\"" ]] || die "tenant $t got search_path '$got', expected '$t'"
done

# ---------------------------------------------------------------------------
# 5. The cases.
# ---------------------------------------------------------------------------
export PGPASSWORD=app   # only the direct case is asked for it; pgtenant trusts clients

# Connection string of process i in a case.
conninfo() { # conninfo CASE I
    case $1 in
        A) echo "host=127.0.0.1 port=$PGT_PORT user=app.t0 dbname=shared" ;;
        B | B0) echo "host=127.0.0.1 port=$PGT_PORT user=app.t$2 dbname=shared" ;;
        C) echo "host=127.0.0.1 port=$PG_PORT user=app dbname=shared options=-csearch_path=t$2" ;;
    esac
}

# The start gate. Started one by one from this shell, 100 pgbench processes do not
# start "at once" on a saturated 2-core machine: the first ones to connect eat the CPU,
# and the later forks (and, in case C, backend forks and md5 logins) are seconds late.
# So while they start, a superuser session holds an ACCESS EXCLUSIVE lock on every
# tenant table: each client connects, sends its first SELECT and blocks (in case C in its
# own backend; through pgtenant, 20 in the pool's server connections and the rest queued
# in pgtenant for a connection). Once all are in, the lock is dropped and all 100 start
# together. The wait is capped at GATE_MAX seconds, below pgtenant's 5 s checkout_timeout.
GATE_MAX=4
GATE_NOTE=""
GATE_APP=pgtenant-bench-gate
gate_close() {
    local tables
    tables=$(seq -s, -f "t%g.pgbench_accounts" 0 $((TENANTS - 1)))
    PGAPPNAME=$GATE_APP "$PSQL" -X -q -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d shared \
        -c "BEGIN; LOCK TABLE $tables IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600)" \
        >"$TMP/gate.log" 2>&1 &
    GATE_PID=$!
    for _ in $(seq 1 100); do
        [[ $(su_sql -d postgres -At -c "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = '$GATE_APP' AND wait_event = 'PgSleep'") == 1 ]] && return 0
        sleep 0.1
    done
    show_log "$TMP/gate.log"
    die "the start gate did not take its locks"
}
# gate_wait PORT WAITERS: wait until TENANTS clients have a TCP connection to PORT (the
# port pgbench connects to) and WAITERS backends of `app` are blocked on the lock.
gate_wait() {
    local port=$1 want=$2 deadline=$((SECONDS + GATE_MAX)) conns waiters
    while :; do
        conns=$(ss -Htn state established "( dport = :$port )" 2>/dev/null | wc -l)
        waiters=$(su_sql -d postgres -At -c "SELECT count(*) FROM pg_stat_activity
            WHERE usename = 'app' AND wait_event_type = 'Lock'")
        if [[ $conns -ge $TENANTS && $waiters -ge $want ]]; then
            GATE_NOTE="all in"
            return 0
        fi
        if [[ $SECONDS -ge $deadline ]]; then
            GATE_NOTE="timeout, $conns conns, $waiters waiting"
            log "warning: start gate opened after ${GATE_MAX}s with only $conns connections and $waiters clients waiting"
            return 0
        fi
        sleep 0.05
    done
}
gate_open() {
    [[ -n $GATE_PID ]] || return 0
    su_sql -d postgres -At -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
        WHERE application_name = '$GATE_APP'" >/dev/null
    wait "$GATE_PID" 2>/dev/null || true   # psql exits 1: "canceling statement due to user request"
    GATE_PID=""
}

declare -A TPS STEADY WINDOW FAIL ERRS CONN GATE RESETS LAT CPU
# pgtenant's cross-tenant resets so far (its metrics endpoint); "" for case C.
resets_now() {
    curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1 ~ /^pgtenant_resets(_total)?({})?$/ { print $2 }'
}
# run_case CASE: start the 100 pgbench processes at once, wait for all, sum their results.
# Each process also logs every transaction (-l) so that the steady-state throughput can
# be computed over the window in which all 100 were connected (see below).
# pg_ticks: CPU ticks of the cluster: the postmaster and its live children, and the children
# it reaped (cutime + cstime).
pg_ticks() {
    local total=0 p t
    for p in $PG_PID $(pgrep -P "$PG_PID" 2>/dev/null); do
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk -v main=$((p == PG_PID)) \
            '{ print $12 + $13 + (main ? $14 + $15 : 0) }') || continue
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

run_case() {
    local c=$1 i rc errs=0
    log "case $c: $TENANTS x pgbench -n -c 1 -j 1 -T $BENCH_SECONDS -f script.sql ..."
    gate_close
    local r0 p0 g0
    r0=$(resets_now)
    p0=$(cpu_ticks "${PGT_PID:-}")
    g0=$(pg_ticks)
    local t0=$EPOCHREALTIME
    BENCH_PIDS=()
    for i in $(seq 0 $((TENANTS - 1))); do
        "$PGBENCH" -n -c 1 -j 1 -T "$BENCH_SECONDS" -f "$TMP/script.sql" \
            -l --log-prefix="$TMP/runs/xact-$c-$i" "$(conninfo "$c" "$i")" \
            >"$TMP/runs/$c-$i.log" 2>&1 &
        BENCH_PIDS+=($!)
    done
    if [[ $c == C ]]; then gate_wait "$PG_PORT" "$TENANTS"; else gate_wait "$PGT_PORT" "$POOL_SIZE"; fi
    gate_open
    GATE[$c]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    log "case $c: start gate opened after ${GATE[$c]} s ($GATE_NOTE)"
    for i in "${!BENCH_PIDS[@]}"; do
        rc=0
        wait "${BENCH_PIDS[$i]}" || rc=$?
        if [[ $rc -ne 0 ]]; then
            errs=$((errs + 1))
            [[ $errs -le 3 ]] && { log "case $c: pgbench $i exited $rc"; show_log "$TMP/runs/$c-$i.log" 5; }
        fi
    done
    BENCH_PIDS=()
    local p1 g1 txs_all
    p1=$(cpu_ticks "${PGT_PID:-}")
    g1=$(pg_ticks)
    txs_all=$(cat "$TMP"/runs/"$c"-*.log | awk '/^number of transactions actually processed:/ { s += $6 } END { print s + 0 }')
    # CPU µs per transaction, over the whole case (gate and connections included).
    CPU[$c]=$(awk -v p="${p1:-0}" -v q="${p0:-0}" -v g="$g1" -v h="$g0" -v n="$txs_all" -v hz="$(getconf CLK_TCK)" \
        -v proxy=$([[ $c == C ]] && echo 0 || echo 1) \
        'BEGIN { if (n == 0) { print "-"; exit } pg = (g - h) / hz / n * 1e6;
                 if (proxy) printf "%.1f/%.1f", (p - q) / hz / n * 1e6, pg; else printf "-/%.1f", pg }')
    # Summed pgbench TPS:
    #   tps = 1234.5 (without initial connection time)
    #   number of failed transactions: 0 (0.000%)
    #   initial connection time = 12.345 ms
    TPS[$c]=$(cat "$TMP"/runs/"$c"-*.log | awk '/^tps = .*without initial connection time/ {s += $3; n++}
        END { if (n) printf "%.1f", s }')
    FAIL[$c]=$(cat "$TMP"/runs/"$c"-*.log | awk -F'[:(]' '/^number of failed transactions/ {s += $2}
        END { print s + 0 }')
    CONN[$c]=$(cat "$TMP"/runs/"$c"-*.log | awk '/^initial connection time = / {s += $5; n++; if ($5 > m) m = $5}
        END { if (n) printf "%.0f/%.0f", s / n, m; else print "-" }')
    ERRS[$c]=$errs
    # Cross-tenant resets per transaction: what tenant affinity is there to avoid.
    if [[ $c != C ]]; then
        local r1 txs
        r1=$(resets_now)
        txs=$(cat "$TMP"/runs/"$c"-*.log | awk '/^number of transactions actually processed:/ { s += $6 } END { print s + 0 }')
        log "case $c: $((r1 - r0)) cross-tenant resets over $txs transactions"
        RESETS[$c]=$(awk -v a="$r0" -v b="$r1" -v n="$txs" 'BEGIN { if (n > 0) printf "%.3f", (b - a) / n; else print "-" }')
    fi
    local parsed
    parsed=$(grep -l '^tps = .*without initial connection time' "$TMP"/runs/"$c"-*.log | wc -l)
    [[ $parsed -eq $TENANTS ]] || log "case $c: tps found in only $parsed of $TENANTS pgbench outputs"

    # Steady-state TPS. Each pgbench's -T clock includes its connection time and its tps
    # excludes it, so when connecting is slow (case C: 100 backend forks + md5 on a busy
    # machine) the processes that connected first ran with fewer competitors and the
    # summed tps overstates what 100 concurrent clients get. The per-transaction logs
    # (`client xact latency_us script epoch_s epoch_us` per line) give the window from the
    # last process's first transaction to the first process's last one, where all 100
    # were running; count the transactions that completed in it, over its length.
    local win
    win=$(for f in "$TMP"/runs/xact-"$c"-*; do
        head -n 1 "$f"; tail -n 1 "$f"
    done | awk 'NR % 2 == 1 { t = $5 + $6 / 1e6; if (first == "" || t > first) first = t }
                NR % 2 == 0 { t = $5 + $6 / 1e6; if (last == "" || t < last) last = t }
                END { printf "%.6f %.6f", first, last }')
    read -r w_from w_to <<<"$win"
    STEADY[$c]=$(cat "$TMP"/runs/xact-"$c"-* | awk -v a="$w_from" -v b="$w_to" '
        { t = $5 + $6 / 1e6; if (t >= a && t <= b) n++ }
        END { if (b - a > 0) printf "%.1f", n / (b - a) }')
    WINDOW[$c]=$(awk -v a="$w_from" -v b="$w_to" 'BEGIN { printf "%.1f", b - a }')
    # Latency (ms) of the transactions in that window: median and 99th percentile. What
    # tenant affinity trades: a client of another tenant waits while a connection is held.
    LAT[$c]=$(cat "$TMP"/runs/xact-"$c"-* | awk -v a="$w_from" -v b="$w_to" '
        { t = $5 + $6 / 1e6; if (t >= a && t <= b) print $3 }' | sort -n | awk '
        { v[NR] = $1 } END { if (NR) printf "%.1f/%.1f", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000; else print "-" }')
    awk -v w="${WINDOW[$c]}" 'BEGIN { exit !(w < 2) }' &&
        log "case $c: warning: only ${WINDOW[$c]} s with all $TENANTS clients running (raise BENCH_SECONDS)"
    rm -f "$TMP"/runs/xact-"$c"-*
    log "case $c: summed ${TPS[$c]:--} tps, steady ${STEADY[$c]:--} tps over ${WINDOW[$c]} s," \
        "${FAIL[$c]} failed transactions, connect ms avg/max ${CONN[$c]}, $errs pgbench error exit(s)"
}

CASES=(${BENCH_TENANT_CASES:-A B B0 C})
declare -A DESC=(
    [A]="A pgtenant, 1 tenant"
    [B]="B pgtenant, $TENANTS tenants"
    [B0]="B0 as B, no affinity"
    [C]="C direct PostgreSQL"
)
for c in "${CASES[@]}"; do
    su_sql -d postgres -c 'CHECKPOINT' >/dev/null
    if [[ $c == B0 ]]; then
        # Tenant affinity off, live, through the admin console.
        "$PSQL" -X -q -h 127.0.0.1 -p "$PGT_PORT" -U bench -d pgbouncer -c 'SET affinity_hold = 0' >/dev/null \
            || die "could not turn tenant affinity off through the console"
    fi
    run_case "$c"
done
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
# 6. The table.
# ---------------------------------------------------------------------------
ratio() { # a / b with 2 decimals, "-" when either is missing
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

echo
echo "$TENANTS pgbench processes (-c 1 each), -T $BENCH_SECONDS, PK lookup in a $ROWS-row table;"
echo "pgtenant: schema isolation, one login role, one shared pool of $POOL_SIZE (transaction mode), workers=$PGTENANT_WORKERS"
echo "$(nproc) cores, load avg $LOADAVG"
fmt_row='%-24s | %10s | %9s | %10s | %9s | %6s | %7s | %11s | %9s | %11s | %13s\n'
# shellcheck disable=SC2059
printf "$fmt_row" case "total TPS" "vs A" "steady TPS" "vs A" window failed "conn ms" "resets/tx" "lat ms p50/99" "CPU us/tx p/pg"
printf '%s\n' "-------------------------+------------+-----------+------------+-----------+--------+---------+-------------+-----------+-------------+--------------"
for c in "${CASES[@]}"; do
    # shellcheck disable=SC2059
    printf "$fmt_row" "${DESC[$c]}" "${TPS[$c]:--}" "$(ratio "${TPS[$c]:-}" "${TPS[A]:-}")" \
        "${STEADY[$c]:--}" "$(ratio "${STEADY[$c]:-}" "${STEADY[A]:-}")" "${WINDOW[$c]:--}s" \
        "${FAIL[$c]}" "${CONN[$c]}" "${RESETS[$c]:--}" "${LAT[$c]:--}" "${CPU[$c]:--}"
done
echo "total TPS: sum of each pgbench's tps (without initial connection time)."
echo "steady TPS: transactions completed while all $TENANTS clients were connected, per second of that window."
echo "conn ms: pgbench's initial connection time, average/max over the $TENANTS processes."
echo "resets/tx: cross-tenant resets (pgtenant_resets) per transaction processed."
echo "lat ms: transaction latency in the steady window, median/99th percentile (pgbench -l)."
echo "CPU us/tx p/pg: pgtenant's and PostgreSQL's (all its processes) CPU time per transaction over the case."
gates=()
for c in "${CASES[@]}"; do gates+=("$c ${GATE[$c]:--}s"); done
echo "start gate (clients held until all $TENANTS are in; counts in each pgbench's -T and tps):" \
    "$(IFS=,; echo "${gates[*]}" | sed 's/,/, /g')"
echo

# Anything pgtenant logged at warn or above during the runs.
if [[ -s $TMP/pgtenant.log ]]; then
    log "pgtenant logged $(wc -l <"$TMP/pgtenant.log") line(s) at warn+; last ones:"
    tail -n 5 "$TMP/pgtenant.log" >&2
fi
bad=0
for c in "${CASES[@]}"; do bad=$((bad + ERRS[$c])); done
[[ $bad -eq 0 ]] || { log "$bad pgbench process(es) exited non-zero"; exit 1; }
