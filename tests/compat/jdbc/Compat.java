// pgjdbc (Debian's libpostgresql-jdbc-java) through pgtenant, or straight to PostgreSQL.
//
// Usage: java -cp <classes>:/usr/share/java/postgresql.jar Compat URL MODE
//   URL   a postgresql:// URL (turned into jdbc:postgresql://…), a jdbc:postgresql:// URL, or
//         a simple libpq key=value conninfo
//   MODE  transaction | session: the pool mode of the tenant (sets what is expected)
//
// tests/compat/jdbc.sh compiles and runs it. Prints one line per check and a final
// "pgjdbc: N passed, M failed"; exits 1 on any failure.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class Compat {
    static final String DRIVER = "pgjdbc";
    static final String T = "jdbc_";
    static String url;
    static String mode;
    static int passed, failed;

    interface Check {
        String run() throws Exception;
    }

    static void check(String name, Check c) {
        long started = System.nanoTime();
        try {
            String detail = c.run();
            passed++;
            System.out.printf("ok   %s (%.2fs)%s%n", name, (System.nanoTime() - started) / 1e9,
                    detail == null ? "" : ": " + detail);
        } catch (Throwable e) {
            failed++;
            String state = e instanceof SQLException s && s.getSQLState() != null ? " [" + s.getSQLState() + "]" : "";
            System.out.printf("FAIL %s: %s%s: %s%n", name, e.getClass().getSimpleName(), state, e.getMessage());
            StackTraceElement[] st = e.getStackTrace();
            for (int i = 0; i < Math.min(4, st.length); i++) {
                System.out.println("     | at " + st[i]);
            }
        }
        System.out.flush();
    }

    static void expect(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static String jdbcUrl(String u) {
        if (u.startsWith("jdbc:")) {
            return u;
        }
        if (!u.contains("://")) {
            // A simple libpq key=value conninfo (no quoting).
            java.util.Map<String, String> kv = new java.util.LinkedHashMap<>();
            for (String part : u.trim().split("\\s+")) {
                int eq = part.indexOf('=');
                kv.put(part.substring(0, eq), part.substring(eq + 1));
            }
            StringBuilder b = new StringBuilder("jdbc:postgresql://").append(kv.getOrDefault("host", "localhost"));
            if (kv.containsKey("port")) {
                b.append(':').append(kv.get("port"));
            }
            b.append('/').append(kv.getOrDefault("dbname", ""));
            List<String> params = new ArrayList<>();
            kv.forEach((k, v) -> {
                if (!k.equals("host") && !k.equals("port") && !k.equals("dbname")) {
                    params.add(k + "=" + java.net.URLEncoder.encode(v, StandardCharsets.UTF_8));
                }
            });
            if (!params.isEmpty()) {
                b.append('?').append(String.join("&", params));
            }
            return b.toString();
        }
        URI uri = URI.create(u);
        String user = uri.getUserInfo();
        StringBuilder b = new StringBuilder("jdbc:postgresql://").append(uri.getHost());
        if (uri.getPort() > 0) {
            b.append(':').append(uri.getPort());
        }
        b.append(uri.getPath() == null ? "/" : uri.getPath());
        List<String> params = new ArrayList<>();
        if (user != null) {
            String[] up = user.split(":", 2);
            params.add("user=" + up[0]);
            if (up.length == 2) {
                params.add("password=" + up[1]);
            }
        }
        if (uri.getRawQuery() != null) {
            params.add(uri.getRawQuery());
        }
        if (!params.isEmpty()) {
            b.append('?').append(String.join("&", params));
        }
        return b.toString();
    }

    static Connection connect(String... props) throws SQLException {
        Properties p = new Properties();
        p.setProperty("connectTimeout", "10");
        p.setProperty("ApplicationName", "pgtenant-compat");
        for (int i = 0; i + 1 < props.length; i += 2) {
            p.setProperty(props[i], props[i + 1]);
        }
        return DriverManager.getConnection(url, p);
    }

    static String md5(String s) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(s.getBytes(StandardCharsets.UTF_8)));
    }

    static long count(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static void expectState(String state, Check c) throws Exception {
        try {
            c.run();
        } catch (SQLException e) {
            expect(state.equals(e.getSQLState()), "expected SQLSTATE " + state + ", got " + e.getSQLState() + ": " + e.getMessage());
            return;
        }
        throw new AssertionError("expected SQLSTATE " + state + ", got success");
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2 || !(args[1].equals("transaction") || args[1].equals("session"))) {
            System.err.println("usage: Compat URL transaction|session");
            System.exit(2);
        }
        url = jdbcUrl(args[0]);
        mode = args[1];
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + T + "kv, " + T + "acct, " + T + "copy, " + T + "load");
            st.execute("CREATE TABLE " + T + "kv (k int PRIMARY KEY, v text NOT NULL)");
            st.execute("CREATE TABLE " + T + "acct (id int PRIMARY KEY, note text)");
            st.execute("CREATE TABLE " + T + "copy (id int PRIMARY KEY, name text, amount numeric(12,2))");
            st.execute("CREATE TABLE " + T + "load (client int, n int, PRIMARY KEY (client, n))");
        }
        // The main connection: pgjdbc's defaults (prepareThreshold=5: unnamed statements until a
        // PreparedStatement has run five times, named server-side statements after that).
        Connection conn = connect();

        check("parameterized queries (PreparedStatement)", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + ?::int, ?::text || 'x', ?::text IS NULL")) {
                ps.setInt(1, 40);
                ps.setInt(2, 2);
                ps.setString(3, "a'b");
                ps.setNull(4, java.sql.Types.VARCHAR);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    expect(rs.getInt(1) == 42 && rs.getString(2).equals("a'bx") && rs.getBoolean(3), "result");
                }
            }
            return null;
        });

        check("named server-side statements (prepareThreshold=1) across 60 transactions", () -> {
            try (Connection c = connect("prepareThreshold", "1")) {
                c.setAutoCommit(false);
                PreparedStatement ins = c.prepareStatement("INSERT INTO " + T + "kv VALUES (?, ?)");
                PreparedStatement sel = c.prepareStatement("SELECT v FROM " + T + "kv WHERE k = ?");
                for (int i = 0; i < 60; i++) {
                    ins.setInt(1, i);
                    ins.setString(2, "v" + i);
                    expect(ins.executeUpdate() == 1, "insert " + i);
                    sel.setInt(1, i);
                    try (ResultSet rs = sel.executeQuery()) {
                        expect(rs.next() && rs.getString(1).equals("v" + i), "row " + i);
                    }
                    if (i == 59) {
                        // Whatever server connection this transaction has, the statement is there.
                        expect(count(c, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%" + T
                                + "kv WHERE k = $1%'") >= 1, "statement not prepared on the server");
                    }
                    c.commit();
                }
                expect(sel.unwrap(PGStatement.class).isUseServerPrepare(), "not a server-side statement");
                expect(count(c, "SELECT count(*) FROM " + T + "kv") == 60, "60 rows");
                c.commit();
                ins.close();
                sel.close();
            }
            // The default threshold on the main connection: unnamed, then named after five runs.
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("SELECT v FROM " + T + "kv WHERE k = ?")) {
                for (int i = 0; i < 60; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next() && rs.getString(1).equals("v" + i), "default threshold row " + i);
                    }
                    conn.commit();
                }
                expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), "never switched to a named statement");
            }
            conn.setAutoCommit(true);
            return "PGStatement.isUseServerPrepare() = true";
        });

        check("batch: 200 inserts in one executeBatch", () -> {
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + T + "kv VALUES (?, ?)")) {
                for (int i = 1000; i < 1200; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "b" + i);
                    ps.addBatch();
                }
                int[] n = ps.executeBatch();
                expect(n.length == 200, "batch results " + n.length);
            }
            expect(count(conn, "SELECT count(*) FROM " + T + "kv WHERE k >= 1000") == 200, "batch rows");
            return null;
        });

        check("transaction rollback (and savepoint)", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO " + T + "acct VALUES (1, 'rolled back')");
                expect(count(conn, "SELECT count(*) FROM " + T + "acct WHERE id = 1") == 1, "visible inside");
                conn.rollback();
                expect(count(conn, "SELECT count(*) FROM " + T + "acct WHERE id = 1") == 0, "row still there");
                st.executeUpdate("INSERT INTO " + T + "acct VALUES (3, 'outer')");
                Savepoint sp = conn.setSavepoint();
                st.executeUpdate("INSERT INTO " + T + "acct VALUES (4, 'inner')");
                conn.rollback(sp);
                conn.commit();
                expect(count(conn, "SELECT count(*) FROM " + T + "acct WHERE id IN (3, 4)") == 1, "savepoint rollback");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
            return null;
        });

        check("transaction commit (seen from another connection)", () -> {
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + T + "acct VALUES (2, ?)")) {
                ps.setString(1, "committed");
                ps.executeUpdate();
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
            try (Connection other = connect(); Statement st = other.createStatement();
                    ResultSet rs = st.executeQuery("SELECT note FROM " + T + "acct WHERE id = 2")) {
                expect(rs.next() && rs.getString(1).equals("committed"), "not committed");
            }
            return null;
        });

        check("error (22012) and recovery on the same connection", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT 10 / ?::int")) {
                for (int i = 0; i < 6; i++) { // past prepareThreshold: the named statement errors too
                    ps.setInt(1, 0);
                    expectState("22012", () -> {
                        ps.executeQuery().close();
                        return null;
                    });
                    ps.setInt(1, 5);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next() && rs.getInt(1) == 2, "after error");
                    }
                }
            }
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                expectState("22012", () -> {
                    st.executeQuery("SELECT 1 / 0").close();
                    return null;
                });
                expectState("25P02", () -> {
                    st.executeQuery("SELECT 1").close();
                    return null;
                });
                conn.rollback();
                expect(count(conn, "SELECT 7") == 7, "after rollback");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
            return null;
        });

        check("COPY FROM STDIN / TO STDOUT (CopyManager)", () -> {
            int n = 5000;
            StringBuilder in = new StringBuilder();
            StringBuilder want = new StringBuilder();
            for (int i = 1; i <= n; i++) {
                String name = i % 97 == 0 ? "name " + i + "\t\\ \u00e9\n\"x\"" : "name " + i;
                String amount = (i * 7 % 10000) + "." + String.format("%02d", i % 100);
                in.append(i).append('\t').append(name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))
                        .append('\t').append(amount).append('\n');
                if (i > 1) {
                    want.append(',');
                }
                want.append(i).append(':').append(name).append(':').append(amount);
            }
            String digest = md5(want.toString());
            CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
            long loaded = copy.copyIn("COPY " + T + "copy (id, name, amount) FROM STDIN", new StringReader(in.toString()));
            expect(loaded == n, "copyIn returned " + loaded);
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(
                    "SELECT count(*), md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id)) FROM " + T + "copy")) {
                rs.next();
                expect(rs.getLong(1) == n && rs.getString(2).equals(digest), "server-side count/checksum " + rs.getString(2));
            }
            StringWriter out = new StringWriter();
            long sent = copy.copyOut("COPY (SELECT id, name, amount FROM " + T + "copy ORDER BY id) TO STDOUT", out);
            expect(sent == n, "copyOut returned " + sent);
            expect(out.toString().equals(in.toString()), "COPY TO text differs from what was loaded");
            return n + " rows, md5 " + digest.substring(0, 12);
        });

        check("binary transfer: bytea, int8, numeric, timestamptz (named statement)", () -> {
            byte[] blob = new byte[96 * 1024];
            new Random(7).nextBytes(blob);
            BigDecimal num = new BigDecimal("-12345678901234567890.123456789012345678901234567890");
            OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 23, 59, 58, 123456000, ZoneOffset.ofHoursMinutes(5, 30));
            String blobMd5 = HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(blob));
            try (Connection c = connect("prepareThreshold", "1", "binaryTransferEnable", "NUMERIC,TIMESTAMPTZ");
                    PreparedStatement ps = c.prepareStatement(
                            "SELECT ?::bytea, md5(?::bytea), ?::int8, ?::int8, ?::numeric, ?::timestamptz")) {
                for (int run = 0; run < 3; run++) { // the first run describes, later ones get binary rows
                    ps.setBytes(1, blob);
                    ps.setBytes(2, blob);
                    ps.setLong(3, Long.MIN_VALUE);
                    ps.setLong(4, Long.MAX_VALUE);
                    ps.setBigDecimal(5, num);
                    ps.setObject(6, ts);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "a row");
                        expect(java.util.Arrays.equals(rs.getBytes(1), blob), "bytea round trip");
                        expect(rs.getString(2).equals(blobMd5), "bytea checksum on the server");
                        expect(rs.getLong(3) == Long.MIN_VALUE && rs.getLong(4) == Long.MAX_VALUE, "int8");
                        expect(rs.getBigDecimal(5).compareTo(num) == 0, "numeric " + rs.getBigDecimal(5));
                        expect(rs.getObject(6, OffsetDateTime.class).isEqual(ts), "timestamptz " + rs.getObject(6, OffsetDateTime.class));
                    }
                }
            }
            return "bytea " + blob.length + " bytes";
        });

        check("50 concurrent connections x 10 transactions", () -> {
            ExecutorService pool = Executors.newFixedThreadPool(50);
            try {
                List<Future<?>> tasks = new ArrayList<>();
                for (int cid = 0; cid < 50; cid++) {
                    final int id = cid;
                    tasks.add(pool.submit(() -> {
                        try (Connection c = connect("prepareThreshold", "1")) {
                            c.setAutoCommit(false);
                            PreparedStatement ins = c.prepareStatement("INSERT INTO " + T + "load VALUES (?, ?)");
                            PreparedStatement sum = c.prepareStatement("SELECT count(*), sum(n) FROM " + T + "load WHERE client = ?");
                            for (int n = 0; n < 10; n++) {
                                ins.setInt(1, id);
                                ins.setInt(2, n);
                                ins.executeUpdate();
                                sum.setInt(1, id);
                                try (ResultSet rs = sum.executeQuery()) {
                                    rs.next();
                                    if (rs.getLong(1) != n + 1 || rs.getLong(2) != (long) n * (n + 1) / 2) {
                                        throw new AssertionError("client " + id + " transaction " + n + ": " + rs.getLong(1));
                                    }
                                }
                                c.commit();
                            }
                        }
                        return null;
                    }));
                }
                for (Future<?> f : tasks) {
                    f.get(60, TimeUnit.SECONDS);
                }
            } finally {
                pool.shutdownNow();
            }
            expect(count(conn, "SELECT count(*) FROM " + T + "load") == 500, "rows");
            expect(count(conn, "SELECT count(DISTINCT client) FROM " + T + "load") == 50, "clients");
            return null;
        });

        check("cancel pg_sleep(10) (57014)", () -> {
            try (Connection c = connect(); Statement st = c.createStatement()) {
                var timer = Executors.newSingleThreadScheduledExecutor();
                timer.schedule(() -> {
                    try {
                        st.cancel();
                    } catch (SQLException e) {
                        throw new RuntimeException(e);
                    }
                }, 500, TimeUnit.MILLISECONDS);
                long started = System.nanoTime();
                try {
                    expectState("57014", () -> {
                        st.executeQuery("SELECT pg_sleep(10)").close();
                        return null;
                    });
                } finally {
                    timer.shutdown();
                }
                double elapsed = (System.nanoTime() - started) / 1e9;
                expect(elapsed < 3, String.format("took %.1fs", elapsed));
                expect(count(c, "SELECT 5") == 5, "connection usable after cancel");
                return String.format("%.2fs", elapsed);
            }
        });

        // The two checks below let another client open a transaction and keep it while this
        // client goes on: in transaction mode that client gets the most recently used idle
        // server connection, which is this client's own unless pgtenant pinned the client to it.
        check("session SET across transactions, another client busy (" + mode + " mode)", () -> {
            try (Connection c = connect(); Statement st = c.createStatement(); Connection other = connect()) {
                long pid = count(c, "SELECT pg_backend_pid()");
                st.execute("SET statement_timeout = '4321ms'");
                other.setAutoCommit(false);
                String otherSees;
                try (Statement os = other.createStatement(); ResultSet rs = os.executeQuery("SHOW statement_timeout")) {
                    rs.next();
                    otherSees = rs.getString(1);
                }
                try {
                    for (int i = 0; i < 3; i++) {
                        try (ResultSet rs = st.executeQuery("SHOW statement_timeout")) {
                            expect(rs.next() && rs.getString(1).equals("4321ms"), "SET lost");
                        }
                    }
                    expect(otherSees.equals("0"), "another client sees this client's setting: " + otherSees);
                    if (mode.equals("session")) {
                        expect(count(c, "SELECT pg_backend_pid()") == pid, "session mode changed the backend");
                    }
                } finally {
                    other.rollback();
                }
            }
            return null;
        });

        check("temporary table across transactions, another client busy (" + mode + " mode)", () -> {
            try (Connection c = connect(); Statement st = c.createStatement(); Connection other = connect()) {
                st.execute("CREATE TEMP TABLE scratch (x int)");
                other.setAutoCommit(false);
                boolean leaked = count(other, "SELECT (to_regclass('pg_temp.scratch') IS NOT NULL)::int") == 1;
                try {
                    for (int i = 0; i < 3; i++) {
                        st.executeUpdate("INSERT INTO scratch VALUES (" + i + ")");
                    }
                    expect(count(c, "SELECT count(*) FROM scratch") == 3, "temp table rows");
                    expect(!leaked, "another client sees this client's temporary table");
                } finally {
                    other.rollback();
                }
            }
            return null;
        });

        check("LISTEN/NOTIFY (PGConnection.getNotifications)", () -> {
            try (Connection c = connect(); Statement st = c.createStatement(); Connection other = connect()) {
                st.execute("LISTEN " + T + "chan");
                PGConnection pg = c.unwrap(PGConnection.class);
                for (int i = 0; i < 3; i++) {
                    try (PreparedStatement ps = other.prepareStatement("SELECT pg_notify('" + T + "chan', ?)")) {
                        ps.setString(1, "n" + i);
                        ps.executeQuery().close();
                    }
                    org.postgresql.PGNotification[] got = pg.getNotifications(3000);
                    expect(got != null && got.length == 1, "notification " + i + " not delivered within 3s");
                    expect(got[0].getParameter().equals("n" + i), "payload " + got[0].getParameter());
                    expect(count(c, "SELECT " + i) == i, "listener connection still works");
                }
            }
            return null;
        });

        conn.close();
        System.out.printf("%s: %d passed, %d failed%n", DRIVER, passed, failed);
        System.exit(failed == 0 ? 0 : 1);
    }
}
