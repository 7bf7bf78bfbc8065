#!/usr/bin/env bash
# benches/compare.sh — pgbench through pgtenant vs PgBouncer vs direct PostgreSQL.
#
# One run does everything:
#   1. builds pgtenant in release mode (or uses $PGTENANT_BIN),
#   2. starts a throwaway PostgreSQL cluster in a temp dir (md5 over TCP),
#   3. `pgbench -i -s 10` the bench database,
#   4. starts pgtenant (and PgBouncer, when installed) in transaction pooling mode,
#   5. runs the same pgbench cases against direct Postgres, pgtenant and PgBouncer,
#   6. prints a table of TPS, average latency and ratios.
# Everything it started is stopped and the temp dir removed on exit.
#
# Environment:
#   BENCH_SECONDS     seconds per pgbench run (default 10)
#   BENCH_SCALE       pgbench -i scale factor (default 10)
#   PGTENANT_BIN      use this pgtenant binary instead of building one
#   PGTENANT_WORKERS  [proxy] workers for pgtenant (default 0 = one per core)
#   BENCH_CASES       only run cases whose name matches this regex (e.g. 'select 16c$')
#   BENCH_KEEP_LOGS   a directory to copy every log (pgbench, servers) to before cleanup
#
# Usage: benches/compare.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_SCALE=${BENCH_SCALE:-10}
PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Shared helpers: PostgreSQL binaries, running as the postgres user, free ports,
# the temp dir and its cleanup, the throwaway cluster.
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------------------
# Temp dir and cleanup.
# ---------------------------------------------------------------------------
make_tmp bench


# ---------------------------------------------------------------------------
# 1. Build pgtenant.
# ---------------------------------------------------------------------------
build_pgtenant

# ---------------------------------------------------------------------------
# 2. Throwaway PostgreSQL cluster.
# ---------------------------------------------------------------------------
# Superuser over the Unix socket only; md5 over TCP for everyone, so the direct
# runs and both poolers authenticate upstream the same way.
init_cluster md5
start_cluster -c max_connections=300

su_sql -d postgres <<'SQL'
SET password_encryption = 'md5';
CREATE ROLE bench LOGIN PASSWORD 'bench';
CREATE DATABASE bench OWNER bench;
SQL

# ---------------------------------------------------------------------------
# 3. pgbench -i, directly over TCP as `bench`.
# ---------------------------------------------------------------------------
export PGPASSWORD=bench   # only the direct runs are asked for it; the poolers trust clients
log "pgbench -i -s $BENCH_SCALE ..."
"$PGBENCH" -i -s "$BENCH_SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U bench bench \
    >"$TMP/pgbench-init.log" 2>&1 || { show_log "$TMP/pgbench-init.log"; die "pgbench -i failed"; }

# ---------------------------------------------------------------------------
# 4. pgtenant.
# ---------------------------------------------------------------------------
free_port PGT_PORT
cat >"$TMP/pgtenant.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PGT_PORT"
workers = $PGTENANT_WORKERS

[pool]
mode = "transaction"
size = 20

[[upstreams]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
max_connections = 200
# The throwaway cluster uses md5 over TCP: allowed explicitly (the default is SCRAM only).
require_auth = "md5"

[[tenants]]
id = "bench"
upstream = "local"
database = "bench"
role = "bench"
password = "bench"
pool_size = 20
EOF

# Wait until `psql ... -c 'select 1'` works through a proxy (port, user, db, pid, log).
wait_ready() {
    local port=$1 user=$2 pid=$3 logf=$4
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { show_log "$logf"; die "process $pid ($logf) exited"; }
        "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U "$user" -d bench -c 'select 1' \
            >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    show_log "$logf"
    die "nothing answers on port $port after 30 s"
}

log "starting pgtenant on 127.0.0.1:$PGT_PORT (workers=$PGTENANT_WORKERS) ..."
RUST_LOG=warn "$PGTENANT_BIN" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
PGT_PID=$!
wait_ready "$PGT_PORT" bench.bench "$PGT_PID" "$TMP/pgtenant.log"

# ---------------------------------------------------------------------------
# 5. PgBouncer, when installed.
# ---------------------------------------------------------------------------
PGBOUNCER=$(command -v pgbouncer || ls /usr/sbin/pgbouncer 2>/dev/null || true)
if [[ -n $PGBOUNCER ]]; then
    free_port PGB_PORT
    # Clients are trusted; the auth_file gives pgbouncer the password for md5 upstream.
    echo '"bench" "bench"' >"$TMP/userlist.txt"
    cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
EOF
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
    log "starting pgbouncer on 127.0.0.1:$PGB_PORT ..."
    as_pg_bg "$TMP/pgbouncer.out.log" "$PGBOUNCER" -q "$TMP/pgbouncer.ini"
    PGB_PID=$BG_PID
    wait_ready "$PGB_PORT" bench "$PGB_PID" "$TMP/pgbouncer.log"
else
    log "note: pgbouncer not installed, skipping it (apt-get install pgbouncer to compare)"
fi

# ---------------------------------------------------------------------------
# 6. The benchmark cases.
# ---------------------------------------------------------------------------
# name|pgbench options
CASES=(
    "select 1c|-S -c 1 -j 1"
    "select 16c|-S -c 16 -j 2"
    "tpcb 16c|-c 16 -j 2"
    "select 16c -C|-C -S -c 16 -j 2"
    "select 16c extended|-S -M extended -c 16 -j 2"
    "select 16c prepared|-S -M prepared -c 16 -j 2"
)
TARGETS=(direct pgtenant)
[[ -n $PGB_PID ]] && TARGETS+=(pgbouncer)

# Connection options per target.
target_conn() {
    case $1 in
        direct)    echo "-h 127.0.0.1 -p $PG_PORT -U bench" ;;
        pgtenant)  echo "-h 127.0.0.1 -p $PGT_PORT -U bench.bench" ;;
        pgbouncer) echo "-h 127.0.0.1 -p $PGB_PORT -U bench" ;;
    esac
}

# Before every run, do pgbench's own housekeeping directly (vacuum the small
# tables, empty pgbench_history) and checkpoint, so each run starts from the
# same state and can use -n whatever it goes through.
prepare() {
    su_sql -d bench -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
        -c 'TRUNCATE pgbench_history' -c 'CHECKPOINT' >/dev/null
}

declare -A TPS LAT FAIL
FAILED_RUNS=0
n=0
for c in "${CASES[@]}"; do
    name=${c%%|*}
    opts=${c#*|}
    [[ -n ${BENCH_CASES:-} && ! $name =~ $BENCH_CASES ]] && continue
    for t in "${TARGETS[@]}"; do
        n=$((n + 1))
        out=$TMP/pgbench-$n-$t.log
        prepare
        log "run: $name -> $t (pgbench -n $opts -T $BENCH_SECONDS)"
        # shellcheck disable=SC2046,SC2086
        if ! "$PGBENCH" -n $opts -T "$BENCH_SECONDS" $(target_conn "$t") bench >"$out" 2>&1; then
            log "pgbench exited non-zero for '$name' -> $t"
            show_log "$out" 15
            FAILED_RUNS=$((FAILED_RUNS + 1))
        fi
        # tps = 1234.5 (without initial connection time)   -- or, with -C,
        # tps = 1234.5 (including reconnection times)
        TPS[$name/$t]=$(awk '/^tps = / {print $3; exit}' "$out")
        LAT[$name/$t]=$(awk '/^latency average = / {print $4; exit}' "$out")
        FAIL[$name/$t]=$(awk -F'[:(]' '/^number of failed transactions/ {gsub(/ /,"",$2); print $2; exit}' "$out")
        [[ -z ${TPS[$name/$t]} ]] && { log "could not parse tps for '$name' -> $t"; show_log "$out" 15; }
    done
done

# ---------------------------------------------------------------------------
# 7. The table.
# ---------------------------------------------------------------------------
ratio() { # a / b with 2 decimals, "-" when either is missing
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
fmt() { # number with N decimals, "-" when missing
    awk -v v="${1:-}" -v d="$2" 'BEGIN { if (v == "") print "-"; else printf("%." d "f", v) }'
}

echo
echo "pgbench -T $BENCH_SECONDS, scale $BENCH_SCALE, pool size 20 (transaction mode), $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -z $PGB_PID ]] && echo "(pgbouncer not installed: no pgbouncer rows)"
fmt_row='%-14s | %-9s | %10s | %8s | %9s | %12s | %6s\n'
# shellcheck disable=SC2059
printf "$fmt_row" case target TPS "lat ms" "vs direct" "vs pgbouncer" failed
printf '%s\n' "---------------+-----------+------------+----------+-----------+--------------+-------"
for c in "${CASES[@]}"; do
    name=${c%%|*}
    [[ -n ${BENCH_CASES:-} && ! $name =~ $BENCH_CASES ]] && continue
    for t in "${TARGETS[@]}"; do
        k=$name/$t
        vs_pgb=""
        [[ $t == pgtenant && -n $PGB_PID ]] && vs_pgb=$(ratio "${TPS[$k]}" "${TPS[$name/pgbouncer]}")
        # shellcheck disable=SC2059
        printf "$fmt_row" "$name" "$t" "$(fmt "${TPS[$k]}" 1)" "$(fmt "${LAT[$k]}" 3)" \
            "$(ratio "${TPS[$k]}" "${TPS[$name/direct]}")" "$vs_pgb" "${FAIL[$k]:--}"
    done
done
echo

# Anything pgtenant logged at warn or above during the runs.
if [[ -s $TMP/pgtenant.log ]]; then
    log "pgtenant logged $(wc -l <"$TMP/pgtenant.log") line(s) at warn+; last ones:"
    tail -n 5 "$TMP/pgtenant.log" >&2
fi
[[ $FAILED_RUNS -eq 0 ]] || { log "$FAILED_RUNS pgbench run(s) failed"; exit 1; }
