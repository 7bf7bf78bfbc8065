# benches/lib.sh — helpers shared by the benchmark scripts (sourced, not run).
# Expects log() and die() to be defined by the script that sources it.

# ---------------------------------------------------------------------------
# Locate the PostgreSQL server binaries and the client tools.
# ---------------------------------------------------------------------------
find_pg_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n $d && -x $d/initdb && -x $d/postgres ]]; then echo "$d"; return; fi
    fi
    # Debian/Ubuntu keep the server binaries out of PATH: take the newest major version.
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $d && -x $d/initdb && -x $d/postgres ]]; then echo "$d"; return; fi
    die "no PostgreSQL server binaries found (pg_config --bindir or /usr/lib/postgresql/*/bin)"
}
PG_BIN=$(find_pg_bindir)
PGBENCH=$(command -v pgbench || echo "$PG_BIN/pgbench")
PSQL=$(command -v psql || echo "$PG_BIN/psql")
[[ -x $PGBENCH ]] || die "pgbench not found"
[[ -x $PSQL ]] || die "psql not found"

# ---------------------------------------------------------------------------
# Processes that must not run as root (postgres, pgbouncer) run as the
# `postgres` system user when we are root.
# ---------------------------------------------------------------------------
AS_PG=()
if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' system user"
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
# Run a command as that user in the foreground.
as_pg() { "${AS_PG[@]}" "$@"; }
# Start a command as that user in the background; BG_PID gets the pid of the
# command itself (the subshell execs it, and setpriv execs too), so signals
# sent to BG_PID reach the server and not a wrapper.
BG_PID=""
as_pg_bg() { # as_pg_bg LOGFILE CMD...
    local logf=$1; shift
    ( exec "${AS_PG[@]}" "$@" ) >"$logf" 2>&1 &
    BG_PID=$!
}

# free_port VAR: set VAR to a TCP port no socket uses. Picks come from below the
# kernel's ephemeral range (32768+ here), where port-0 binds by tests running
# at the same time can't take them; each is checked against `ss` and never
# handed out twice by this script.
USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! ss -Htan 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
    die "no free TCP port found"
}


# Stop a process we started: signal, wait up to ~10 s, then SIGKILL.
stop_pid() {
    local pid=$1 sig=$2
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Print the tail of a log to stderr (for failures).
show_log() { log "--- last lines of $1 ---"; tail -n "${2:-20}" "$1" >&2 || true; }

# PGTENANT_BIN, or a release build of this repository.
build_pgtenant() {
    if [[ -n ${PGTENANT_BIN:-} ]]; then
        [[ -x $PGTENANT_BIN ]] || die "PGTENANT_BIN=$PGTENANT_BIN is not executable"
    else
        log "building pgtenant (cargo build --release) ..."
        (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
        PGTENANT_BIN=$REPO/target/release/pgtenant
    fi
}

# ---------------------------------------------------------------------------
# Temp dir and cleanup.
# ---------------------------------------------------------------------------
# Pids of the servers a script starts (empty: not started); cleanup stops them.
PG_PID="" PGT_PID="" PGB_PID=""
KEEP_DIRS=()

# make_tmp NAME [DIR...]: TMP=/tmp/pgtenant-NAME.XXXXXX, with cleanup as the EXIT trap
# and INT/TERM turned into exit 130. The DIRs (inside TMP) are copied to BENCH_KEEP_LOGS
# along with the *.log files.
make_tmp() {
    TMP=$(mktemp -d "/tmp/pgtenant-$1.XXXXXX")
    KEEP_DIRS=("${@:2}")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# The EXIT trap: the script's own processes first (its stop_own_jobs, when it defines
# one), then pgtenant, PgBouncer and postgres; the logs are copied to BENCH_KEEP_LOGS
# when set, and the temp dir is removed.
cleanup() {
    local rc=$?
    set +e
    declare -F stop_own_jobs >/dev/null && stop_own_jobs
    stop_pid "$PGT_PID" TERM   # pgtenant: graceful shutdown (no client is left by now)
    stop_pid "$PGB_PID" TERM   # pgbouncer: no clients are left, any shutdown mode is quick
    stop_pid "$PG_PID" INT     # postgres: SIGINT = fast shutdown
    if [[ -n ${BENCH_KEEP_LOGS:-} ]]; then
        mkdir -p "$BENCH_KEEP_LOGS" && cp -r "$TMP"/*.log "${KEEP_DIRS[@]/#/$TMP/}" "$BENCH_KEEP_LOGS"/ 2>/dev/null
        log "logs copied to $BENCH_KEEP_LOGS"
    fi
    rm -rf "$TMP"
    exit $rc
}

# ---------------------------------------------------------------------------
# The throwaway PostgreSQL cluster, in TMP.
# ---------------------------------------------------------------------------
# init_cluster TCP_AUTH: initdb into PG_DATA=$TMP/pgdata, with the server's Unix socket
# in PG_SOCK=$TMP/sock; when we are root, TMP (and all in it so far) goes to the
# postgres user. pg_hba.conf: trust over the Unix socket (the superuser's setup), TCP_AUTH
# (md5, scram-sha-256) over TCP from 127.0.0.1 for everyone; a script may append lines.
init_cluster() {
    local auth=$1
    PG_DATA=$TMP/pgdata
    PG_SOCK=$TMP/sock
    mkdir -p "$PG_SOCK"
    [[ $EUID -eq 0 ]] && chown -R postgres:postgres "$TMP"
    chmod 755 "$TMP"

    log "initdb ($PG_BIN) ..."
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$TMP/initdb.log" 2>&1 || { show_log "$TMP/initdb.log"; die "initdb failed"; }

    cat >"$PG_DATA/pg_hba.conf" <<HBA
local all all trust
host  all all 127.0.0.1/32 $auth
HBA
}

# start_cluster [-c NAME=VALUE ...]: start postgres on a free port (PG_PORT, pid in
# PG_PID), listening on 127.0.0.1 and PG_SOCK, with fsync and synchronous_commit off and
# the given settings, and wait until it accepts connections. On a port clash (another
# process bound the port meanwhile) try again on another port, up to 3 times.
start_cluster() {
    local attempt
    for attempt in 1 2 3; do
        free_port PG_PORT
        log "starting postgres on 127.0.0.1:$PG_PORT ..."
        as_pg_bg "$TMP/postgres.log" "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" -k "$PG_SOCK" \
            -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "$@"
        PG_PID=$BG_PID
        for _ in $(seq 1 100); do
            "$PG_BIN/pg_isready" -q -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres && return 0
            kill -0 "$PG_PID" 2>/dev/null || break
            sleep 0.1
        done
        show_log "$TMP/postgres.log" 5
        stop_pid "$PG_PID" INT
        PG_PID=""
        grep -q 'could not create' "$TMP/postgres.log" || break   # not a port clash
    done
    die "postgres did not start"
}

# psql as the superuser over the socket.
su_sql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres "$@"; }

# ---------------------------------------------------------------------------
# A proxy's own CPU time, and PgBouncer.
# ---------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: utime + stime of the process (all its threads), in CLK_TCK ticks; empty
# without a PID. /proc/PID/stat: the fields after "(comm)" start at field 3 (state), so
# utime (14) and stime (15) are the 12th and 13th after the last ')'.
cpu_ticks() {
    [[ -n ${1:-} && -r /proc/$1/stat ]] || return 0
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# user_ticks PID: utime alone (the proxy's own code and libraries; stime is the kernel's
# work for it: system calls, the TCP stack, wake-ups), in CLK_TCK ticks; empty without a PID.
user_ticks() {
    [[ -n ${1:-} && -r /proc/$1/stat ]] || return 0
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 }'
}

# find_pgbouncer MIN_VERSION: PGBOUNCER_BIN and PGBOUNCER_VERSION ("PgBouncer 1.25.2") from
# $PGBOUNCER, else `pgbouncer` in PATH, else /opt/pgbouncer-1.25/bin/pgbouncer (what
# ../shared/anchors/build-pgbouncer.sh installs). An explicit $PGBOUNCER older than
# MIN_VERSION is refused (exit); an older one found otherwise is skipped with a note, and
# PGBOUNCER_BIN stays empty.
find_pgbouncer() {
    local min=$1 bin="" v
    if [[ -n ${PGBOUNCER:-} ]]; then
        bin=$PGBOUNCER
        [[ -x $bin ]] || die "PGBOUNCER=$bin is not executable"
    else
        for bin in "$(command -v pgbouncer || true)" /opt/pgbouncer-1.25/bin/pgbouncer; do
            [[ -n $bin && -x $bin ]] || continue
            v=$("$bin" --version 2>/dev/null | awk 'NR == 1 { print $2 }')
            [[ $(printf '%s\n%s\n' "$min" "$v" | sort -V | head -n 1) == "$min" ]] && break
            log "note: skipping $bin (PgBouncer $v, older than $min)"
            bin=""
        done
        if [[ -z $bin ]]; then
            log "note: no PgBouncer $min+ found: no PgBouncer rows (build one with" \
                "../shared/anchors/build-pgbouncer.sh, or set PGBOUNCER)"
            return 0
        fi
    fi
    v=$("$bin" --version 2>/dev/null | awk 'NR == 1 { print $2 }')
    [[ $(printf '%s\n%s\n' "$min" "$v" | sort -V | head -n 1) == "$min" ]] \
        || die "$bin is PgBouncer '${v:-unknown}'; this bench needs $min or newer"
    PGBOUNCER_BIN=$bin
    PGBOUNCER_VERSION="PgBouncer $v"
}
