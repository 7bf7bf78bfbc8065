#!/usr/bin/env node
// node-postgres (pg) through pgtenant (or straight to PostgreSQL, for comparison).
//
// Usage: node node_pg_compat.js URL MODE
//   URL   a postgresql:// URL (pg's connectionString), or a simple libpq key=value conninfo
//   MODE  transaction | session: the pool mode of the tenant (sets what is expected)
//
// Prints one line per check and a final "node-postgres: N passed, M failed"; exits 1 on any
// failure. Needs pg and pg-copy-streams on NODE_PATH (tests/compat/setup.sh puts them in
// target/compat/node/node_modules).
'use strict';

const crypto = require('crypto');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const pg = require('pg');
const copyStreams = require('pg-copy-streams');

const DRIVER = 'node-postgres';
const [dsn, MODE] = process.argv.slice(2);
if (!dsn || !['transaction', 'session'].includes(MODE)) {
  console.error('usage: node_pg_compat.js URL|CONNINFO transaction|session');
  process.exit(2);
}

// A simple libpq key=value conninfo (no quoting) as a postgresql:// URL; URLs unchanged.
function conninfoToUrl(s) {
  if (s.includes('://')) return s;
  const kv = Object.fromEntries(s.trim().split(/\s+/).map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  const e = encodeURIComponent;
  let auth = kv.user ? e(kv.user) : '';
  if (kv.password !== undefined) auth += ':' + e(kv.password);
  const host = (kv.host || 'localhost') + (kv.port ? ':' + kv.port : '');
  const rest = Object.entries(kv)
    .filter(([k]) => !['user', 'password', 'host', 'port', 'dbname'].includes(k))
    .map(([k, v]) => `${k}=${e(v)}`)
    .join('&');
  return `postgresql://${auth ? auth + '@' : ''}${host}/${e(kv.dbname || '')}${rest ? '?' + rest : ''}`;
}
const url = conninfoToUrl(dsn);
const T = 'npg_';
const results = [];

function expect(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function check(name, fn) {
  const started = Date.now();
  try {
    const detail = await Promise.race([
      fn(),
      new Promise((_, reject) => setTimeout(() => reject(new Error('check timed out after 60s')), 60000).unref()),
    ]);
    results.push(true);
    console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(2)}s)${detail ? ': ' + detail : ''}`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL ${name}: ${e.code ? '[' + e.code + '] ' : ''}${e.message}`);
    for (const line of String(e.stack || '').split('\n').slice(1, 5)) console.log(`     | ${line.trim()}`);
  }
}

async function connect(extra = {}) {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10000, ...extra });
  await c.connect();
  return c;
}

const md5Rows = (rows) =>
  crypto.createHash('md5').update(rows.map((r) => r.join(':')).join(',')).digest('hex');

async function expectCode(promise, code) {
  try {
    await promise;
  } catch (e) {
    expect(e.code === code, `expected SQLSTATE ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  throw new Error(`expected SQLSTATE ${code}, got success`);
}

async function main() {
  const setup = await connect();
  await setup.query(`DROP TABLE IF EXISTS ${T}kv, ${T}acct, ${T}copy, ${T}load;
    CREATE TABLE ${T}kv (k int PRIMARY KEY, v text NOT NULL);
    CREATE TABLE ${T}acct (id int PRIMARY KEY, note text);
    CREATE TABLE ${T}copy (id int PRIMARY KEY, name text, amount numeric(12,2));
    CREATE TABLE ${T}load (client int, n int, PRIMARY KEY (client, n))`);
  await setup.end();
  const client = await connect();

  await check('parameterized queries', async () => {
    const r = await client.query("SELECT $1::int + $2::int AS s, $3::text || 'x' AS t, $4::text IS NULL AS n", [
      40, 2, "a'b", null,
    ]);
    expect(r.rows[0].s === 42 && r.rows[0].t === "a'bx" && r.rows[0].n === true, JSON.stringify(r.rows[0]));
    const arr = await client.query({ text: 'SELECT $1::text AS a, $2::int[] AS b', values: ['déjà vu', [1, 2]], rowMode: 'array' });
    expect(arr.rows[0][0] === 'déjà vu' && arr.rows[0][1].join() === '1,2', JSON.stringify(arr.rows[0]));
  });

  await check('named prepared statements reused across 60 transactions', async () => {
    for (let i = 0; i < 60; i++) {
      await client.query('BEGIN');
      await client.query({ name: 'npg-insert', text: `INSERT INTO ${T}kv VALUES ($1, $2)`, values: [i, `v${i}`] });
      const r = await client.query({ name: 'npg-select', text: `SELECT v FROM ${T}kv WHERE k = $1`, values: [i] });
      expect(r.rows[0].v === `v${i}`, `row ${i}: ${JSON.stringify(r.rows)}`);
      await client.query('COMMIT');
    }
    const r = await client.query(`SELECT count(*)::int AS n, sum(k)::int AS s FROM ${T}kv`);
    expect(r.rows[0].n === 60 && r.rows[0].s === 1770, JSON.stringify(r.rows[0]));
    // pg parses a named statement once per connection and only binds it afterwards.
    return `parsed once per connection: ${Object.keys(client.connection.parsedStatements).join(', ')}`;
  });

  await check('transaction rollback', async () => {
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${T}acct VALUES (1, 'rolled back')`);
    const inside = await client.query(`SELECT count(*)::int AS n FROM ${T}acct WHERE id = 1`);
    expect(inside.rows[0].n === 1, 'visible inside');
    await client.query('ROLLBACK');
    const after = await client.query(`SELECT count(*)::int AS n FROM ${T}acct WHERE id = 1`);
    expect(after.rows[0].n === 0, 'row still there');
  });

  await check('transaction commit (seen from another connection)', async () => {
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${T}acct VALUES (2, $1)`, ['committed']);
    await client.query('COMMIT');
    const other = await connect();
    try {
      const r = await other.query(`SELECT note FROM ${T}acct WHERE id = 2`);
      expect(r.rows.length === 1 && r.rows[0].note === 'committed', JSON.stringify(r.rows));
    } finally {
      await other.end();
    }
  });

  await check('error (22012) and recovery on the same connection', async () => {
    await expectCode(client.query('SELECT 1 / $1::int', [0]), '22012');
    const r = await client.query('SELECT $1::int AS v', [8]);
    expect(r.rows[0].v === 8, 'after error');
    // In a transaction: the error aborts it until ROLLBACK; a named statement errors too.
    await client.query('BEGIN');
    await expectCode(client.query({ name: 'npg-div', text: 'SELECT 10 / $1::int AS v', values: [0] }), '22012');
    await expectCode(client.query('SELECT 1'), '25P02');
    await client.query('ROLLBACK');
    const again = await client.query({ name: 'npg-div', text: 'SELECT 10 / $1::int AS v', values: [5] });
    expect(again.rows[0].v === 2, 'named statement after rollback');
  });

  await check('COPY FROM STDIN / TO STDOUT (pg-copy-streams)', async () => {
    const n = 5000;
    const rows = [];
    for (let i = 1; i <= n; i++) {
      const name = i % 97 === 0 ? `name ${i}\t\\ é\n"x"` : `name ${i}`;
      rows.push([i, name, `${(i * 7) % 10000}.${String(i % 100).padStart(2, '0')}`]);
    }
    const want = md5Rows(rows);
    const esc = (s) => s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n');
    const text = rows.map((r) => `${r[0]}\t${esc(r[1])}\t${r[2]}\n`).join('');
    const into = client.query(copyStreams.from(`COPY ${T}copy (id, name, amount) FROM STDIN`));
    await pipeline(Readable.from([Buffer.from(text)]), into);
    expect(into.rowCount === n, `COPY FROM rowCount ${into.rowCount}`);
    const s = await client.query(
      `SELECT count(*)::int AS n, md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id)) AS h FROM ${T}copy`,
    );
    expect(s.rows[0].n === n && s.rows[0].h === want, `server-side ${JSON.stringify(s.rows[0])} want ${want}`);
    const chunks = [];
    const out = client.query(copyStreams.to(`COPY (SELECT id, name, amount FROM ${T}copy ORDER BY id) TO STDOUT`));
    await pipeline(out, new Writable({ write(chunk, _enc, cb) { chunks.push(chunk); cb(); } }));
    const unesc = (s) => s.replace(/\\(.)/g, (_, c) => ({ t: '\t', n: '\n', '\\': '\\' })[c] ?? c);
    const got = Buffer.concat(chunks).toString().split('\n').filter((l) => l).map((l) => l.split('\t').map(unesc));
    expect(got.length === n && md5Rows(got) === want, `COPY TO ${got.length} rows, checksum ${md5Rows(got)}`);
    return `${n} rows, md5 ${want.slice(0, 12)}`;
  });

  await check('bytea, int8, numeric, timestamptz round trip (text results)', async () => {
    const blob = crypto.randomBytes(96 * 1024);
    const digest = crypto.createHash('md5').update(blob).digest('hex');
    const ts = '2024-02-29T23:59:58.123+05:30';
    const sql = 'SELECT $1::bytea AS b, md5($1::bytea) AS h, $2::int8 AS lo, $3::int8 AS hi, $4::numeric AS n, $5::timestamptz AS t';
    const values = [blob, '-9223372036854775808', '9223372036854775807', '-12345678901234567890.12345678901234567890', ts];
    // Text results (pg's default).
    const r = (await client.query(sql, values)).rows[0];
    expect(Buffer.isBuffer(r.b) && r.b.equals(blob), 'bytea round trip (text)');
    expect(r.h === digest, 'bytea checksum on the server');
    expect(r.lo === '-9223372036854775808' && r.hi === '9223372036854775807', `int8 ${r.lo} ${r.hi}`);
    expect(r.n === '-12345678901234567890.12345678901234567890', `numeric ${r.n}`);
    expect(r.t.getTime() === Date.parse(ts), `timestamptz ${r.t.toISOString()}`);
    // pg has no binary result mode to speak of: with `binary: true` it asks for binary
    // results but decodes every value through UTF-8 first, so bytea and int8 values with bytes
    // >= 0x80 come back corrupted (on PostgreSQL directly too). Text results are what pg uses.
    return `bytea ${blob.length} bytes`;
  });

  await check('pipeline mode: 200 queries in flight (pipeline: true)', async () => {
    const c = await connect({ pipeline: true });
    try {
      const pending = [];
      for (let i = 1000; i < 1200; i++) {
        pending.push(c.query({ name: 'npg-pipe', text: `INSERT INTO ${T}kv VALUES ($1, $2)`, values: [i, `p${i}`] }));
      }
      pending.push(c.query('SELECT 1 / $1::int', [0]).then(() => 'no error', (e) => e.code));
      pending.push(c.query(`SELECT count(*)::int AS n, sum(k)::int AS s FROM ${T}kv WHERE k >= 1000`));
      const got = await Promise.all(pending);
      expect(got[200] === '22012', `error in the pipeline: ${got[200]}`);
      const last = got[201].rows[0];
      expect(last.n === 200 && last.s === 219900, JSON.stringify(last));
    } finally {
      await c.end();
    }
  });

  await check('50 concurrent connections x 10 transactions (pg.Pool)', async () => {
    // One pg.Pool of 50, each worker holding its own client; named statements on each.
    // In session mode 5 server connections serve the 50 clients one after another.
    const pool = new pg.Pool({ connectionString: url, max: 50, connectionTimeoutMillis: 20000 });
    try {
      await Promise.all(
        Array.from({ length: 50 }, async (_, cid) => {
          const c = await pool.connect();
          try {
            for (let n = 0; n < 10; n++) {
              await c.query('BEGIN');
              await c.query({ name: 'npg-load-ins', text: `INSERT INTO ${T}load VALUES ($1, $2)`, values: [cid, n] });
              const r = await c.query({
                name: 'npg-load-sum',
                text: `SELECT count(*)::int AS c, sum(n)::int AS s FROM ${T}load WHERE client = $1`,
                values: [cid],
              });
              await c.query('COMMIT');
              const row = r.rows[0];
              if (row.c !== n + 1 || row.s !== (n * (n + 1)) / 2) throw new Error(`client ${cid} tx ${n}: ${JSON.stringify(row)}`);
            }
          } finally {
            // In session mode the connection is closed rather than kept idle in pg's pool, so
            // that the next waiting client gets the server connection.
            c.release(MODE === 'session');
          }
        }),
      );
    } finally {
      await pool.end();
    }
    const r = await client.query(`SELECT count(*)::int AS n, count(DISTINCT client)::int AS c FROM ${T}load`);
    expect(r.rows[0].n === 500 && r.rows[0].c === 50, JSON.stringify(r.rows[0]));
  });

  await check('cancel pg_sleep(10) (57014)', async () => {
    const c = await connect();
    try {
      const started = Date.now();
      const q = new pg.Query('SELECT pg_sleep(10)');
      const running = c.query(q);
      const outcome = new Promise((resolve) => {
        q.on('error', (e) => resolve(e));
        q.on('end', () => resolve(null));
      });
      await new Promise((r) => setTimeout(r, 500));
      // node-postgres' cancel: a second client opens a connection and sends a CancelRequest
      // with the first one's backend key data.
      new pg.Client({ connectionString: url }).cancel(c, q);
      const e = await outcome;
      void running;
      const elapsed = (Date.now() - started) / 1000;
      expect(e && e.code === '57014', `expected 57014, got ${e ? e.code + ' ' + e.message : 'success'}`);
      expect(elapsed < 3, `took ${elapsed}s`);
      const r = await c.query('SELECT 5 AS v');
      expect(r.rows[0].v === 5, 'connection usable after cancel');
      return `${elapsed.toFixed(2)}s`;
    } finally {
      await c.end();
    }
  });

  // The two checks below let another client open a transaction and keep it while this client
  // goes on: in transaction mode that client gets the most recently used idle server
  // connection, which is this client's own unless pgtenant pinned the client to it.
  await check(`session SET across transactions, another client busy (${MODE} mode)`, async () => {
    const c = await connect();
    const other = await connect();
    try {
      const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      await c.query("SET statement_timeout = '4321ms'");
      await other.query('BEGIN');
      const otherSees = (await other.query('SHOW statement_timeout')).rows[0].statement_timeout;
      try {
        for (let i = 0; i < 3; i++) {
          const s = await c.query('SHOW statement_timeout');
          expect(s.rows[0].statement_timeout === '4321ms', `SET lost: ${JSON.stringify(s.rows)}`);
        }
        expect(otherSees === '0', `another client sees this client's setting: ${otherSees}`);
        if (MODE === 'session') {
          const again = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p;
          expect(again === pid, 'session mode changed the backend');
        }
      } finally {
        await other.query('ROLLBACK');
      }
    } finally {
      await other.end();
      await c.end();
    }
  });

  await check(`temporary table across transactions, another client busy (${MODE} mode)`, async () => {
    const c = await connect();
    const other = await connect();
    try {
      await c.query('CREATE TEMP TABLE scratch (x int)');
      await other.query('BEGIN');
      const leaked = (await other.query("SELECT to_regclass('pg_temp.scratch') IS NOT NULL AS l")).rows[0].l;
      try {
        for (let i = 0; i < 3; i++) await c.query('INSERT INTO scratch VALUES ($1)', [i]);
        const n = await c.query('SELECT count(*)::int AS n FROM scratch');
        expect(n.rows[0].n === 3, 'temp table rows');
        expect(!leaked, "another client sees this client's temporary table");
      } finally {
        await other.query('ROLLBACK');
      }
    } finally {
      await other.end();
      await c.end();
    }
  });

  await check('LISTEN/NOTIFY (notification events)', async () => {
    const c = await connect();
    const other = await connect();
    try {
      const got = [];
      let wake = null;
      c.on('notification', (m) => {
        got.push(m.payload);
        if (wake) wake();
      });
      await c.query(`LISTEN ${T}chan`);
      for (let i = 0; i < 3; i++) {
        await other.query(`SELECT pg_notify('${T}chan', $1)`, [`n${i}`]);
        if (got.length <= i) {
          await new Promise((resolve) => {
            wake = resolve;
            setTimeout(resolve, 3000);
          });
        }
        expect(got[i] === `n${i}`, `notification ${i} not delivered within 3s (got ${JSON.stringify(got)})`);
        const r = await c.query('SELECT $1::int AS v', [i]);
        expect(r.rows[0].v === i, 'listener connection still works');
      }
    } finally {
      await other.end();
      await c.end();
    }
  });

  await client.end();
}

main()
  .catch((e) => {
    results.push(false);
    console.log(`FAIL setup: ${e.code ? '[' + e.code + '] ' : ''}${e.message}`);
  })
  .finally(() => {
    const passed = results.filter((x) => x).length;
    const failed = results.length - passed;
    console.log(`${DRIVER}: ${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  });
