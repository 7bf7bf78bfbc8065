#!/usr/bin/env python3
"""benches/handoff_cost.py — one raw-protocol session straight to PostgreSQL that sends, N
times, exactly what pgtenant sends a server connection at a cross-tenant handoff (VARIANT),
each followed by a primary-key SELECT as the new client's statement and read to its last
ReadyForQuery. benches/handoff_cost.sh runs it under callgrind with N = 0 and N > 0 and
divides the backend's instruction difference by N.

Variants (the search_path alternates between schemas t1 and t2):
  select    the SELECT alone (what a transaction costs without a handoff)
  handoff   today's handoff: DISCARD ALL and `SET search_path` as unsynced extended
            statements, then the reseed as a FunctionCall of setseed by OID
  select_reseed
            the handoff before the FunctionCall: DISCARD ALL, `SELECT
            pg_catalog.setseed($1)` and `SET search_path` unsynced, then an empty query
  guarded   `handoff` behind the guard `SET statement_timeout = 0` (a simple query)
  no_reseed DISCARD ALL and the SET unsynced, then an empty query (no reseed at all)

Prints the backend's PID. Usage: handoff_cost.py HOST PORT N VARIANT...   (as postgres,
trust authentication)
"""
import socket
import struct
import sys

from wire import query, reseed, startup, unsynced

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 42"
def variant(name, i):
    """The bytes of iteration i and the ReadyForQuerys they earn."""
    path = f"SET search_path TO t{1 + i % 2}"
    seed = 0.25
    if name == "select":
        return query(SELECT), 1
    if name == "handoff":
        return unsynced("DISCARD ALL") + unsynced(path) + reseed(seed) + query(SELECT), 2
    if name == "select_reseed":
        return (unsynced("DISCARD ALL") + unsynced("SELECT pg_catalog.setseed($1)", str(seed).encode()) + unsynced(path)
                + query("") + query(SELECT)), 2
    if name == "guarded":
        return (query("SET statement_timeout = 0") + unsynced("DISCARD ALL") + unsynced(path) + reseed(seed)
                + query(SELECT)), 3
    if name == "no_reseed":
        return unsynced("DISCARD ALL") + unsynced(path) + query("") + query(SELECT), 2
    if name == "appname_select":
        # A client that set application_name (pgbench, psql, most drivers): its setup as a
        # SELECT of set_config in a transaction of its own.
        return (unsynced("DISCARD ALL") + unsynced("BEGIN ISOLATION LEVEL READ COMMITTED") + unsynced(path)
                + unsynced("SELECT pg_catalog.set_config('application_name', 'pgbench', false)")
                + unsynced("COMMIT") + reseed(seed) + query(SELECT)), 2
    if name == "appname_set":
        # The same as a second SET.
        return (unsynced("DISCARD ALL") + unsynced(path) + unsynced("SET application_name TO 'pgbench'")
                + reseed(seed) + query(SELECT)), 2
    raise SystemExit(f"unknown variant {name}")


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(startup())
    buf = b""

    def until_ready(count):
        nonlocal buf
        seen, errors = 0, []
        while True:
            while len(buf) >= 5:
                length = struct.unpack("!I", buf[1:5])[0]
                if len(buf) < 1 + length:
                    break
                tag, body, buf = buf[0:1], buf[5:1 + length], buf[1 + length:]
                if tag == b"K":
                    print(struct.unpack("!I", body[:4])[0], flush=True)
                if tag == b"E":
                    errors.append(tag)
                if tag == b"Z":
                    seen += 1
                    if seen == count:
                        return errors
            data = s.recv(65536)
            if not data:
                raise SystemExit("server closed the connection")
            buf += data

    until_ready(1)
    s.sendall(query("SET search_path TO t1"))
    until_ready(1)
    for name in sys.argv[4:]:
        # Warm the caches (plans, catalog) the same way for every N, and check the replies.
        for i in range(50):
            data, count = variant(name, i)
            s.sendall(data)
            if until_ready(count):
                raise SystemExit(f"{name}: an error in the replies")
        for i in range(n):
            data, count = variant(name, i)
            s.sendall(data)
            until_ready(count)


if __name__ == "__main__":
    main()
