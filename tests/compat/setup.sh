#!/usr/bin/env bash
# Installs what the driver compatibility scripts in tests/compat need, into project-local
# directories where possible:
#   target/compat/python   psycopg 3 (binary) and asyncpg      (pip --target, from PyPI)
#   target/compat/node     pg and pg-copy-streams               (npm --prefix, from npm)
#   /usr/share/java/postgresql.jar  pgjdbc                      (Debian: libpostgresql-jdbc-java)
# Idempotent and fast when everything is present: each part is checked (the packages import,
# at the pinned versions) before anything is installed. Set COMPAT_DIR to install elsewhere.
# Needs root only when something has to come from Debian (python3-pip, nodejs/npm, a JDK, the
# JDBC jar), as on a fresh Debian 12 machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="${COMPAT_DIR:-$root/target/compat}"
python="${PYTHON:-python3}"

PSYCOPG_VERSION=3.3.9
ASYNCPG_VERSION=0.32.0
PG_VERSION=8.23.1
PG_COPY_STREAMS_VERSION=7.0.0
JDBC_JAR=/usr/share/java/postgresql.jar

log() { echo "setup.sh: $*" >&2; }

apt_updated=
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "need root to apt-get install $*"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only when they are missing or the package is not known yet.
    if [ -z "$apt_updated" ]; then
        local known=1 p
        for p in "$@"; do
            apt-cache show "$p" >/dev/null 2>&1 || known=
        done
        if [ -z "$known" ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
            log "apt-get update"
            apt-get update -qq >&2
        fi
        apt_updated=1
    fi
    log "apt-get install $*"
    if ! apt-get install -y -qq --no-install-recommends "$@" >&2; then
        # Stale lists (a package version gone from the mirror): refresh once and retry.
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "$@" >&2
    fi
}

# --- Python: psycopg 3 and asyncpg -------------------------------------------------------
py_dir="$dest/python"
py_ok() {
    PYTHONPATH="$py_dir" "$python" - "$PSYCOPG_VERSION" "$ASYNCPG_VERSION" >/dev/null 2>&1 <<'PY'
import sys, psycopg, asyncpg
from psycopg import pq
assert psycopg.__version__ == sys.argv[1], psycopg.__version__
assert asyncpg.__version__ == sys.argv[2], asyncpg.__version__
assert pq.__impl__ in ("binary", "c"), pq.__impl__
PY
}
if ! py_ok; then
    command -v "$python" >/dev/null || apt_install python3
    "$python" -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "pip install into $py_dir"
    rm -rf "$py_dir"
    mkdir -p "$py_dir"
    # --target skips the externally-managed check (PEP 668) of Debian's Python, as it should:
    # nothing is installed into the system.
    "$python" -m pip install --quiet --disable-pip-version-check --no-input --upgrade --root-user-action=ignore \
        --target "$py_dir" "psycopg[binary]==$PSYCOPG_VERSION" "asyncpg==$ASYNCPG_VERSION" >&2
    py_ok || { log "psycopg/asyncpg do not import after install"; exit 1; }
fi

# --- Node: pg and pg-copy-streams --------------------------------------------------------
node_dir="$dest/node"
node_ok() {
    NODE_PATH="$node_dir/node_modules" node -e '
        const want = { pg: process.argv[1], "pg-copy-streams": process.argv[2] };
        for (const [name, v] of Object.entries(want)) {
            require(name);
            const got = require(name + "/package.json").version;
            if (got !== v) throw new Error(name + " " + got);
        }' "$PG_VERSION" "$PG_COPY_STREAMS_VERSION" >/dev/null 2>&1
}
if ! command -v node >/dev/null 2>&1 || ! node_ok; then
    command -v node >/dev/null 2>&1 || apt_install nodejs
    command -v npm >/dev/null 2>&1 || apt_install npm
    log "npm install into $node_dir"
    mkdir -p "$node_dir"
    [ -f "$node_dir/package.json" ] || echo '{"name":"pgtenant-compat","private":true}' >"$node_dir/package.json"
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error \
        "pg@$PG_VERSION" "pg-copy-streams@$PG_COPY_STREAMS_VERSION" >&2
    node_ok || { log "pg/pg-copy-streams do not load after install"; exit 1; }
fi

# --- Java: a JDK and pgjdbc from Debian ---------------------------------------------------
need_java=()
command -v javac >/dev/null 2>&1 || need_java+=(default-jdk-headless)
[ -f "$JDBC_JAR" ] || need_java+=(libpostgresql-jdbc-java)
if [ "${#need_java[@]}" -gt 0 ]; then
    apt_install "${need_java[@]}"
fi
[ -f "$JDBC_JAR" ] || { log "$JDBC_JAR missing after install"; exit 1; }

log "ready: $py_dir, $node_dir, $JDBC_JAR"
