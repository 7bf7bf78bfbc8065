#!/usr/bin/env python3
"""asyncpg through pgtenant (or straight to PostgreSQL, for comparison).

Usage: asyncpg_compat.py URL MODE
  URL   a postgresql:// URL, or a simple libpq key=value conninfo (turned into a URL)
  MODE  transaction | session: the pool mode of the tenant (sets what is expected)

asyncpg prepares every query as a named statement (its statement cache) and uses binary
formats throughout; it runs with its defaults here (no statement_cache_size=0 workaround).
Prints one line per check and a final "asyncpg: N passed, M failed"; exits 1 on any failure.
"""

import asyncio
import datetime
import decimal
import hashlib
import io
import os
import sys
import time
import traceback

import asyncpg
from asyncpg import exceptions as exc

DRIVER = "asyncpg"
if len(sys.argv) != 3 or sys.argv[2] not in ("transaction", "session"):
    sys.exit(__doc__)
DSN, MODE = sys.argv[1], sys.argv[2]
T = "apg_"


def conninfo_to_url(dsn):
    """A simple libpq key=value conninfo (no quoting) as a postgresql:// URL; URLs unchanged."""
    if "://" in dsn:
        return dsn
    from urllib.parse import quote

    kv = dict(part.split("=", 1) for part in dsn.split())
    auth = quote(kv.pop("user", ""), safe="")
    if "password" in kv:
        auth += ":" + quote(kv.pop("password"), safe="")
    host = kv.pop("host", "localhost") + (":" + kv.pop("port") if "port" in kv else "")
    db = quote(kv.pop("dbname", ""), safe="")
    rest = "&".join(f"{k}={quote(v, safe='')}" for k, v in kv.items())
    return f"postgresql://{auth + '@' if auth else ''}{host}/{db}{'?' + rest if rest else ''}"


DSN = conninfo_to_url(DSN)

results = []


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


async def check(name, coro_fn):
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(coro_fn(), timeout=60)
        results.append(True)
        print(f"ok   {name} ({time.monotonic() - started:.2f}s){': ' + detail if detail else ''}", flush=True)
    except Exception as e:  # noqa: BLE001
        results.append(False)
        state = getattr(e, "sqlstate", None)
        print(f"FAIL {name}: {type(e).__name__}{' [' + state + ']' if state else ''}: {e}".rstrip(), flush=True)
        for line in traceback.format_exc().splitlines()[-6:]:
            print(f"     | {line}", flush=True)


def connect(**kw):
    return asyncpg.connect(DSN, timeout=10, **kw)


def md5_rows(rows):
    return hashlib.md5(",".join(":".join(str(v) for v in r) for r in rows).encode()).hexdigest()


async def main():
    setup = await connect()
    await setup.execute(
        f"""DROP TABLE IF EXISTS {T}kv, {T}acct, {T}copy, {T}load, {T}ddl, {T}many;
            DROP TYPE IF EXISTS {T}mood, {T}pair;
            CREATE TABLE {T}kv (k int PRIMARY KEY, v text NOT NULL);
            CREATE TABLE {T}acct (id int PRIMARY KEY, note text);
            CREATE TABLE {T}copy (id int PRIMARY KEY, name text, amount numeric(12,2));
            CREATE TABLE {T}load (client int, n int, PRIMARY KEY (client, n));
            CREATE TABLE {T}many (k int PRIMARY KEY, v text NOT NULL);
            CREATE TYPE {T}mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TYPE {T}pair AS (a int, b text)"""
    )
    await setup.close()
    conn = await connect()

    async def parameterized():
        row = await conn.fetchrow("SELECT $1::int + $2::int, $3::text || 'x', $4::text IS NULL", 40, 2, "a'b", None)
        expect(tuple(row) == (42, "a'bx", True), f"result {tuple(row)}")
        expect(await conn.fetchval("SELECT $1::text", "d\u00e9j\u00e0 vu") == "d\u00e9j\u00e0 vu", "unicode")
        # The simple query protocol too (execute without arguments).
        await conn.execute("SELECT 1; SELECT 2")

    await check("parameterized queries", parameterized)

    async def prepared():
        ins = await conn.prepare(f"INSERT INTO {T}kv VALUES ($1, $2)")
        sel = await conn.prepare(f"SELECT v FROM {T}kv WHERE k = $1")
        for i in range(60):
            async with conn.transaction():
                await ins.fetch(i, f"v{i}")
                expect(await sel.fetchval(i) == f"v{i}", f"row {i}")
                # The statement cache too: the same text twice is one named statement.
                expect(await conn.fetchval(f"SELECT count(*) FROM {T}kv WHERE k <= $1", i) == i + 1, f"count {i}")
        row = await conn.fetchrow(f"SELECT count(*), sum(k) FROM {T}kv")
        expect(tuple(row) == (60, sum(range(60))), f"rows {tuple(row)}")
        return f"statement cache holds {len(conn._stmt_cache)}"  # noqa: SLF001 - informational

    await check("prepared statements reused across 60 transactions", prepared)

    async def rollback():
        class Undo(Exception):
            pass

        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {T}acct VALUES (1, 'rolled back')")
                expect(await conn.fetchval(f"SELECT count(*) FROM {T}acct WHERE id = 1") == 1, "visible inside")
                raise Undo()
        except Undo:
            pass
        expect(await conn.fetchval(f"SELECT count(*) FROM {T}acct WHERE id = 1") == 0, "row still there")
        # A savepoint rolled back inside a committed transaction.
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {T}acct VALUES (3, 'outer')")
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {T}acct VALUES (4, 'inner')")
                    raise Undo()
            except Undo:
                pass
        got = await conn.fetch(f"SELECT id FROM {T}acct WHERE id IN (3, 4) ORDER BY id")
        expect([r["id"] for r in got] == [3], f"savepoint rollback left {got}")

    await check("transaction rollback (and savepoint)", rollback)

    async def commit():
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {T}acct VALUES (2, 'committed')")
        other = await connect()
        try:
            expect(await other.fetchval(f"SELECT note FROM {T}acct WHERE id = 2") == "committed", "not committed")
        finally:
            await other.close()

    await check("transaction commit (seen from another connection)", commit)

    async def error():
        try:
            await conn.fetchval("SELECT 1 / $1::int", 0)
            raise AssertionError("no error")
        except exc.DivisionByZeroError as e:
            expect(e.sqlstate == "22012", e.sqlstate)
        expect(await conn.fetchval("SELECT $1::int", 8) == 8, "after error")
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute("SELECT 1 / 0")
            raise AssertionError("no error")
        except exc.DivisionByZeroError:
            pass
        try:
            await conn.fetchval("SELECT 1")
            raise AssertionError("the failed transaction went on")
        except exc.InFailedSQLTransactionError as e:
            expect(e.sqlstate == "25P02", e.sqlstate)
        await tr.rollback()
        expect(await conn.fetchval("SELECT 7") == 7, "after rollback")

    await check("error (22012) and recovery on the same connection", error)

    async def copy():
        n = 5000
        rows = [
            (i, f"name {i}\t\\ \u00e9\n\"x\"" if i % 97 == 0 else f"name {i}", decimal.Decimal(f"{i * 7 % 10000}.{i % 100:02d}"))
            for i in range(1, n + 1)
        ]
        want = md5_rows(rows)
        # Binary COPY FROM STDIN.
        res = await conn.copy_records_to_table(f"{T}copy", records=rows[: n // 2], columns=["id", "name", "amount"])
        expect(res == f"COPY {n // 2}", res)
        # Text COPY FROM STDIN from a file-like source.
        buf = io.BytesIO()
        for i, name, amount in rows[n // 2 :]:
            esc = name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            buf.write(f"{i}\t{esc}\t{amount}\n".encode())
        buf.seek(0)
        res = await conn.copy_to_table(f"{T}copy", source=buf, columns=["id", "name", "amount"])
        expect(res == f"COPY {n - n // 2}", res)
        row = await conn.fetchrow(
            f"SELECT count(*), md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id)) FROM {T}copy"
        )
        expect(tuple(row) == (n, want), f"server-side count/checksum {tuple(row)}")
        # COPY TO STDOUT (CSV) into a file-like sink.
        out = io.BytesIO()
        res = await conn.copy_from_query(f"SELECT id, name, amount FROM {T}copy ORDER BY id", output=out, format="csv")
        expect(res == f"COPY {n}", res)
        import csv

        parsed = list(csv.reader(io.StringIO(out.getvalue().decode(), newline="")))
        expect(len(parsed) == n and md5_rows(parsed) == want, "COPY TO checksum")
        return f"{n} rows, md5 {want[:12]}"

    await check("COPY FROM STDIN (binary, text) / TO STDOUT (csv)", copy)

    async def binary():
        blob = os.urandom(96 * 1024)
        num = decimal.Decimal("-12345678901234567890.123456789012345678901234567890")
        ts = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
        row = await conn.fetchrow(
            "SELECT $1::bytea, md5($1::bytea), $2::int8, $3::int8, $4::numeric, $5::timestamptz, 'NaN'::numeric",
            blob,
            -(2**63),
            2**63 - 1,
            num,
            ts,
        )
        expect(row[0] == blob, "bytea round trip")
        expect(row[1] == hashlib.md5(blob).hexdigest(), "bytea checksum on the server")
        expect((row[2], row[3]) == (-(2**63), 2**63 - 1), "int8")
        expect(row[4] == num, f"numeric {row[4]}")
        expect(row[5] == ts, f"timestamptz {row[5]}")
        expect(row[6].is_nan(), "NaN")
        # Types asyncpg has to introspect (a named statement of its own): enum, composite, arrays.
        got = await conn.fetchrow(
            f"SELECT $1::{T}mood, ROW(1, 'x')::{T}pair, $2::{T}mood[], ARRAY[1,2,3]::int8[]",
            "happy",
            ["sad", "ok"],
        )
        expect(got[0] == "happy" and tuple(got[1]) == (1, "x") and got[2] == ["sad", "ok"] and got[3] == [1, 2, 3], f"{got}")
        return f"bytea {len(blob)} bytes"

    await check("binary results: bytea, int8, numeric, timestamptz, enum/composite", binary)

    async def executemany():
        await conn.executemany(f"INSERT INTO {T}kv VALUES ($1, $2)", [(i, f"m{i}") for i in range(1000, 1200)])
        row = await conn.fetchrow(f"SELECT count(*), sum(k) FROM {T}kv WHERE k >= 1000")
        expect(tuple(row) == (200, sum(range(1000, 1200))), f"{tuple(row)}")

    await check("executemany: 200 rows in one pipelined batch", executemany)

    # Issue 16: the error for the first row reaches the proxy while asyncpg is still sending
    # the batch (its Sync comes last). The whole batch is one implicit transaction: no row
    # stays, and the connection is idle again afterwards.
    big_batch = [(0, None)] + [(i, f"r{i}") for i in range(1, 5000)]

    async def failing_executemany(c):
        try:
            await c.executemany(f"INSERT INTO {T}many VALUES ($1, $2)", big_batch)
            raise AssertionError("no error for the first row")
        except exc.NotNullViolationError as e:
            expect(e.sqlstate == "23502", e.sqlstate)
        expect(await c.fetchval(f"SELECT count(*) FROM {T}many") == 0, "rows of the failed batch stayed")
        expect(await c.fetchval("SELECT $1::int + 41", 1) == 42, "prepared query after the failed batch")

    async def executemany_error():
        await failing_executemany(conn)
        await conn.executemany(f"INSERT INTO {T}many VALUES ($1, $2)", [(i, f"r{i}") for i in range(1, 5000)])
        expect(await conn.fetchval(f"SELECT count(*) FROM {T}many") == 4999, "the batch without the bad row")
        await conn.execute(f"DELETE FROM {T}many")

    await check("executemany: the first row of 5000 fails (23502), then the session goes on", executemany_error)

    async def executemany_error_pool():
        # Transaction mode: each client is idle afterwards and holds no server connection (the
        # pool has 5). Session mode: each holds one for its session; three fit beside the main
        # connection and the new client.
        n = 8 if MODE == "transaction" else 3
        clients = [await connect() for _ in range(n)]
        try:
            await asyncio.gather(*(failing_executemany(c) for c in clients))
            started = time.monotonic()
            fresh = await connect()
            try:
                expect(await fresh.fetchval("SELECT 5") == 5, "a new client's query")
            finally:
                await fresh.close()
            elapsed = time.monotonic() - started
            expect(elapsed < 5, f"a new client waited {elapsed:.1f}s for a server connection")
            for i, c in enumerate(clients):
                expect(await c.fetchval("SELECT $1::int", i) == i, f"client {i} afterwards")
            return f"{n} clients, new client served in {elapsed:.2f}s"
        finally:
            for c in clients:
                await c.close()

    await check("executemany failing on more clients than the pool, then a new client", executemany_error_pool)

    async def cursor_and_ddl():
        # A cursor with prefetch: Execute with a row limit, PortalSuspended, more Executes.
        async with conn.transaction():
            n, total = 0, 0
            async for r in conn.cursor("SELECT g FROM generate_series(1, 1000) g", prefetch=64):
                n += 1
                total += r["g"]
            expect((n, total) == (1000, 500500), f"cursor {n} {total}")
        # The result type of a cached statement changes: asyncpg re-prepares on its own.
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {T}ddl (a int); INSERT INTO {T}ddl VALUES (5)")
        expect(tuple(await conn.fetchrow(f"SELECT * FROM {T}ddl")) == (5,), "before ALTER")
        await conn.execute(f"ALTER TABLE {T}ddl ADD COLUMN b text DEFAULT 'x'")
        expect(tuple(await conn.fetchrow(f"SELECT * FROM {T}ddl")) == (5, "x"), "after ALTER")

    await check("cursor with prefetch; cached statement after ALTER TABLE", cursor_and_ddl)

    async def listen_notify():
        # add_listener sends LISTEN with fetch(): a named prepared statement (extended protocol).
        got = asyncio.Queue()
        c = await connect()
        other = await connect()
        try:
            await c.add_listener(f"{T}chan", lambda _c, _pid, _ch, payload: got.put_nowait(payload))
            for i in range(3):
                await other.execute(f"SELECT pg_notify('{T}chan', 'n{i}')")
                try:
                    payload = await asyncio.wait_for(got.get(), 3)
                except asyncio.TimeoutError:
                    raise AssertionError(f"notification {i} not delivered within 3s") from None
                expect(payload == f"n{i}", f"payload {payload}")
                expect(await c.fetchval("SELECT $1::int", i) == i, "listener connection still works")
        finally:
            await other.close()
            await c.close()

    await check("LISTEN/NOTIFY (add_listener)", listen_notify)

    async def concurrency():
        async def client(cid):
            c = await connect()
            try:
                for n in range(10):
                    async with c.transaction():
                        await c.execute(f"INSERT INTO {T}load VALUES ($1, $2)", cid, n)
                        got = await c.fetchrow(f"SELECT count(*), sum(n) FROM {T}load WHERE client = $1", cid)
                        if tuple(got) != (n + 1, n * (n + 1) // 2):
                            raise AssertionError(f"client {cid} transaction {n}: {tuple(got)}")
            finally:
                await c.close()

        await asyncio.gather(*(client(i) for i in range(50)))
        row = await conn.fetchrow(f"SELECT count(*), count(DISTINCT client) FROM {T}load WHERE client < 1000")
        expect(tuple(row) == (500, 50), f"{tuple(row)}")

    await check("50 concurrent connections x 10 transactions", concurrency)

    async def pool():
        # asyncpg's own pool: every release runs its reset query (pg_advisory_unlock_all(),
        # CLOSE ALL, UNLISTEN *, RESET ALL). In session mode each pooled connection holds a
        # server connection for good, so the pool must fit in the tenant's pool_size (5, one of
        # which the main connection of this script holds).
        size = 20 if MODE == "transaction" else 4
        p = await asyncpg.create_pool(DSN, min_size=size, max_size=size, timeout=10)
        try:
            async def client(cid):
                for n in range(10):
                    async with p.acquire() as c, c.transaction():
                        await c.execute(f"INSERT INTO {T}load VALUES ($1, $2)", cid, n)
                        got = await c.fetchrow(f"SELECT count(*), sum(n) FROM {T}load WHERE client = $1", cid)
                        if tuple(got) != (n + 1, n * (n + 1) // 2):
                            raise AssertionError(f"client {cid} transaction {n}: {tuple(got)}")

            await asyncio.gather(*(client(1000 + i) for i in range(50)))
        finally:
            await p.close()
        row = await conn.fetchrow(f"SELECT count(*), count(DISTINCT client) FROM {T}load WHERE client >= 1000")
        expect(tuple(row) == (500, 50), f"{tuple(row)}")
        return f"create_pool(size={size}), 50 tasks"

    await check("asyncpg pool: 50 tasks x 10 transactions, reset on release", pool)

    async def cancel():
        # asyncpg cancels a running query when its task is cancelled (here by wait_for's
        # timeout): it sends a CancelRequest and waits for the server's 57014 before the
        # connection is free again. The 57014 itself is consumed by the driver; a statement
        # timeout shows the same code to the application.
        c = await connect()
        try:
            started = time.monotonic()
            try:
                await asyncio.wait_for(c.fetchval("SELECT pg_sleep(10)"), timeout=0.5)
                raise AssertionError("no timeout")
            except asyncio.TimeoutError:
                pass
            expect(await c.fetchval("SELECT 5") == 5, "connection usable after cancel")
            elapsed = time.monotonic() - started
            expect(elapsed < 3, f"took {elapsed:.1f}s: the sleep was not cancelled")
            try:
                await c.execute("SET statement_timeout = '200ms'; SELECT pg_sleep(10)")
                raise AssertionError("no statement timeout")
            except exc.QueryCanceledError as e:
                expect(e.sqlstate == "57014", e.sqlstate)
            return f"{elapsed:.2f}s"
        finally:
            await c.close()

    await check("cancel pg_sleep(10) (57014)", cancel)

    # The two checks below let another client open a transaction and keep it while this
    # client goes on: in transaction mode that client gets the most recently used idle server
    # connection, which is this client's own unless pgtenant pinned the client to it.

    async def session_set():
        c = await connect()
        other = await connect()
        try:
            pid = await c.fetchval("SELECT pg_backend_pid()")
            await c.execute("SET statement_timeout = '4321ms'")
            tr = other.transaction()
            await tr.start()
            other_sees = await other.fetchval("SHOW statement_timeout")
            try:
                for _ in range(3):
                    expect(await c.fetchval("SHOW statement_timeout") == "4321ms", "SET lost")
                expect(other_sees == "0", f"another client sees this client's setting: {other_sees}")
                if MODE == "session":
                    expect(await c.fetchval("SELECT pg_backend_pid()") == pid, "session mode changed the backend")
            finally:
                await tr.rollback()
        finally:
            await other.close()
            await c.close()

    await check(f"session SET across transactions, another client busy ({MODE} mode)", session_set)

    async def temp_table():
        c = await connect()
        other = await connect()
        try:
            await c.execute("CREATE TEMP TABLE scratch (x int)")
            tr = other.transaction()
            await tr.start()
            leaked = await other.fetchval("SELECT to_regclass('pg_temp.scratch') IS NOT NULL")
            try:
                for i in range(3):
                    await c.execute("INSERT INTO scratch VALUES ($1)", i)
                expect(await c.fetchval("SELECT count(*) FROM scratch") == 3, "temp table rows")
                expect(not leaked, "another client sees this client's temporary table")
            finally:
                await tr.rollback()
        finally:
            await other.close()
            await c.close()

    await check(f"temporary table across transactions, another client busy ({MODE} mode)", temp_table)
    await conn.close()


asyncio.run(main())
passed, failed = results.count(True), results.count(False)
print(f"{DRIVER}: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
