#!/usr/bin/env bash
# benches/many_tenants.sh — login and checkout cost of pgtenant as the catalog grows from 100 to
# 10,000 tenants and the active tenants from 10 to 1,000 (issue 14: both should stay flat).
#
# Setup: a throwaway cluster (SCRAM over TCP); a control database `pgtenant` (`pgtenant catalog
# init`) holding one upstream and the tenants t0 … tN-1, inserted with one INSERT … SELECT
# generate_series; every tenant in `shared` isolation on database `shared` as role `app`, so
# all share ONE pool of POOL_SIZE server connections (pgtenant sets pgtenant.tenant_id per
# tenant: a connection handed from one tenant to another is reset and set up again), and
# client authentication `trust` (SCRAM would add the same ~2 ms of PBKDF2 to every login and
# hide what depends on the tenant count). [catalog] lookup_rate_per_address = 0: all the
# clients come from 127.0.0.1.
#
# The clients are benches/many_tenants_client.py (raw protocol, one process, thousands of
# sockets); what is measured is pgtenant's own CPU time (its threads' schedstat) per login and
# per transaction, which does not depend on how fast the Python client is, plus wall times.
#
#   catalog 100    login cold   t0..t99 once each (each a catalog lookup)
#                  login warm   BENCH_LOGINS logins cycling over t0..t99 (cached)
#                  tx           BENCH_CLIENTS clients over 10 and 100 active tenants
#   catalog 10,000 (9,900 tenants inserted while pgtenant runs: its cache gets their NOTIFYs)
#                  login cold   t100..t1099 once each
#                  login warm   BENCH_LOGINS logins cycling over t0..t999, then over t0..t91
#                               (the small catalog's warm set: catalog size alone)
#                  tx           BENCH_CLIENTS clients over 10, 100 and 1,000 active tenants
#
# Each tx case: every client connected (logged in) first, then each runs `SELECT 1` in a loop,
# one query in flight, for BENCH_SECONDS; the proxy's CPU µs per transaction and the TPS.
#
# Environment:
#   BENCH_SECONDS     seconds per tx case (default 8)
#   BENCH_CLIENTS     clients in each tx case (default 3000: 3 per tenant at 1,000 tenants)
#   BENCH_LOGINS      logins in each warm login case (default 2000)
#   BENCH_TENANTS     tenants in the big catalog (default 10000)
#   PGTENANT_BIN      use this pgtenant binary instead of building one
#   PGTENANT_WORKERS  [proxy] workers (default 0 = automatic)
#   BENCH_KEEP_LOGS   a directory to copy the logs to before cleanup
#
# Usage: benches/many_tenants.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-8}
BENCH_CLIENTS=${BENCH_CLIENTS:-3000}
BENCH_LOGINS=${BENCH_LOGINS:-2000}
BIG=${BENCH_TENANTS:-10000}
SMALL=100
POOL_SIZE=20
PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLIENT=$REPO/benches/many_tenants_client.py

log() { printf '[many_tenants] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
[[ $BIG -ge 1100 ]] || die "BENCH_TENANTS must be at least 1100 (the cold logins of the big catalog)"
# The client holds BENCH_CLIENTS sockets, pgtenant as many plus its own: the soft limit goes
# up to the hard one (`ulimit -n N` would lower the hard limit too, and pgtenant's with it).
ulimit -Sn "$(ulimit -Hn)"
[[ $(ulimit -Sn) == unlimited || $(ulimit -Sn) -ge $((BENCH_CLIENTS + 1024)) ]] \
    || die "the open files limit ($(ulimit -Sn)) is below $((BENCH_CLIENTS + 1024))"

make_tmp many_tenants
build_pgtenant

# ---------------------------------------------------------------------------
# Cluster, control database, tenants.
# ---------------------------------------------------------------------------
init_cluster scram-sha-256
start_cluster -c max_connections=200 -c password_encryption=scram-sha-256
su_sql -d postgres <<'SQL'
ALTER ROLE postgres PASSWORD 'postgres';
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE DATABASE shared OWNER app;
CREATE DATABASE pgtenant;
SQL
CATALOG_URL="host=127.0.0.1 port=$PG_PORT user=postgres password=postgres dbname=pgtenant"

free_port PGT_PORT
cat >"$TMP/pgtenant.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PGT_PORT"
workers = $PGTENANT_WORKERS
max_client_conn = $((BENCH_CLIENTS + 100))

[pool]
mode = "transaction"
size = $POOL_SIZE

[catalog]
url = "$CATALOG_URL"
lookup_rate_per_address = 0
EOF
"$PGTENANT_BIN" catalog init --config "$TMP/pgtenant.toml" >"$TMP/catalog-init.log" 2>&1 \
    || { show_log "$TMP/catalog-init.log"; die "pgtenant catalog init failed"; }

# add_tenants FROM TO: tenants tFROM … tTO-1, in one statement.
add_tenants() {
    su_sql -d pgtenant -c "INSERT INTO pgtenant.tenants (id, status, isolation, upstream, database,
            login_role, login_password, pool_size, auth, login_kind)
        SELECT 't' || g, 'active', 'shared', 'local', 'shared', 'app', 'app', $POOL_SIZE, 'trust', 'shared'
          FROM generate_series($1, $2 - 1) g" >/dev/null
}
su_sql -d pgtenant -c "INSERT INTO pgtenant.upstreams (name, host, port, max_connections)
    VALUES ('local', '127.0.0.1', $PG_PORT, 150)" >/dev/null
add_tenants 0 $SMALL

log "starting pgtenant on 127.0.0.1:$PGT_PORT (workers=$PGTENANT_WORKERS) ..."
RUST_LOG=warn "$PGTENANT_BIN" serve --config "$TMP/pgtenant.toml" >"$TMP/pgtenant.log" 2>&1 &
PGT_PID=$!
for _ in $(seq 1 150); do
    kill -0 "$PGT_PID" 2>/dev/null || { show_log "$TMP/pgtenant.log"; die "pgtenant exited"; }
    "$PSQL" -X -q -At -h 127.0.0.1 -p "$PGT_PORT" -U app.t0 -d shared -c 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
done
got=$("$PSQL" -X -At -h 127.0.0.1 -p "$PGT_PORT" -U app.t7 -d shared -c "SELECT current_setting('pgtenant.tenant_id')") \
    || { show_log "$TMP/pgtenant.log"; die "no query through pgtenant"; }
[[ $got == t7 ]] || die "tenant t7 sees pgtenant.tenant_id '$got'"

# ---------------------------------------------------------------------------
# The cases.
# ---------------------------------------------------------------------------
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
# run CATALOG LABEL MODE ARGS…: one client run, its JSON line tagged and kept.
run() {
    local catalog=$1 label=$2 line
    shift 2
    log "catalog $catalog: $label ..."
    line=$(python3 "$CLIENT" "$@") || { show_log "$TMP/pgtenant.log"; die "client run failed: $*"; }
    printf '{"catalog": %s, "label": "%s", %s\n' "$catalog" "$label" "${line#\{}" >>"$RESULTS"
    log "  $line"
}
at() { echo "$PGT_PID 127.0.0.1 $PGT_PORT"; }

cases() { # cases CATALOG COLD_FROM WARM_TENANTS ACTIVE…
    local catalog=$1 cold=$2 warm=$3 a
    shift 3
    # shellcheck disable=SC2046
    run "$catalog" "login cold" login $(at) --first "$cold" --tenants "$warm" --logins "$warm"
    # shellcheck disable=SC2046
    run "$catalog" "login warm" login $(at) --tenants "$warm" --logins "$BENCH_LOGINS"
    if [[ $warm -ne $((SMALL - 8)) ]]; then
        # The same 92 tenants as the small catalog's warm case: catalog size alone.
        # shellcheck disable=SC2046
        run "$catalog" "login warm" login $(at) --tenants $((SMALL - 8)) --logins "$BENCH_LOGINS"
    fi
    for a in "$@"; do
        # shellcheck disable=SC2046
        run "$catalog" "tx, $a active" tx $(at) --tenants "$a" --clients "$BENCH_CLIENTS" --seconds "$BENCH_SECONDS"
    done
}

# A warm-up, not reported: the process's first thousand logins (allocator, page faults) would
# otherwise be charged to the small catalog's cases, which run first.
# shellcheck disable=SC2046
python3 "$CLIENT" login $(at) --tenants 1 --logins 1000 >/dev/null \
    || { show_log "$TMP/pgtenant.log"; die "warm-up failed"; }
# t0 and t7 were looked up by the checks above: the cold pass starts at t8 (92 tenants).
cases $SMALL 8 $((SMALL - 8)) 10 100
log "inserting tenants t$SMALL … t$((BIG - 1)) ..."
t0=$EPOCHREALTIME
add_tenants $SMALL "$BIG"
log "  $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s"
sleep 2   # the NOTIFYs of the insert reach pgtenant
cases "$BIG" $SMALL 1000 10 100 1000

# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------
echo
echo "pgtenant, shared isolation, one pool of $POOL_SIZE, trust clients, workers=$PGTENANT_WORKERS; $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'catalog':>8} | {'case':<18} | {'tenants':>7} | {'n':>6} | {'pgtenant CPU µs':>16} | {'wall':>12}")
print("-" * 9 + "+" + "-" * 20 + "+" + "-" * 9 + "+" + "-" * 8 + "+" + "-" * 18 + "+" + "-" * 13)
for r in rows:
    if r["case"] == "login":
        n, cpu, wall = r["logins"], f"{r['cpu_us_per_login']} /login", f"{r['wall_ms_per_login']} ms"
    else:
        n, cpu, wall = r["clients"], f"{r['cpu_us_per_tx']} /tx", f"{r['tps']:.0f} tps"
    print(f"{r['catalog']:>8} | {r['label']:<18} | {r['tenants']:>7} | {n:>6} | {cpu:>16} | {wall:>12}")
print("n: logins, or clients of a tx case. CPU: pgtenant's threads' time on CPU over the case.")
PY
echo
# Warnings beyond the expected ones (trust clients, plaintext catalog passwords).
if grep -v -e 'authentication is TRUST' -e 'plaintext' "$TMP/pgtenant.log" | grep -q .; then
    log "pgtenant logged at warn+ (last lines):"
    grep -v -e 'authentication is TRUST' -e 'plaintext' "$TMP/pgtenant.log" | tail -n 5 >&2
fi
