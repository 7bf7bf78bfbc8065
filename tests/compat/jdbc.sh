#!/usr/bin/env bash
# Compiles tests/compat/jdbc/Compat.java with the machine's javac against Debian's pgjdbc
# (libpostgresql-jdbc-java) into a temporary directory and runs it.
# Usage: jdbc.sh URL MODE   (see Compat.java)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jar="${PGJDBC_JAR:-/usr/share/java/postgresql.jar}"
[ -f "$jar" ] || { echo "jdbc.sh: $jar missing: run tests/compat/setup.sh" >&2; exit 2; }
classes="$(mktemp -d "${TMPDIR:-/tmp}/pgtenant-jdbc.XXXXXX")"
trap 'rm -rf "$classes"' EXIT
javac -nowarn -encoding UTF-8 -d "$classes" -cp "$jar" "$here/jdbc/Compat.java"
# Small heap and fast start: the checks are short.
java -Xss512k -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dfile.encoding=UTF-8 \
    -cp "$classes:$jar" Compat "$@"
