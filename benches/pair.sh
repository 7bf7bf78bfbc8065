# benches/pair.sh — the setup benches/compare.sh and benches/profile.sh share (sourced after
# lib.sh, not run): a throwaway cluster with a pgbench database, and pgtenant and PgBouncer
# in front of it configured alike (SCRAM clients, transaction mode, pool POOL_SIZE).
# Expects BENCH_SCALE, POOL_SIZE, PGTENANT_WORKERS, PGTENANT_BIN and (for PgBouncer)
# PGBOUNCER_BIN / PGBOUNCER_VERSION to be set.

# pair_cluster: SCRAM over TCP for everyone (the direct runs and both poolers upstream);
# role and database `bench` (password `bench`), `pgbench -i -s BENCH_SCALE`; VERIFIER gets
# the client's SCRAM verifier in PostgreSQL's format (pgtenant's tenant user and PgBouncer's
# auth_file take the same string). Exports PGPASSWORD=bench: every target asks for it.
pair_cluster() {
    init_cluster scram-sha-256
    start_cluster -c max_connections=300 -c password_encryption=scram-sha-256
    su_sql -d postgres <<'SQL'
CREATE ROLE bench LOGIN PASSWORD 'bench';
CREATE DATABASE bench OWNER bench;
SQL
    export PGPASSWORD=bench
    log "pgbench -i -s $BENCH_SCALE ..."
    "$PGBENCH" -i -s "$BENCH_SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U bench bench \
        >"$TMP/pgbench-init.log" 2>&1 || { show_log "$TMP/pgbench-init.log"; die "pgbench -i failed"; }
    VERIFIER=$(printf 'bench' | "$PGTENANT_BIN" hash-password) || die "pgtenant hash-password failed"
    # The role gets that same verifier: PgBouncer logs in upstream with the keys of the
    # client's SCRAM exchange (SCRAM pass-through), which only match the server's verifier
    # when salt and iterations are the same.
    su_sql -d postgres -c "ALTER ROLE bench PASSWORD '$VERIFIER'" >/dev/null
}

# wait_ready PORT USER PID LOG: until `psql -c 'select 1'` works through a proxy.
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

# pair_start_pgtenant: pgtenant on PGT_PORT (pid PGT_PID), SCRAM clients as bench.bench.
pair_start_pgtenant() {
    free_port PGT_PORT
    cat >"$TMP/pgtenant.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PGT_PORT"
workers = $PGTENANT_WORKERS
auth = "scram-sha-256"
max_client_conn = 1000

[pool]
mode = "transaction"
size = $POOL_SIZE

[[upstreams]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
max_connections = 200

[[tenants]]
id = "bench"
upstream = "local"
database = "bench"
role = "bench"
password = "bench"
pool_size = $POOL_SIZE

[[tenants.users]]
name = "bench"
verifier = "$VERIFIER"
EOF
    "$PGTENANT_BIN" check-config --config "$TMP/pgtenant.toml" >/dev/null || die "invalid generated config"
    log "starting pgtenant on 127.0.0.1:$PGT_PORT (workers=$PGTENANT_WORKERS) ..."
    RUST_LOG=warn "$PGTENANT_BIN" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
    PGT_PID=$!
    wait_ready "$PGT_PORT" bench.bench "$PGT_PID" "$TMP/pgtenant.log"
}

# pair_start_pgbouncer: PgBouncer on PGB_PORT (pid PGB_PID), SCRAM clients as bench (the
# auth_file holds the verifier), server connections logging in as bench by SCRAM pass-through,
# named prepared statements tracked (max_prepared_statements) so -M prepared works.
pair_start_pgbouncer() {
    free_port PGB_PORT
    printf '"bench" "%s"\n' "$VERIFIER" >"$TMP/userlist.txt"
    cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
max_prepared_statements = 200
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
EOF
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
    log "starting $PGBOUNCER_VERSION on 127.0.0.1:$PGB_PORT ..."
    as_pg_bg "$TMP/pgbouncer.out.log" "$PGBOUNCER_BIN" -q "$TMP/pgbouncer.ini"
    PGB_PID=$BG_PID
    wait_ready "$PGB_PORT" bench "$PGB_PID" "$TMP/pgbouncer.log"
}
