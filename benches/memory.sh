#!/usr/bin/env bash
# benches/memory.sh — pgtenant's memory (RSS) under hostile and heavy clients.
#
# One run: throwaway PostgreSQL cluster (SCRAM over TCP), a release build of pgtenant in
# front of it with three tenants on one database (`bench`: SCRAM clients, `benchmd5`: MD5
# clients, `benchtrust`: trust, for the cases after login), then the cases below, one after
# another, each measured from /proc/PID/status of the pgtenant process: VmRSS before, the
# peak (VmHWM, reset through /proc/PID/clear_refs before each case, and VmRSS sampled every
# 20 ms), and VmRSS once the case is over. benches/memory_client.py is the client.
#
# Cases (BENCH_CASES, space-separated; default: all):
#   auth_sasl     5 connections send a SASLInitialResponse whose header declares 1 GiB - 1,
#                 then trickle 64 KiB pieces into it (every BENCH_TRICKLE_INTERVAL s) for
#                 BENCH_TRICKLE_SECONDS
#   auth_md5      the same with a PasswordMessage (an MD5 tenant)
#   query_1gib    the same with a Query after login (5 trust clients)
#   idle          BENCH_IDLE logged-in clients left idle (KiB per client)
#   idle_pgbouncer the same through PgBouncer 1.25+ (trust clients, transaction mode), for
#                 comparison; skipped when no PgBouncer 1.25+ is found (PGBOUNCER, PATH or
#                 /opt/pgbouncer-1.25, as benches/compare.sh finds it)
#   idle_active, idle_active_pgbouncer
#                 the same, each client running one SELECT 1 before it goes idle
#   (the last lines print the idle figures of pgtenant and PgBouncer side by side; an idle
#   case after another one starts from memory the process freed but kept, so for a clean
#   figure run each pair alone: BENCH_CASES="idle idle_pgbouncer", then the active pair)
#   statements    BENCH_STATEMENTS distinct named prepared statements on one session
#   server_error  a BENCH_ERROR_MB MB server ErrorResponse, the session then idle
#   pipeline      SELECT pg_sleep(20) then BENCH_PIPELINE_MB MB of pipelined queries
#   copy_in       COPY FROM STDIN of BENCH_COPY_MB MB from a client sending as fast as it can
#
# Environment:
#   BENCH_CASES           cases to run (default: all of the above)
#   BENCH_TRICKLE_SECONDS seconds the 1 GiB-header cases trickle (default 5)
#   BENCH_TRICKLE_INTERVAL seconds between their 64 KiB pieces (default 0.05; 0: flat out)
#   BENCH_IDLE            idle clients (default 10000)
#   BENCH_STATEMENTS      named statements (default 100000)
#   BENCH_ERROR_MB        size of the server error in MB (default 200)
#   BENCH_PIPELINE_MB     pipelined MB behind pg_sleep (default 1000)
#   BENCH_COPY_MB         COPY IN MB (default 2000)
#   PGTENANT_BIN          use this pgtenant binary (default: cargo build --release)
#   PGBOUNCER             the PgBouncer binary for idle_pgbouncer (see benches/compare.sh)
#   BENCH_KEEP_LOGS       a directory to copy every log to before cleanup
#
# Usage: benches/memory.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_CASES=${BENCH_CASES:-"auth_sasl auth_md5 query_1gib idle idle_pgbouncer idle_active idle_active_pgbouncer statements server_error pipeline copy_in"}
BENCH_TRICKLE_SECONDS=${BENCH_TRICKLE_SECONDS:-5}
BENCH_TRICKLE_INTERVAL=${BENCH_TRICKLE_INTERVAL:-0.05}
BENCH_IDLE=${BENCH_IDLE:-10000}
BENCH_STATEMENTS=${BENCH_STATEMENTS:-100000}
BENCH_ERROR_MB=${BENCH_ERROR_MB:-200}
BENCH_PIPELINE_MB=${BENCH_PIPELINE_MB:-1000}
BENCH_COPY_MB=${BENCH_COPY_MB:-2000}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[memory] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "python3 not found"
CLIENT=$REPO/benches/memory_client.py

make_tmp memory

# ---------------------------------------------------------------------------
# 1. pgtenant (release build) and the client credentials ('secret').
# ---------------------------------------------------------------------------
build_pgtenant
VERIFIER=$(printf 'secret' | "$PGTENANT_BIN" hash-password) || die "pgtenant hash-password failed"
MD5=$(printf 'secret' | "$PGTENANT_BIN" hash-password --md5-user app.benchmd5) || die "hash-password --md5-user failed"

# ---------------------------------------------------------------------------
# 2. Throwaway PostgreSQL cluster. Errors are not logged (the server_error case would
#    write its 200 MB message to the server log).
# ---------------------------------------------------------------------------
init_cluster scram-sha-256
start_cluster -c max_connections=100 -c password_encryption=scram-sha-256 -c log_min_messages=fatal \
    -c log_min_error_statement=panic
su_sql -d postgres <<SQL
CREATE ROLE bench LOGIN PASSWORD 'secret';
CREATE DATABASE bench OWNER bench;
\c bench
CREATE UNLOGGED TABLE copy_sink (line text);
ALTER TABLE copy_sink OWNER TO bench;
SQL

# ---------------------------------------------------------------------------
# 3. pgtenant.
# ---------------------------------------------------------------------------
free_port PGT_PORT
tenant() { # tenant ID AUTH [USER_VERIFIER]
    cat <<TOML
[[tenants]]
id = "$1"
upstream = "local"
database = "bench"
role = "bench"
password = "secret"
auth = "$2"
pool_size = 10
TOML
    if [[ -n ${3:-} ]]; then
        printf '[[tenants.users]]\nname = "app"\nverifier = "%s"\n' "$3"
    fi
}
{
    cat <<TOML
[proxy]
listen = "127.0.0.1:$PGT_PORT"
auth = "scram-sha-256"
max_client_conn = $((BENCH_IDLE + 100))
startup_timeout = 10.0
shutdown_timeout = 5.0

[pool]
mode = "transaction"
size = 10

[[upstreams]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
TOML
    tenant bench scram-sha-256 "$VERIFIER"
    tenant benchmd5 md5 "$MD5"
    tenant benchtrust trust
} >"$TMP/pgtenant.toml"
"$PGTENANT_BIN" check-config --config "$TMP/pgtenant.toml" >/dev/null || die "invalid generated config"
RUST_LOG=warn "$PGTENANT_BIN" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
PGT_PID=$!
for _ in $(seq 1 100); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PGT_PORT" && break
    kill -0 "$PGT_PID" 2>/dev/null || { show_log "$TMP/pgtenant.log"; die "pgtenant exited"; }
    sleep 0.1
done
log "pgtenant (pid $PGT_PID) on 127.0.0.1:$PGT_PORT, PostgreSQL on $PG_PORT"
# Warm up: one login per tenant kind so that pools and caches exist before measuring.
"$PYTHON" "$CLIENT" "$PGT_PID" 127.0.0.1 "$PGT_PORT" idle --user app.benchtrust --database bench --n 1 >/dev/null

# PgBouncer for the idle_pgbouncer case: trust clients, server connections as bench with its
# password, started only when the case is asked for and a PgBouncer 1.25+ is found.
PGBOUNCER_BIN=""
start_pgbouncer() {
    [[ -n ${PGB_PID:-} ]] && return 0
    find_pgbouncer 1.25
    [[ -n $PGBOUNCER_BIN ]] || return 1
    free_port PGB_PORT
    echo '"bench" ""' >"$TMP/userlist.txt"
    cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=bench password=secret

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = 10
max_client_conn = $((BENCH_IDLE + 100))
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
EOF
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
    as_pg_bg "$TMP/pgbouncer.out.log" "$PGBOUNCER_BIN" -q "$TMP/pgbouncer.ini"
    PGB_PID=$BG_PID
    for _ in $(seq 1 100); do
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PGB_PORT" && break
        kill -0 "$PGB_PID" 2>/dev/null || { show_log "$TMP/pgbouncer.log"; die "pgbouncer exited"; }
        sleep 0.1
    done
    log "$PGBOUNCER_VERSION (pid $PGB_PID) on 127.0.0.1:$PGB_PORT"
    # Warm up: the first login opens a server connection (later ones reuse its parameters).
    "$PYTHON" "$CLIENT" "$PGB_PID" 127.0.0.1 "$PGB_PORT" idle --user bench --database bench --n 1 >/dev/null
}

# ---------------------------------------------------------------------------
# 4. The cases.
# ---------------------------------------------------------------------------
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
run_case() { # run_case LABEL ARGS...   (against pgtenant; PROXY_PID/PROXY_PORT override)
    local label=$1; shift
    log "case $label ..."
    if ! "$PYTHON" "$CLIENT" "${PROXY_PID:-$PGT_PID}" 127.0.0.1 "${PROXY_PORT:-$PGT_PORT}" "$@" \
        >>"$RESULTS" 2>"$TMP/case-$label.log"; then
        show_log "$TMP/case-$label.log"
        printf '{"case": "%s", "failed": true}\n' "$label" >>"$RESULTS"
    fi
    kill -0 "$PGT_PID" 2>/dev/null || { show_log "$TMP/pgtenant.log"; die "pgtenant died during $label"; }
    tail -n 1 "$RESULTS" >&2
}
trust=(--user app.benchtrust --database bench)
for c in $BENCH_CASES; do
    case $c in
        auth_sasl) run_case "$c" auth_1gib --method sasl --user app.bench --conns 5 --seconds "$BENCH_TRICKLE_SECONDS" --interval "$BENCH_TRICKLE_INTERVAL" ;;
        auth_md5) run_case "$c" auth_1gib --method md5 --user app.benchmd5 --conns 5 --seconds "$BENCH_TRICKLE_SECONDS" --interval "$BENCH_TRICKLE_INTERVAL" ;;
        query_1gib) run_case "$c" auth_1gib --method query "${trust[@]}" --conns 5 --seconds "$BENCH_TRICKLE_SECONDS" --interval "$BENCH_TRICKLE_INTERVAL" ;;
        idle) run_case "$c" idle "${trust[@]}" --n "$BENCH_IDLE" ;;
        idle_pgbouncer)
            if start_pgbouncer; then
                PROXY_PID=$PGB_PID PROXY_PORT=$PGB_PORT run_case "$c" idle --user bench --database bench --n "$BENCH_IDLE"
                # The case's JSON says idle_clients: mark it as PgBouncer's.
                sed -i '$ s/"case": "idle_clients"/"case": "idle_clients_pgbouncer"/' "$RESULTS"
            fi ;;
        idle_active) run_case "$c" idle "${trust[@]}" --n "$BENCH_IDLE" --query ;;
        idle_active_pgbouncer)
            if start_pgbouncer; then
                PROXY_PID=$PGB_PID PROXY_PORT=$PGB_PORT run_case "$c" idle --user bench --database bench --n "$BENCH_IDLE" --query
                sed -i '$ s/"case": "idle_clients_active"/"case": "idle_clients_active_pgbouncer"/' "$RESULTS"
            fi ;;
        statements) run_case "$c" statements "${trust[@]}" --n "$BENCH_STATEMENTS" ;;
        server_error) run_case "$c" server_error "${trust[@]}" --mb "$BENCH_ERROR_MB" ;;
        pipeline) run_case "$c" pipeline "${trust[@]}" --mb "$BENCH_PIPELINE_MB" --sleep 20 ;;
        copy_in) run_case "$c" copy_in "${trust[@]}" --mb "$BENCH_COPY_MB" ;;
        *) die "unknown case $c" ;;
    esac
done

# ---------------------------------------------------------------------------
# 5. The table.
# ---------------------------------------------------------------------------
"$PYTHON" - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'case':<26} {'RSS before':>11} {'peak':>9} {'growth':>9} {'retained':>9}  detail")
for r in rows:
    if r.get("failed"):
        print(f"{r['case']:<26} failed (see the log)")
        continue
    keys = ("case", "rss_before_mib", "rss_peak_mib", "growth_peak_mib", "rss_after_mib", "retained_mib")
    detail = ", ".join(f"{k}={v}" for k, v in r.items() if k not in keys)
    print(f"{r['case']:<26} {r['rss_before_mib']:>8} MiB {r['rss_peak_mib']:>5} MiB "
          f"{r['growth_peak_mib']:>5} MiB {r['retained_mib']:>5} MiB  {detail}")
# Side by side: KiB of RSS per idle logged-in client (issue 14: pgtenant <= 4 KiB).
per = {r["case"]: r for r in rows if not r.get("failed") and "kib_per_client" in r}
for label, ours, theirs in (("idle client", "idle_clients", "idle_clients_pgbouncer"),
                            ("idle client after a query", "idle_clients_active", "idle_clients_active_pgbouncer")):
    if ours in per or theirs in per:
        show = lambda c: f"{per[c]['kib_per_client']:.2f} KiB ({per[c]['clients']} clients)" if c in per else "not run"
        print(f"{label:<26} pgtenant {show(ours)}   PgBouncer 1.25 {show(theirs)}")
PY
