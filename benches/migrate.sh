#!/usr/bin/env bash
# benches/migrate.sh — the tenant lifecycle CLI: creating tenants and migrating them, against
# the same work done by hand with psql, in one run on one throwaway cluster.
#
# What it measures, for BENCH_TENANTS tenants (default 100) in schema isolation:
#
#   create   `pgtenant tenant create tN --isolation schema --database tenants` for every
#            tenant, one after the other (one CLI process each): a role with a generated
#            password, CONNECT on `tenants`, a schema owned by the role, migration V001
#            (a `products` table, recorded in tN.pgtenant_migrations) and a seed of 1000
#            rows, plus the catalog row, the per-tenant lock and the events.
#   reference: the same objects made by hand, one psql call per tenant into the database
#            `manual` (schemas and roles mN): CREATE ROLE … LOGIN PASSWORD, GRANT CONNECT,
#            CREATE SCHEMA … AUTHORIZATION, SET ROLE, then the very V001 and seed files in
#            a transaction each. No history table, no catalog, no locks.
#   migrate  V002 (a column and an index) with `pgtenant migrate --all --parallel 1`, then
#            V003 (another column and index) with `--parallel 4`.
#   reference: the hand-rolled migration script: a serial loop of one psql call per
#            schema of `manual`, each `SET ROLE mN; SET search_path TO mN;` and the V002 file
#            in one transaction. Also, to tell what 4 at a time can give on this
#            machine at all, the V003 file applied to `manual` by psql calls 4 at a time.
#
# Every connection, pgtenant's and psql's, goes over TCP to 127.0.0.1 with SCRAM-SHA-256
# as the superuser `postgres` (pgtenant's catalog upstream admin, and its control database
# `pgtenant`), so both sides pay the same logins. Each case is timed as a whole with
# `date +%s.%N`, CLI process start-up included. The table shows per case the seconds, the
# tenants per second, and the ratio of that rate to the reference's (above 1: pgtenant is
# faster), plus parallel 4 / parallel 1 for pgtenant and for psql, and the load average.
# The run fails loudly if any pgtenant or psql call exits non-zero, if `pgtenant migrate`
# does not report every tenant migrated, if `pgtenant tenant status --json` does not show
# every tenant at version 3 and current, or if the `manual` schemas lack the new indexes.
#
# One run does everything:
#   1. builds pgtenant in release mode (or uses $PGTENANT_BIN),
#   2. starts a throwaway PostgreSQL cluster in a temp dir (SCRAM over TCP), creates the
#      control database, `pgtenant catalog init`, `pgtenant upstream add local`,
#   3. writes the migrations (V001) and seeds directories,
#   4. creates the tenants by hand (reference), then with pgtenant,
#   5. migrates: the serial psql loop (V002), pgtenant --parallel 1 (V002), pgtenant
#      --parallel 4 (V003), psql 4 at a time (V003), a CHECKPOINT before each case,
#   6. checks the result and prints the table.
# Note on what the ratios say: psql costs a process start and a SCRAM login per tenant
# (~25-30 ms on a small machine, more than the DDL itself), which is what a hand-rolled
# loop pays; `pgtenant tenant create` is a process per tenant too and logs in 5 times
# (control database, the upstream's admin database, 3 times the tenant's database), while
# `pgtenant migrate` is one process logging in once per tenant.
# Everything it started is stopped and the temp dir removed on exit.
#
# Environment:
#   BENCH_TENANTS    tenants created and migrated by each side (default 100)
#   PGTENANT_BIN     use this pgtenant binary instead of building one
#   BENCH_KEEP_LOGS  a directory to copy every log (pgtenant, psql, postgres) to before cleanup
#
# Usage: benches/migrate.sh        (as root, or as a user able to run initdb itself)
set -euo pipefail

TENANTS=${BENCH_TENANTS:-100}
SEED_ROWS=1000
PARALLEL=4           # --parallel of the second pgtenant migrate, and of the psql reference
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[migrate] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $TENANTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_TENANTS must be a positive number, not '$TENANTS'"

# Shared helpers: PostgreSQL binaries, running as the postgres user, free ports,
# the temp dir and its cleanup, the throwaway cluster.
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
command -v jq >/dev/null 2>&1 || die "jq not found (needed to read pgtenant tenant status --json)"

# ---------------------------------------------------------------------------
# Temp dir and cleanup.
# ---------------------------------------------------------------------------
REF_PIDS=()     # psql processes of the 4-at-a-time reference running now
# Run by cleanup before it stops postgres.
stop_own_jobs() {
    local p
    for p in "${REF_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${REF_PIDS[@]}"; do wait "$p" 2>/dev/null; done
}
make_tmp migrate migrations seeds

# Seconds since a `date +%s.%N` stamp, and rates/ratios with "-" for anything missing.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
per_sec() { awk -v n="$1" -v s="${2:-}" 'BEGIN { if (s == "" || s + 0 == 0) print "-"; else printf "%.1f", n / s }'; }
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || a == "-" || b == "" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

# ---------------------------------------------------------------------------
# 1. Build pgtenant.
# ---------------------------------------------------------------------------
build_pgtenant

# ---------------------------------------------------------------------------
# 2. Throwaway PostgreSQL cluster, control database, catalog, upstream.
# ---------------------------------------------------------------------------
# Superuser over the Unix socket for the script's own setup and checks (su_sql, never
# timed); SCRAM over TCP for everything measured.
init_cluster scram-sha-256
start_cluster -c max_connections=100 -c shared_buffers=128MB -c password_encryption=scram-sha-256

SU_PW="bench-$RANDOM$RANDOM"
su_sql -d postgres <<SQL
ALTER ROLE postgres PASSWORD '$SU_PW';
CREATE DATABASE pgtenant;
CREATE DATABASE manual;
SQL
# `tenants` is created by the first `pgtenant tenant create` (as it would be in production).

# psql over TCP with SCRAM, like pgtenant (the timed reference calls).
export PGPASSWORD=$SU_PW
tcp_sql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG_PORT user=postgres dbname=$1" "${@:2}"; }

# Every pgtenant call names the control database, the directories and an empty config
# file: the CLI would otherwise read ./config/pgtenant.toml (the repository's example)
# or $PGTENANT_CONFIG. Upstream and tenant passwords are stored encrypted with a
# throwaway master key, as in production.
CATALOG_URL="postgresql://postgres:$SU_PW@127.0.0.1:$PG_PORT/pgtenant"
MIGRATIONS=$TMP/migrations
SEEDS=$TMP/seeds
: >"$TMP/pgtenant.toml"
PGTENANT_MASTER_KEYS=$("$PGTENANT_BIN" catalog new-key bench) || die "pgtenant catalog new-key failed"
export PGTENANT_MASTER_KEYS
unset PGTENANT_CATALOG_URL PGTENANT_MIGRATIONS PGTENANT_SEEDS
export PGTENANT_CONFIG=$TMP/pgtenant.toml
pgt() { "$PGTENANT_BIN" "$@" --url "$CATALOG_URL" --migrations "$MIGRATIONS" --seeds "$SEEDS"; }

log "pgtenant catalog init, upstream add local ..."
"$PGTENANT_BIN" catalog init --url "$CATALOG_URL" >"$TMP/setup.log" 2>&1 \
    || { show_log "$TMP/setup.log"; die "pgtenant catalog init failed"; }
printf '%s\n' "$SU_PW" | "$PGTENANT_BIN" upstream add local --host 127.0.0.1 --port "$PG_PORT" \
    --admin-user postgres --admin-password-stdin --url "$CATALOG_URL" >>"$TMP/setup.log" 2>&1 \
    || { show_log "$TMP/setup.log"; die "pgtenant upstream add failed"; }

# ---------------------------------------------------------------------------
# 3. Migrations and seeds.
# ---------------------------------------------------------------------------
mkdir -p "$MIGRATIONS" "$SEEDS"
echo 'CREATE TABLE products (id serial PRIMARY KEY, name text, price numeric);' \
    >"$MIGRATIONS/V001__create_products.sql"
echo "INSERT INTO products (name, price) SELECT 'product ' || g, (g % 100) + 0.99 FROM generate_series(1, $SEED_ROWS) g;" \
    >"$SEEDS/001_products.sql"
# Added later, before each migrate run.
V002_SQL='ALTER TABLE products ADD COLUMN sku text;
CREATE INDEX ON products (sku);'
V003_SQL='ALTER TABLE products ADD COLUMN category text;
CREATE INDEX ON products (category);'
echo "$V002_SQL" >"$TMP/V002.sql"
echo "$V003_SQL" >"$TMP/V003.sql"
[[ $EUID -eq 0 ]] && chown -R postgres:postgres "$MIGRATIONS" "$SEEDS"

checkpoint() { su_sql -d postgres -c 'CHECKPOINT' >/dev/null; }

declare -A SECS

# ---------------------------------------------------------------------------
# 4. Create the tenants: by hand (reference), then with pgtenant.
# ---------------------------------------------------------------------------
# One psql per tenant: role, CONNECT, schema, then V001 and the seed as the tenant, each
# file in its own transaction (as pgtenant runs them).
manual_create() { # manual_create I
    local t=m$1
    tcp_sql manual <<SQL
CREATE ROLE $t LOGIN PASSWORD 'pw-$t-$RANDOM$RANDOM';
GRANT CONNECT ON DATABASE manual TO $t;
CREATE SCHEMA $t AUTHORIZATION $t;
SET ROLE $t;
SET search_path TO $t;
BEGIN;
\i $MIGRATIONS/V001__create_products.sql
COMMIT;
BEGIN;
\i $SEEDS/001_products.sql
COMMIT;
SQL
}

checkpoint
log "create, reference: $TENANTS x psql (role, schema, V001, seed) into database manual ..."
t0=$(now)
for i in $(seq 0 $((TENANTS - 1))); do
    manual_create "$i" >>"$TMP/manual-create.log" 2>&1 \
        || { show_log "$TMP/manual-create.log"; die "manual create of m$i failed"; }
done
SECS[create_ref]=$(since "$t0")
log "create, reference: ${SECS[create_ref]} s"

checkpoint
log "create: $TENANTS x pgtenant tenant create tN --isolation schema --database tenants ..."
t0=$(now)
for i in $(seq 0 $((TENANTS - 1))); do
    pgt tenant create "t$i" --isolation schema --database tenants >>"$TMP/create.log" 2>&1 \
        || { show_log "$TMP/create.log"; die "pgtenant tenant create t$i failed"; }
done
SECS[create]=$(since "$t0")
log "create: ${SECS[create]} s"

# ---------------------------------------------------------------------------
# 5. Migrations: psql loop (reference), pgtenant --parallel 1 (V002), --parallel 4 (V003).
# ---------------------------------------------------------------------------
# One psql per schema, the whole file in one transaction, as the tenant.
manual_migrate() { # manual_migrate I FILE
    tcp_sql manual <<SQL
BEGIN;
SET LOCAL ROLE m$1;
SET LOCAL search_path TO m$1;
\i $2
COMMIT;
SQL
}

checkpoint
log "migrate, reference: serial psql loop, V002 on $TENANTS schemas of manual ..."
t0=$(now)
for i in $(seq 0 $((TENANTS - 1))); do
    manual_migrate "$i" "$TMP/V002.sql" >>"$TMP/manual-migrate.log" 2>&1 \
        || { show_log "$TMP/manual-migrate.log"; die "manual V002 of m$i failed"; }
done
SECS[mig_ref1]=$(since "$t0")
log "migrate, reference serial: ${SECS[mig_ref1]} s"

# pgtenant migrate --all --parallel P, timed; checks its exit code and summary line.
pgt_migrate() { # pgt_migrate P KEY
    local p=$1 key=$2 logf=$TMP/migrate-p$1.log rc=0 t0
    checkpoint
    log "migrate: pgtenant migrate --all --parallel $p ..."
    t0=$(now)
    pgt migrate --all --parallel "$p" >"$logf" 2>&1 || rc=$?
    SECS[$key]=$(since "$t0")
    [[ $rc -eq 0 ]] || { show_log "$logf"; die "pgtenant migrate --parallel $p exited $rc"; }
    grep -q "^$TENANTS tenants: $TENANTS migrated, 0 already current, 0 failed, 0 skipped\$" "$logf" \
        || { show_log "$logf" 5; die "pgtenant migrate --parallel $p did not migrate all $TENANTS tenants"; }
    log "migrate --parallel $p: ${SECS[$key]} s"
}

echo "$V002_SQL" >"$MIGRATIONS/V002__products_sku.sql"
pgt_migrate 1 mig1

echo "$V003_SQL" >"$MIGRATIONS/V003__products_category.sql"
pgt_migrate "$PARALLEL" mig4

# Reference for 4 at a time: V003 on manual, at most PARALLEL psql calls running.
checkpoint
log "migrate, reference: psql $PARALLEL at a time, V003 on $TENANTS schemas of manual ..."
ref_fail=0
# ref_reap: wait for the oldest running call and count a failure. Oldest first, since
# bash's `wait -n` loses the status of a job that ended before it was called; the calls
# all do the same work, so they end in about the order they started.
ref_reap() {
    local rc=0
    wait "${REF_PIDS[0]}" || rc=$?
    [[ $rc -eq 0 ]] || ref_fail=$((ref_fail + 1))
    REF_PIDS=("${REF_PIDS[@]:1}")
}
t0=$(now)
REF_PIDS=()
for i in $(seq 0 $((TENANTS - 1))); do
    [[ ${#REF_PIDS[@]} -lt $PARALLEL ]] || ref_reap
    manual_migrate "$i" "$TMP/V003.sql" >"$TMP/manual-migrate4-$i.log" 2>&1 &
    REF_PIDS+=($!)
done
while [[ ${#REF_PIDS[@]} -gt 0 ]]; do ref_reap; done
SECS[mig_ref4]=$(since "$t0")
REF_PIDS=()
cat "$TMP"/manual-migrate4-*.log >"$TMP/manual-migrate4.log" 2>/dev/null
rm -f "$TMP"/manual-migrate4-*.log
[[ $ref_fail -eq 0 ]] || { show_log "$TMP/manual-migrate4.log"; die "$ref_fail psql V003 call(s) failed"; }
log "migrate, reference $PARALLEL at a time: ${SECS[mig_ref4]} s"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
# 6. Checks, then the table.
# ---------------------------------------------------------------------------
log "checking: pgtenant tenant status --json ..."
t0=$(now)
pgt tenant status --json >"$TMP/status.json" 2>"$TMP/status.log" \
    || { show_log "$TMP/status.log"; die "pgtenant tenant status exited non-zero"; }
STATUS_SECS=$(since "$t0")
bad=$(jq -r '.[] | select(.version != 3 or .latest != 3 or .behind != false or .error != null
        or .status != "active") | "\(.tenant): status \(.status) version \(.version) latest \(.latest) error \(.error)"' \
    "$TMP/status.json") || die "cannot read $TMP/status.json"
count=$(jq 'length' "$TMP/status.json")
if [[ $count -ne $TENANTS || -n $bad ]]; then
    log "tenant status: $count tenants; not at version 3:"
    printf '%s\n' "$bad" | head -n 10 >&2
    die "pgtenant tenant status does not show all $TENANTS tenants active at version 3"
fi
log "tenant status: all $TENANTS tenants active at version 3 (status took $STATUS_SECS s)"

# The data itself: every schema has its seed rows and both new indexes, on both sides.
check_db() { # check_db DATABASE SCHEMA_PREFIX
    su_sql -d "$1" -At -c "SELECT
        (SELECT count(*) FROM pg_indexes WHERE schemaname ~ '^$2[0-9]+\$' AND tablename = 'products'
             AND indexdef LIKE '%(sku)%'),
        (SELECT count(*) FROM pg_indexes WHERE schemaname ~ '^$2[0-9]+\$' AND tablename = 'products'
             AND indexdef LIKE '%(category)%'),
        (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname ~ '^$2[0-9]+\$' AND c.relname = 'products'
             AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = n.nspname))"
}
want="$TENANTS|$TENANTS|$TENANTS"
got=$(check_db tenants t) || die "cannot check database tenants"
[[ $got == "$want" ]] || die "database tenants: sku/category indexes, tenant-owned tables = $got, expected $want"
got=$(check_db manual m) || die "cannot check database manual"
[[ $got == "$want" ]] || die "database manual: sku/category indexes, tenant-owned tables = $got, expected $want"
rows=$(su_sql -d tenants -At -c "SELECT count(*) FROM t$((TENANTS - 1)).products")
[[ $rows -eq $SEED_ROWS ]] || die "t$((TENANTS - 1)).products has $rows rows, expected $SEED_ROWS"

CASES=(create create_ref mig1 mig4 mig_ref1 mig_ref4)
declare -A DESC=(
    [create]="create: pgtenant tenant create"
    [create_ref]="create: psql per tenant (ref)"
    [mig1]="migrate V002: pgtenant --parallel 1"
    [mig4]="migrate V003: pgtenant --parallel $PARALLEL"
    [mig_ref1]="migrate V002: psql loop, serial (ref)"
    [mig_ref4]="migrate V003: psql, $PARALLEL at a time"
)
declare -A REF=([create]=create_ref [create_ref]=create_ref [mig1]=mig_ref1 [mig4]=mig_ref1
    [mig_ref1]=mig_ref1 [mig_ref4]=mig_ref1)
declare -A RATE
for c in "${CASES[@]}"; do RATE[$c]=$(per_sec "$TENANTS" "${SECS[$c]:-}"); done

echo
echo "$TENANTS tenants, schema isolation in one database; V001 + a $SEED_ROWS-row seed at create,"
echo "then V002 and V003 (a column and an index each). pgtenant and psql over TCP, SCRAM-SHA-256."
echo "$(nproc) cores, load avg $LOADAVG (at the end of the last case)"
fmt_row='%-40s | %8s | %12s | %6s | %s\n'
# shellcheck disable=SC2059
printf "$fmt_row" case seconds "tenants/s" ratio "ratio against"
printf '%s\n' "-----------------------------------------+----------+--------------+--------+--------------"
for c in "${CASES[@]}"; do
    # shellcheck disable=SC2059
    printf "$fmt_row" "${DESC[$c]}" "${SECS[$c]:--}" "${RATE[$c]}" \
        "$(ratio "${RATE[$c]}" "${RATE[${REF[$c]}]}")" "${DESC[${REF[$c]}]#*: }"
done
echo "ratio: tenants/s of the case over tenants/s of the reference (above 1: faster)."
echo "parallel $PARALLEL / parallel 1: pgtenant $(ratio "${RATE[mig4]}" "${RATE[mig1]}")," \
    "psql $(ratio "${RATE[mig_ref4]}" "${RATE[mig_ref1]}")"
echo "checked: every pgtenant tenant active at version 3 (tenant status --json, ${STATUS_SECS}s)," \
    "both indexes and tenant-owned tables in all $TENANTS schemas of each database."
echo
