#!/usr/bin/env bash
# Installs spreaker's prometheus-pgbouncer-exporter 2.1.2 (PyPI) into a venv under target/,
# for the console e2e test. It pins psycopg2==2.8.5, which does not build on current Python:
# installed --no-deps, with psycopg2-binary and its other dependencies at its own pins.
# Idempotent: nothing is installed when the venv already runs the exporter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${EXPORTER_VENV:-$root/target/pgbouncer-exporter}"
check='import psycopg2, prometheus_pgbouncer_exporter, prometheus_client, pythonjsonlogger
from importlib.metadata import version
assert version("prometheus_client") == "0.8.0" and version("python-json-logger") == "0.1.11"'
if [ -x "$venv/bin/pgbouncer-exporter" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-deps prometheus-pgbouncer-exporter==2.1.2
"$venv/bin/pip" install -q psycopg2-binary prometheus_client==0.8.0 python-json-logger==0.1.11 'PyYAML>=5.4.1'
"$venv/bin/python" -c "$check"
