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
