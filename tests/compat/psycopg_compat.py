#!/usr/bin/env python3
"""psycopg 3 through pgtenant (or straight to PostgreSQL, for comparison).

Usage: psycopg_compat.py CONNINFO MODE
  CONNINFO  a libpq conninfo or postgresql:// URL (the user must be able to create tables)
  MODE      transaction | session: the pool mode of the tenant (sets what is expected)

Prints one line per check and a final "psycopg: N passed, M failed"; exits 1 on any failure.
Needs psycopg[binary] on PYTHONPATH (tests/compat/setup.sh puts it in target/compat/python).
"""

import datetime
import decimal
import hashlib
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import errors

DRIVER = "psycopg"
if len(sys.argv) != 3 or sys.argv[2] not in ("transaction", "session"):
    sys.exit(__doc__)
DSN, MODE = sys.argv[1], sys.argv[2]
T = "pg3_"  # table prefix: the scripts can share a database

results = []


def check(name):
    def run(fn):
        started = time.monotonic()
        try:
            detail = fn()
            results.append(True)
            print(f"ok   {name} ({time.monotonic() - started:.2f}s){': ' + detail if detail else ''}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            results.append(False)
            state = getattr(e, "sqlstate", None)
            print(f"FAIL {name}: {type(e).__name__}{' [' + state + ']' if state else ''}: {e}".rstrip(), flush=True)
            for line in traceback.format_exc().splitlines()[-6:]:
                print(f"     | {line}", flush=True)
        return fn

    return run


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def connect(**kw):
    return psycopg.connect(DSN, connect_timeout=10, **kw)


def md5_rows(rows):
    return hashlib.md5(",".join(":".join(str(v) for v in r) for r in rows).encode()).hexdigest()


with connect(autocommit=True) as setup:
    setup.execute(
        f"""DROP TABLE IF EXISTS {T}kv, {T}acct, {T}copy, {T}load;
            CREATE TABLE {T}kv (k int PRIMARY KEY, v text NOT NULL);
            CREATE TABLE {T}acct (id int PRIMARY KEY, note text);
            CREATE TABLE {T}copy (id int PRIMARY KEY, name text, amount numeric(12,2));
            CREATE TABLE {T}load (client int, n int, PRIMARY KEY (client, n))"""
    )

conn = connect()  # psycopg's default: not autocommit, a transaction opens on first use


@check("parameterized queries (server-side and client-side binding)")
def _():
    with conn.cursor() as cur:
        cur.execute("SELECT %s::int + %s::int, %s::text || 'x', %s::text IS NULL", (40, 2, "a'b", None))
        expect(cur.fetchone() == (42, "a'bx", True), "server-side binding result")
        cur.execute("SELECT %(n)s::int * 2, %(s)s::text", {"n": 21, "s": "d\u00e9j\u00e0 vu"})
        expect(cur.fetchone() == (42, "d\u00e9j\u00e0 vu"), "named placeholders result")
    with psycopg.ClientCursor(conn) as cur:  # simple query protocol, values quoted by psycopg
        cur.execute("SELECT %s::int + 1, %s::text", (41, "it's"))
        expect(cur.fetchone() == (42, "it's"), "client-side binding result")
    conn.commit()


@check("prepared statements reused across 60 transactions")
def _():
    cur = conn.cursor()
    for i in range(60):
        with conn.transaction():
            cur.execute(f"INSERT INTO {T}kv VALUES (%s, %s)", (i, f"v{i}"), prepare=True)
            cur.execute(f"SELECT v FROM {T}kv WHERE k = %s", (i,), prepare=True)
            expect(cur.fetchone() == (f"v{i}",), f"row {i}")
            if i == 59:
                # Whatever server connection this transaction has, the statement is prepared on it.
                cur.execute(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                    (f"%{T}kv WHERE k = $1%",),
                )
                expect(cur.fetchone()[0] >= 1, "statement not prepared on the server")
    conn.commit()
    cur.execute(f"SELECT count(*), sum(k) FROM {T}kv")
    expect(cur.fetchone() == (60, sum(range(60))), "60 rows")
    conn.commit()
    return "prepare=True, 2 named statements"


@check("prepared statements, autocommit, statement cache eviction")
def _():
    with connect(autocommit=True) as c:
        c.prepared_max = 4  # evicted statements are closed (protocol Close with libpq >= 17)
        for round_ in range(3):
            for j in range(10):
                got = c.execute(f"SELECT %s::int + {j}", (round_,), prepare=True).fetchone()[0]
                expect(got == round_ + j, f"round {round_} statement {j}: {got}")
        return f"libpq {psycopg.pq.version()}"


@check("transaction rollback")
def _():
    class Undo(Exception):
        pass

    try:
        with conn.transaction():
            conn.execute(f"INSERT INTO {T}acct VALUES (1, 'rolled back')")
            expect(conn.execute(f"SELECT count(*) FROM {T}acct WHERE id = 1").fetchone()[0] == 1, "visible inside")
            raise Undo()
    except Undo:
        pass
    expect(conn.execute(f"SELECT count(*) FROM {T}acct WHERE id = 1").fetchone()[0] == 0, "row still there")
    conn.execute(f"INSERT INTO {T}acct VALUES (1, 'rolled back')")
    conn.rollback()
    expect(conn.execute(f"SELECT count(*) FROM {T}acct WHERE id = 1").fetchone()[0] == 0, "row still there")
    conn.rollback()


@check("transaction commit (seen from another connection)")
def _():
    with conn.transaction():
        conn.execute(f"INSERT INTO {T}acct VALUES (2, 'committed')")
    with connect() as other:
        got = other.execute(f"SELECT note FROM {T}acct WHERE id = 2").fetchone()
        expect(got == ("committed",), f"other connection sees {got}")


@check("error (22012) and recovery on the same connection")
def _():
    try:
        conn.execute("SELECT 1 / 0")
        raise AssertionError("no error")
    except errors.DivisionByZero as e:
        expect(e.sqlstate == "22012", e.sqlstate)
    try:
        conn.execute("SELECT 1")
        raise AssertionError("the failed transaction went on")
    except errors.InFailedSqlTransaction as e:
        expect(e.sqlstate == "25P02", e.sqlstate)
    conn.rollback()
    expect(conn.execute("SELECT 7").fetchone() == (7,), "query after rollback")
    conn.commit()
    # Autocommit: the error ends the statement, the next one just works.
    with connect(autocommit=True) as c:
        for _ in range(3):
            try:
                c.execute("SELECT 1 / %s::int", (0,), prepare=True)
                raise AssertionError("no error")
            except errors.DivisionByZero:
                pass
            expect(c.execute("SELECT %s::int", (8,), prepare=True).fetchone() == (8,), "after error")


@check("COPY FROM STDIN / TO STDOUT, text and binary")
def _():
    n = 5000
    rows = [
        (i, f"name {i}\t\\ \u00e9\n\"x\"" if i % 97 == 0 else f"name {i}", decimal.Decimal(f"{i * 7 % 10000}.{i % 100:02d}"))
        for i in range(1, n + 1)
    ]
    with conn.cursor() as cur:
        with cur.copy(f"COPY {T}copy (id, name, amount) FROM STDIN") as cp:
            for r in rows[: n // 2]:
                cp.write_row(r)
        with cur.copy(f"COPY {T}copy (id, name, amount) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "numeric"])
            for r in rows[n // 2 :]:
                cp.write_row(r)
        conn.commit()
        want = md5_rows(rows)
        cur.execute(
            f"SELECT count(*), md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id)) FROM {T}copy"
        )
        expect(cur.fetchone() == (n, want), "server-side count/checksum")
        out = []
        with cur.copy(f"COPY (SELECT id, name, amount FROM {T}copy ORDER BY id) TO STDOUT") as cp:
            cp.set_types(["int4", "text", "numeric"])
            out = list(cp.rows())
        expect(len(out) == n and md5_rows(out) == want, "text COPY TO checksum")
        with cur.copy(f"COPY (SELECT id, name, amount FROM {T}copy ORDER BY id) TO STDOUT (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "numeric"])
            out = list(cp.rows())
        expect(len(out) == n and md5_rows(out) == want, "binary COPY TO checksum")
    conn.commit()
    return f"{n} rows, md5 {want[:12]}"


@check("binary results: bytea, int8, numeric, timestamptz")
def _():
    blob = os.urandom(96 * 1024)
    num = decimal.Decimal("-12345678901234567890.123456789012345678901234567890")
    ts = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    with conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT %b::bytea, md5(%b::bytea), %s::int8, %s::int8, %s::numeric, %s::timestamptz, %s::numeric",
            (blob, blob, -(2**63), 2**63 - 1, num, ts, decimal.Decimal("NaN")),
        )
        b, digest, lo, hi, n, t, nan = cur.fetchone()
        expect(cur.pgresult.fformat(0) == 1, "result column not in binary format")
        expect(bytes(b) == blob, "bytea round trip")
        expect(digest == hashlib.md5(blob).hexdigest(), "bytea checksum on the server")
        expect((lo, hi) == (-(2**63), 2**63 - 1), f"int8 {lo} {hi}")
        expect(n == num, f"numeric {n}")
        expect(t == ts, f"timestamptz {t}")
        expect(nan.is_nan(), f"numeric NaN {nan}")
    conn.commit()
    return f"bytea {len(blob)} bytes"


@check("pipeline mode: 200 prepared inserts in flight, autocommit")
def _():
    with connect(autocommit=True) as c:
        with c.pipeline(), c.cursor() as cur:
            for i in range(1000, 1200):
                cur.execute(f"INSERT INTO {T}kv VALUES (%s, %s)", (i, f"p{i}"), prepare=True)
        got = c.execute(f"SELECT count(*), sum(k) FROM {T}kv WHERE k >= 1000").fetchone()
        expect(got == (200, sum(range(1000, 1200))), f"pipelined rows {got}")
        # An error in the pipeline: the following statements in that sync are skipped, the next work.
        try:
            with c.pipeline():
                c.execute("SELECT 1 / 0")
                c.execute("SELECT 1")
            raise AssertionError("no error")
        except errors.DivisionByZero:
            pass
        expect(c.execute("SELECT 9").fetchone() == (9,), "after pipeline error")


def pipeline_error_before_sync(c):
    """Issue 16: the error reaches the proxy before the rest of the pipeline and its Sync."""
    try:
        with c.pipeline():
            c.execute("SELECT * FROM no_such_table")
            time.sleep(0.2)  # the error arrives before the next statement and the Sync
            c.execute("SELECT %s::int + 41", (1,), prepare=True)
        raise AssertionError("no error from the pipeline")
    except errors.UndefinedTable:
        pass
    # The statement the server skipped is not prepared: psycopg prepares it again (PostgreSQL
    # itself prints (42,)).
    got = c.execute("SELECT %s::int + 41", (1,), prepare=True).fetchone()
    expect(got == (42,), f"prepared query after the pipeline error: {got}")
    got = c.execute("SELECT %s::int + 41", (2,), prepare=True).fetchone()
    expect(got == (43,), f"prepared query again: {got}")


@check("pipeline: an error before the next statement and the Sync, then a prepared query (issue 16)")
def _():
    with connect(autocommit=True) as c:
        pipeline_error_before_sync(c)
        expect(c.execute("SELECT 9").fetchone() == (9,), "after the pipeline error")


@check("pipeline errors before Sync on more idle clients than the pool, then a new client")
def _():
    # Transaction mode: each client is idle afterwards, so it holds no server connection (the
    # pool has 5). Session mode: each client holds one for its session; three fit beside the
    # main connection and the new client.
    n = 10 if MODE == "transaction" else 3
    clients = [connect(autocommit=True) for _ in range(n)]
    try:
        for c in clients:
            pipeline_error_before_sync(c)
        started = time.monotonic()
        with connect(autocommit=True) as fresh:
            expect(fresh.execute("SELECT 5").fetchone() == (5,), "a new client's query")
        elapsed = time.monotonic() - started
        expect(elapsed < 5, f"a new client waited {elapsed:.1f}s for a server connection")
        for i, c in enumerate(clients):
            expect(c.execute("SELECT %s::int", (i,)).fetchone() == (i,), f"client {i} afterwards")
        return f"{n} clients, new client served in {elapsed:.2f}s"
    finally:
        for c in clients:
            c.close()


@check("50 concurrent connections x 10 transactions")
def _():
    def client(cid):
        with connect() as c, c.cursor() as cur:
            for n in range(10):
                with c.transaction():
                    cur.execute(f"INSERT INTO {T}load VALUES (%s, %s)", (cid, n), prepare=True)
                    cur.execute(f"SELECT count(*), sum(n) FROM {T}load WHERE client = %s", (cid,), prepare=True)
                    got = cur.fetchone()
                    if got != (n + 1, n * (n + 1) // 2):
                        raise AssertionError(f"client {cid} transaction {n}: {got}")
        return cid

    with ThreadPoolExecutor(max_workers=50) as ex:
        done = list(ex.map(client, range(50)))
    expect(done == list(range(50)), "clients")
    got = conn.execute(f"SELECT count(*), count(DISTINCT client) FROM {T}load").fetchone()
    conn.commit()
    expect(got == (500, 50), f"rows {got}")


@check("cancel pg_sleep(10) (57014), other sessions busy")
def _():
    # Three other sessions sleep at the same time (with the main connection and this one, all
    # five server connections of the pool are busy): the CancelRequest must reach the target's
    # backend only.
    others = [connect(autocommit=True) for _ in range(3)]
    with connect(autocommit=True) as c, ThreadPoolExecutor(max_workers=3) as ex:
        busy = [ex.submit(o.execute, "SELECT pg_sleep(1.5)") for o in others]
        box = {}

        def sleeper():
            started = time.monotonic()
            try:
                c.execute("SELECT pg_sleep(10)")
            except Exception as e:  # noqa: BLE001
                box["err"] = e
            box["elapsed"] = time.monotonic() - started

        th = threading.Thread(target=sleeper)
        th.start()
        time.sleep(0.5)
        c.cancel_safe(timeout=5)
        th.join(15)
        e = box.get("err")
        expect(isinstance(e, errors.QueryCanceled), f"expected QueryCanceled, got {e!r}")
        expect(e.sqlstate == "57014", e.sqlstate)
        expect(box["elapsed"] < 3, f"took {box['elapsed']:.1f}s")
        expect(c.execute("SELECT 5").fetchone() == (5,), "connection usable after cancel")
        for f in busy:
            f.result(timeout=15)  # raises if one of the others was cancelled instead
        for o in others:
            o.close()
        return f"{box['elapsed']:.2f}s"


@check("server-side cursors: DECLARE in a transaction, WITH HOLD across commits")
def _():
    with connect() as c:
        with c.cursor(name="pg3_cur") as cur:
            cur.itersize = 100
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
            n = sum(1 for _ in cur)
            expect(n == 1000, f"{n} rows")
        c.commit()
        # WITH HOLD outlives the transaction (in transaction mode it pins the client). With a
        # parameter psycopg declares it through the extended protocol.
        with c.cursor(name="pg3_hold", withhold=True) as cur, connect() as other:
            cur.execute("SELECT g FROM generate_series(1, %s) g", (300,))
            c.commit()
            # Another client opens a transaction and keeps it: in transaction mode it gets the
            # most recently used idle server connection, which is this client's unless pgtenant
            # pinned the client to it.
            other.execute("SELECT 1")
            try:
                got = []
                while batch := cur.fetchmany(100):
                    got.extend(r[0] for r in batch)
                    c.commit()
                expect(got == list(range(1, 301)), f"{len(got)} rows through the held cursor")
            finally:
                other.rollback()
        c.commit()


# The two checks below let another client open a transaction and keep it while this client
# goes on: in transaction mode that client gets the most recently used idle server connection,
# which is this client's own unless pgtenant pinned the client to it.


@check(f"session SET across transactions, another client busy ({MODE} mode)")
def _():
    # SET on an autocommit connection: with psycopg's default (a transaction opened
    # implicitly) it would be a SET inside a transaction block, which in transaction mode lasts
    # that transaction only (documented in the README).
    with connect(autocommit=True) as c, connect() as other:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.execute("SET statement_timeout = '4321ms'")
        other_sees = other.execute("SHOW statement_timeout").fetchone()[0]
        try:
            for _ in range(3):
                expect(c.execute("SHOW statement_timeout").fetchone() == ("4321ms",), "SET lost")
            expect(other_sees == "0", f"another client sees this client's setting: {other_sees}")
            if MODE == "session":
                expect(c.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "session mode changed the backend")
        finally:
            other.rollback()


@check(f"temporary table across transactions, another client busy ({MODE} mode)")
def _():
    with connect(autocommit=True) as c, connect() as other:
        c.execute("CREATE TEMP TABLE scratch (x int)")
        leaked = other.execute("SELECT to_regclass('pg_temp.scratch') IS NOT NULL").fetchone()[0]
        try:
            for i in range(3):
                c.execute("INSERT INTO scratch VALUES (%s)", (i,))
            expect(c.execute("SELECT count(*) FROM scratch").fetchone() == (3,), "temp table rows")
            expect(not leaked, "another client sees this client's temporary table")
        finally:
            other.rollback()


conn.close()
passed, failed = results.count(True), results.count(False)
print(f"{DRIVER}: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
