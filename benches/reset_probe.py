#!/usr/bin/env python3
"""benches/reset_probe.py — checks on a real PostgreSQL the wire-level facts that a pipelined
cross-tenant reset relies on (the client's first bytes sent behind the reset instead of one
round trip later):

  1. DISCARD ALL sent as an unsynced extended-protocol statement (Parse/Bind/Execute, no Sync)
     after a simple Query runs, and is committed before the next simple Query: a client
     transaction that follows and rolls back does not bring back the previous session's
     settings, prepared statements or temporary tables;
  2. when that Execute fails, the simple Queries and extended messages behind it are skipped,
     not run, until a Sync;
  3. the session's setup sent the same way, followed by an empty query (a SET alone) or between
     BEGIN and COMMIT (unsynced), is committed before the client's messages: a client
     statement that fails right behind it does not roll it back; and when the setup fails,
     what follows is skipped until a Sync;
  4. DISCARD ALL keeps the state of random() (so the reset reseeds it); the reseed, a
     FunctionCall of setseed by OID sent last in the handoff, commits the setup before it (a
     client statement that fails behind it rolls back neither) and holds; behind a DISCARD ALL
     that fails it is skipped until the Sync, like the client's messages;
  5. in the setup's transaction, timeouts lifted by SET LOCAL come back at COMMIT as
     the session had them, unless the setup sets them for the session (set_config(…, false)).

Usage: reset_probe.py SOCKET_DIR PORT   (as `postgres` over the Unix socket, trust
authentication); benches/reset_probe.sh starts a throwaway cluster and runs it. Exits 1 if a
fact does not hold.
"""
import socket
import struct
import sys

from wire import msg, query, reseed, startup, unsynced


def setup(sql):
    """The session's setup as pgtenant sends it: BEGIN, `sql`, COMMIT, each unsynced."""
    return unsynced("BEGIN") + unsynced(sql) + unsynced("COMMIT")


class Conn:
    def __init__(self, sock_dir, port):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(f"{sock_dir}/.s.PGSQL.{port}")
        self.s.sendall(startup())
        self.buf = b""
        self.until_ready()

    def until_ready(self, n=1):
        """Messages up to the n-th ReadyForQuery, as (tag, body)."""
        out = []
        while sum(1 for t, _ in out if t == b"Z") < n:
            while len(self.buf) < 5 or len(self.buf) < struct.unpack("!i", self.buf[1:5])[0] + 1:
                data = self.s.recv(65536)
                if not data:
                    raise RuntimeError("connection closed")
                self.buf += data
            n_len = struct.unpack("!i", self.buf[1:5])[0]
            out.append((self.buf[:1], self.buf[5:n_len + 1]))
            self.buf = self.buf[n_len + 1:]
        return out

    def value(self, sql):
        rows = [b for t, b in self.until_ready_after(query(sql)) if t == b"D"]
        return rows[0][6:].decode()  # one row, one column: count(2) + len(4) + value

    def until_ready_after(self, data, n=1):
        self.s.sendall(data)
        return self.until_ready(n)


def tags(msgs):
    return " ".join(t.decode() for t, _ in msgs)


def main():
    c = Conn(sys.argv[1], sys.argv[2])
    ok = True
    # The previous tenant's session: a setting, a search_path, a temp table, a statement.
    c.until_ready_after(query("SET work_mem = '77MB'; SET search_path TO prev; "
                              "CREATE TEMP TABLE t (x int); PREPARE p AS SELECT 1"))
    # 1. Guard (simple), DISCARD ALL (unsynced extended), setup (unsynced, between BEGIN and
    #    COMMIT), then the client's transaction, rolled back.
    got = c.until_ready_after(query("SET statement_timeout = 0; SET lock_timeout = 0")
                              + unsynced("DISCARD ALL") + setup("SET search_path TO t1")
                              + query("BEGIN") + query("SELECT 1") + query("ROLLBACK"), 4)
    print("handoff replies:", tags(got))
    errors = [b for t, b in got if t == b"E"]
    state = c.value("SELECT current_setting('work_mem') || ' ' || current_setting('search_path') || ' '"
                    " || (SELECT count(*) FROM pg_prepared_statements) || ' '"
                    " || coalesce(to_regclass('pg_temp.t')::text, 'no-temp')")
    print("after the client's rollback:", state)
    if errors or state != "4MB t1 0 no-temp":
        print("FAIL: DISCARD ALL did not run, or was not committed before the client's transaction")
        ok = False
    # 2. A failing unsynced Execute: what follows must not run until a Sync.
    c.until_ready_after(query("DROP TABLE IF EXISTS marker1, marker2"))
    c.s.sendall(unsynced("SELECT 1/0") + query("SET search_path TO t2")
                + query("CREATE TABLE marker1 ()") + unsynced("CREATE TABLE marker2 ()"))
    got = c.until_ready_after(msg(b"S", b""))
    print("failed reset replies:", tags(got))
    state = c.value("SELECT (to_regclass('marker1') IS NULL AND to_regclass('marker2') IS NULL)::text"
                    " || ' ' || current_setting('search_path')")
    print("after the failed reset (skipped?, search_path):", state)
    if state != "true t1":
        print("FAIL: messages behind the failed reset ran")
        ok = False
    # 3a. A SET alone then an empty query (what pgtenant sends for the tenant's search_path),
    #     then a client statement that fails: the SET stays, and its replies come at once.
    got = c.until_ready_after(unsynced("SET search_path TO t5") + query("") + query("SELECT 1/0"), 2)
    state = c.value("SELECT current_setting('search_path')")
    print("SET and an empty query, then a failing client statement:", tags(got), "->", state)
    if state != "t5":
        print("FAIL: the client's failing statement rolled the SET back")
        ok = False
    # 3. The setup, then a client statement that fails: the setup stays. Then a setup that
    #    fails: what follows is skipped until a Sync.
    got = c.until_ready_after(setup("SET search_path TO t3") + query("SELECT 1/0"))
    state = c.value("SELECT current_setting('search_path')")
    print("setup, then a failing client statement:", tags(got), "->", state)
    if state != "t3":
        print("FAIL: the client's failing statement rolled the setup back")
        ok = False
    c.until_ready_after(query("DROP TABLE IF EXISTS marker3"))
    c.s.sendall(setup("SELECT pg_catalog.set_config('search_path', 't4', false), "
                      "pg_catalog.set_config('default_text_search_config', 'no.such', false)")
                + query("CREATE TABLE marker3 ()"))
    got = c.until_ready_after(msg(b"S", b""))
    print("failed setup replies:", tags(got))
    c.until_ready_after(query("ROLLBACK"))
    state = c.value("SELECT (to_regclass('marker3') IS NULL)::text || ' ' || current_setting('search_path')")
    print("after the failed setup (skipped?, search_path):", state)
    if state != "true t3":
        print("FAIL: messages behind the failed setup ran, or the setup half applied")
        ok = False
    # 4. random(): what setseed(0.5) makes it draw first, then the same through DISCARD ALL,
    #    then through DISCARD ALL, the reseed and a failing client statement in their implicit
    #    transaction.
    def draw_after(prefix, n=1):
        c.until_ready_after(prefix, n)
        return c.value("SELECT random()::text")
    seeded = draw_after(query("SELECT setseed(0.5)"))
    kept = draw_after(query("SELECT setseed(0.5)") + query("DISCARD ALL"), 2)
    c.until_ready_after(query("SELECT setseed(0.5)"))
    reseeded = draw_after(unsynced("DISCARD ALL") + unsynced("SET search_path TO t4") + reseed(0.123)
                          + unsynced("SELECT 1/0") + msg(b"S", b""), 2)
    path = c.value("SELECT current_setting('search_path')")
    print("random() after setseed(0.5):", seeded, "| through DISCARD ALL:", kept, "| reseeded:", reseeded,
          "| search_path committed by it:", path)
    if kept != seeded or reseeded == seeded or path != "t4":
        print("FAIL: DISCARD ALL reset random()'s state, or the reseed did not hold or commit the setup")
        ok = False
    # A failed DISCARD ALL (in a transaction block): the reseed behind it is skipped, no
    # FunctionCallResponse before the Sync's ReadyForQuery.
    c.until_ready_after(query("BEGIN"))
    got = c.until_ready_after(unsynced("DISCARD ALL") + reseed(0.5) + msg(b"S", b""))
    c.until_ready_after(query("ROLLBACK"))
    print("reseed behind a failed DISCARD ALL:", tags(got))
    if "V" in tags(got).split():
        print("FAIL: the reseed ran behind a failed DISCARD ALL")
        ok = False
    # 5. The guard: lifted for the setup's transaction, back (or the setup's value) after COMMIT.
    guard = "SET LOCAL lock_timeout = 0"
    c.until_ready_after(query("SET lock_timeout = '100ms'"))
    got = c.until_ready_after(unsynced("BEGIN") + unsynced(guard) + unsynced("SELECT 1") + unsynced("COMMIT")
                              + msg(b"S", b""))
    back = c.value("SELECT current_setting('lock_timeout')")
    c.until_ready_after(unsynced("BEGIN") + unsynced(guard)
                        + unsynced("SELECT pg_catalog.set_config('lock_timeout', NULL, false)")
                        + unsynced("COMMIT") + msg(b"S", b""))
    reset = c.value("SELECT current_setting('lock_timeout')")
    print("lock_timeout after a guarded setup:", back, "| with the setup resetting it:", reset)
    if back != "100ms" or reset != "0":
        print("FAIL: the guard's SET LOCAL outlived the setup's transaction, or hid its value")
        ok = False
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
