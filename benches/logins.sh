#!/usr/bin/env bash
# benches/logins.sh — logins per second with SCRAM-SHA-256 client authentication,
# through pgtenant and through PgBouncer, without TLS and with TLS, plus direct
# PostgreSQL as a reference.
#
# Every pgbench transaction opens a new connection:
#   pgbench -n -C -S -c 8 -j 2 -T $BENCH_SECONDS
# so tps ("including reconnection times") is logins per second.
#
# One run: throwaway PostgreSQL cluster (SCRAM over TCP, ssl on), `pgbench -i -s 1`,
# a self-signed certificate, pgtenant and PgBouncer both in transaction mode with
# pool size 10 and TLS for clients, then the cases below, then a table.
# Everything it started is stopped and the temp dir removed on exit.
#
# Environment:
#   BENCH_SECONDS     seconds per pgbench run (default 10)
#   PGTENANT_BIN      use this pgtenant binary (default target/release/pgtenant,
#                     built with `cargo build --release` only when missing)
#   BENCH_KEEP_LOGS   a directory to copy every log to before cleanup
#
# Usage: benches/logins.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-10}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[logins] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------------------
# Temp dir and cleanup.
# ---------------------------------------------------------------------------
make_tmp logins


# ---------------------------------------------------------------------------
# 1. pgtenant binary (build only when missing).
# ---------------------------------------------------------------------------
PGTENANT_BIN=${PGTENANT_BIN:-$REPO/target/release/pgtenant}
if [[ ! -x $PGTENANT_BIN ]]; then
    log "building pgtenant (cargo build --release) ..."
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
    PGTENANT_BIN=$REPO/target/release/pgtenant
fi
PGBOUNCER=$(command -v pgbouncer || ls /usr/sbin/pgbouncer 2>/dev/null || true)
[[ -n $PGBOUNCER ]] || die "pgbouncer not installed (apt-get install pgbouncer)"
command -v openssl >/dev/null || die "openssl not found"

# ---------------------------------------------------------------------------
# 2. TLS material (self-signed) and the SCRAM verifier of 'secret'.
# ---------------------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/server.key" -out "$TMP/server.crt" \
    -days 2 -subj /CN=localhost >"$TMP/openssl.log" 2>&1 \
    || { show_log "$TMP/openssl.log"; die "openssl req failed"; }
chmod 600 "$TMP/server.key"
VERIFIER=$(printf 'secret' | "$PGTENANT_BIN" hash-password) || die "pgtenant hash-password failed"
[[ $VERIFIER == SCRAM-SHA-256\$* ]] || die "unexpected verifier: $VERIFIER"

# ---------------------------------------------------------------------------
# 3. Throwaway PostgreSQL cluster: SCRAM over TCP, ssl on.
# ---------------------------------------------------------------------------
init_cluster scram-sha-256
start_cluster -c max_connections=300 -c password_encryption=scram-sha-256 \
    -c ssl=on -c ssl_cert_file="$TMP/server.crt" -c ssl_key_file="$TMP/server.key"

# The role's password is 'secret' and its stored SCRAM secret is the very same
# verifier the poolers check clients against: PgBouncer <= 1.25 overwrites a
# forced user's credentials ([databases] user=... password=...) with the SCRAM
# keys of the client that logged in (pgbouncer issues #944, #1461), so its
# server logins only succeed when both verifiers are identical.
su_sql -d postgres <<SQL
SET password_encryption = 'scram-sha-256';
CREATE ROLE bench LOGIN PASSWORD '$VERIFIER';
CREATE DATABASE bench OWNER bench;
SQL

log "pgbench -i -s 1 ..."
PGPASSWORD=secret PGSSLMODE=disable "$PGBENCH" -i -s 1 -q -h 127.0.0.1 -p "$PG_PORT" -U bench bench \
    >"$TMP/pgbench-init.log" 2>&1 || { show_log "$TMP/pgbench-init.log"; die "pgbench -i failed"; }

# Wait until `psql -c 'select 1'` works (port, user, password, pid, log).
wait_ready() {
    local port=$1 user=$2 pass=$3 pid=$4 logf=$5
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { show_log "$logf"; die "process $pid ($logf) exited"; }
        PGPASSWORD=$pass PGSSLMODE=disable PGCONNECT_TIMEOUT=5 timeout 10 "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U "$user" \
            -d bench -c 'select 1' >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    show_log "$logf"
    die "nothing answers on port $port after 30 s"
}

# ---------------------------------------------------------------------------
# 4. pgtenant: SCRAM for clients, TLS offered.
# ---------------------------------------------------------------------------
free_port PGT_PORT
cat >"$TMP/pgtenant.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PGT_PORT"
auth = "scram-sha-256"
max_auth_failures = 0

[tls]
cert = "$TMP/server.crt"
key = "$TMP/server.key"

[pool]
mode = "transaction"
size = 10

[[upstreams]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
sslmode = "disable"

[[tenants]]
id = "bench"
upstream = "local"
database = "bench"
role = "bench"
password = "secret"

[[tenants.users]]
name = "app"
verifier = "$VERIFIER"
EOF

log "starting pgtenant on 127.0.0.1:$PGT_PORT ..."
RUST_LOG=warn "$PGTENANT_BIN" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
PGT_PID=$!
wait_ready "$PGT_PORT" app.bench secret "$PGT_PID" "$TMP/pgtenant.log"

# ---------------------------------------------------------------------------
# 5. PgBouncer: SCRAM for clients (verifier in auth_file), TLS allowed.
# ---------------------------------------------------------------------------
free_port PGB_PORT
printf '"app" "%s"\n' "$VERIFIER" >"$TMP/userlist.txt"
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=bench password=secret

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = 10
max_client_conn = 1000
client_tls_sslmode = allow
client_tls_key_file = $TMP/server.key
client_tls_cert_file = $TMP/server.crt
server_login_retry = 1
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
EOF
[[ $EUID -eq 0 ]] && chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
log "starting pgbouncer on 127.0.0.1:$PGB_PORT ..."
as_pg_bg "$TMP/pgbouncer.out.log" "$PGBOUNCER" -q "$TMP/pgbouncer.ini"
PGB_PID=$BG_PID
wait_ready "$PGB_PORT" app secret "$PGB_PID" "$TMP/pgbouncer.log"

# ---------------------------------------------------------------------------
# 6. The runs.
# ---------------------------------------------------------------------------
# case|sslmode
CASES=("no TLS|disable" "TLS|require")
TARGETS=(direct pgtenant pgbouncer)

target_conn() { # user, password, port
    case $1 in
        direct)    echo "bench secret $PG_PORT" ;;
        pgtenant)  echo "app.bench secret $PGT_PORT" ;;
        pgbouncer) echo "app secret $PGB_PORT" ;;
    esac
}

declare -A TPS FAIL ERR
FAILED_RUNS=0
n=0
for c in "${CASES[@]}"; do
    name=${c%%|*}
    sslmode=${c#*|}
    for t in "${TARGETS[@]}"; do
        n=$((n + 1))
        out=$TMP/pgbench-$n-$t.log
        read -r user pass port <<<"$(target_conn "$t")"
        log "run: $name -> $t (sslmode=$sslmode, pgbench -n -C -S -c 8 -j 2 -T $BENCH_SECONDS)"
        rc=0
        PGPASSWORD=$pass PGSSLMODE=$sslmode "$PGBENCH" -n -C -S -c 8 -j 2 -T "$BENCH_SECONDS" \
            -h 127.0.0.1 -p "$port" -U "$user" bench >"$out" 2>&1 || rc=$?
        TPS[$name/$t]=$(awk '/^tps = / {print $3; exit}' "$out")
        FAIL[$name/$t]=$(awk -F'[:(]' '/^number of failed transactions/ {gsub(/ /,"",$2); print $2; exit}' "$out")
        if [[ $rc -ne 0 || -z ${TPS[$name/$t]} || ${FAIL[$name/$t]:-0} != 0 ]]; then
            FAILED_RUNS=$((FAILED_RUNS + 1))
            ERR[$name/$t]="exit $rc: $(grep -iE 'error|fatal|could not|failed' "$out" | head -n 3 | tr '\n' ' ')"
            log "FAILED: $name -> $t: ${ERR[$name/$t]}"
            show_log "$out" 15
        fi
    done
done

# ---------------------------------------------------------------------------
# 7. The table.
# ---------------------------------------------------------------------------
ratio() {
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
fmt() {
    awk -v v="${1:-}" 'BEGIN { if (v == "") print "-"; else printf("%.1f", v) }'
}

echo
echo "logins/s: pgbench -n -C -S -c 8 -j 2 -T $BENCH_SECONDS, SCRAM-SHA-256 client auth, pool size 10 (transaction mode), $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
fmt_row='%-7s | %-9s | %10s | %20s | %6s\n'
# shellcheck disable=SC2059
printf "$fmt_row" case target logins/s "pgtenant/pgbouncer" failed
printf '%s\n' "--------+-----------+------------+----------------------+-------"
for c in "${CASES[@]}"; do
    name=${c%%|*}
    for t in "${TARGETS[@]}"; do
        k=$name/$t
        r=""
        [[ $t == pgtenant ]] && r=$(ratio "${TPS[$k]}" "${TPS[$name/pgbouncer]}")
        # shellcheck disable=SC2059
        printf "$fmt_row" "$name" "$t" "$(fmt "${TPS[$k]}")" "$r" "${FAIL[$k]:--}"
    done
done
echo
for k in "${!ERR[@]}"; do echo "FAILED $k: ${ERR[$k]}"; done

if [[ -s $TMP/pgtenant.log ]]; then
    log "pgtenant logged $(wc -l <"$TMP/pgtenant.log") line(s) at warn+; last ones:"
    tail -n 5 "$TMP/pgtenant.log" >&2
fi
if grep -qiE 'error|warning' "$TMP/pgbouncer.log" 2>/dev/null; then
    log "pgbouncer errors/warnings (last ones):"
    grep -iE 'error|warning' "$TMP/pgbouncer.log" | tail -n 5 >&2
fi
[[ $FAILED_RUNS -eq 0 ]] || { log "$FAILED_RUNS pgbench run(s) failed"; exit 1; }
