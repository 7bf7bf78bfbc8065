#!/usr/bin/env python3
"""benches/memory_client.py — the hostile and heavy clients of benches/memory.sh.

Speaks the PostgreSQL wire protocol over raw sockets (no driver: the point is to send what
drivers never send) and measures the proxy's memory from /proc/PID/status while it runs:
VmRSS before, the highest VmRSS sampled every 20 ms, VmHWM (the kernel's peak, reset
through /proc/PID/clear_refs first), and VmRSS once the case is over. Prints one line of
JSON per case.

Usage: memory_client.py PID HOST PORT CASE [options]   (see --help)
"""
import argparse
import json
import os
import socket
import struct
import threading
import time

MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# Memory of the proxy process.
# ---------------------------------------------------------------------------
def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class Sampler:
    """Samples VmRSS every 20 ms in a thread; resets the kernel's peak (VmHWM) first."""

    def __init__(self, pid):
        self.pid = pid
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.before = status_kib(pid, "VmRSS")
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return
            time.sleep(0.02)

    def finish(self, settle=1.0):
        time.sleep(settle)
        self._stop.set()
        self._thread.join()
        after = status_kib(self.pid, "VmRSS")
        hwm = status_kib(self.pid, "VmHWM")
        peak = max(self.peak, hwm) if self.hwm_reset else self.peak
        return {
            "rss_before_mib": round(self.before / 1024, 1),
            "rss_peak_mib": round(peak / 1024, 1),
            "growth_peak_mib": round((peak - self.before) / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "retained_mib": round((after - self.before) / 1024, 1),
        }


# ---------------------------------------------------------------------------
# Protocol helpers.
# ---------------------------------------------------------------------------
def startup_packet(params):
    body = struct.pack("!i", 196608)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


def read_message(sock):
    """One backend message (tag, body); None when the connection closed."""
    head = recv_exact(sock, 5)
    if head is None:
        return None
    tag, length = head[:1], struct.unpack("!i", head[1:])[0]
    body = recv_exact(sock, length - 4)
    if body is None:
        return None
    return tag, body


def recv_exact(sock, n):
    chunks, got = [], 0
    while got < n:
        c = sock.recv(min(n - got, 1 << 20))
        if not c:
            return None
        chunks.append(c)
        got += len(c)
    return b"".join(chunks)


def sqlstate(body):
    for field in body.split(b"\0"):
        if field.startswith(b"C"):
            return field[1:].decode()
    return None


def connect(host, port):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def login_trust(host, port, user, database):
    """A logged-in socket (the tenant must use trust authentication)."""
    s = connect(host, port)
    s.sendall(startup_packet({"user": user, "database": database}))
    while True:
        m = read_message(s)
        if m is None:
            raise RuntimeError("closed during login")
        if m[0] == b"E":
            raise RuntimeError(f"login refused: {sqlstate(m[1])}")
        if m[0] == b"Z":
            return s


def read_until_ready(s):
    """Reads to ReadyForQuery; returns (messages, first SQLSTATE or None, bytes)."""
    n, code, size = 0, None, 0
    while True:
        m = read_message(s)
        if m is None:
            raise RuntimeError("closed before ReadyForQuery")
        n += 1
        size += len(m[1]) + 5
        if m[0] == b"E" and code is None:
            code = sqlstate(m[1])
        if m[0] == b"Z":
            return n, code, size


# ---------------------------------------------------------------------------
# Cases.
# ---------------------------------------------------------------------------
def case_auth_1gib(a):
    """N connections each send a message whose header declares 1 GiB - 1, then trickle bytes
    into it: SASLInitialResponse (--method sasl) or PasswordMessage (--method md5) before
    login, or a Query after a trust login (--method query)."""
    want = 10 if a.method == "sasl" else 5  # AuthenticationSASL / AuthenticationMD5Password
    socks = []
    for _ in range(a.conns):
        if a.method == "query":
            socks.append(login_trust(a.host, a.port, a.user, a.database))
            continue
        s = connect(a.host, a.port)
        s.sendall(startup_packet({"user": a.user, "database": a.database}))
        m = read_message(s)
        if m is None or m[0] != b"R" or struct.unpack("!i", m[1][:4])[0] != want:
            raise RuntimeError(f"expected authentication request {want}, got {m!r:.80}")
        socks.append(s)
    sampler = Sampler(a.pid)
    started = time.monotonic()
    tag, head = {"sasl": (b"p", b"SCRAM-SHA-256\0"), "md5": (b"p", b"md5"), "query": (b"Q", b"SELECT 1 /*")}[a.method]
    for s in socks:
        s.sendall(tag + struct.pack("!i", 0x3FFFFFFF) + head)
        s.setblocking(False)
    open_socks = dict(enumerate(socks))
    closed_after, codes, sent = {}, {}, 0
    chunk = b"x" * (64 * 1024)
    while open_socks and time.monotonic() - started < a.seconds:
        for i, s in list(open_socks.items()):
            try:
                data = s.recv(65536)
                if data:
                    if data[:1] == b"E" and i not in codes:
                        codes[i] = sqlstate(data[5:])
                    continue
                closed_after[i] = round(time.monotonic() - started, 3)
                del open_socks[i]
                continue
            except BlockingIOError:
                pass
            except OSError:
                closed_after[i] = round(time.monotonic() - started, 3)
                del open_socks[i]
                continue
            try:
                sent += s.send(chunk)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                closed_after[i] = round(time.monotonic() - started, 3)
                del open_socks[i]
        time.sleep(a.interval)
    for s in socks:
        s.close()
    r = sampler.finish()
    r.update(
        case=f"header_1gib_{a.method}",
        conns=a.conns,
        bytes_sent_mib=round(sent / MIB, 1),
        closed_after_s=sorted(closed_after.values()),
        still_open=len(open_socks),
        sqlstates=sorted(set(c for c in codes.values() if c)),
    )
    return r


def case_pipeline(a):
    """SELECT pg_sleep(S), then MB megabytes of pipelined queries, replies left unread while
    sending; then every reply is read."""
    s = login_trust(a.host, a.port, a.user, a.database)
    sampler = Sampler(a.pid)
    s.sendall(message(b"Q", f"SELECT pg_sleep({a.sleep})\0".encode()))
    pad = b"SELECT 1 /*" + b"x" * (MIB - 32) + b"*/\0"
    q = message(b"Q", pad)
    sent, started = 0, time.monotonic()
    s.settimeout(a.sleep + 60)
    stalled = False
    for _ in range(a.mb):
        s.settimeout(5)
        try:
            s.sendall(q)
        except socket.timeout:
            stalled = True  # the proxy stopped reading: back-pressure
            break
        sent += 1
    send_s = time.monotonic() - started
    s.settimeout(a.sleep + 120)
    read_until_ready(s)  # pg_sleep
    if not stalled:
        for _ in range(sent):
            read_until_ready(s)
    s.close()
    r = sampler.finish()
    r.update(case="pipeline_behind_pg_sleep", sent_mib=sent, send_seconds=round(send_s, 1), stalled=stalled)
    return r


def case_copy_in(a):
    """COPY FROM STDIN of MB megabytes, sent as fast as the socket takes them."""
    s = login_trust(a.host, a.port, a.user, a.database)
    s.sendall(message(b"Q", b"COPY copy_sink FROM STDIN\0"))
    m = read_message(s)
    if m is None or m[0] != b"G":
        raise RuntimeError(f"expected CopyInResponse, got {m!r:.80}")
    sampler = Sampler(a.pid)
    line = b"y" * (MIB - 1) + b"\n"
    d = message(b"d", line)
    started = time.monotonic()
    for _ in range(a.mb):
        s.sendall(d)
    s.sendall(message(b"c", b""))
    _, code, _ = read_until_ready(s)
    took = time.monotonic() - started
    s.sendall(message(b"Q", b"TRUNCATE copy_sink\0"))
    read_until_ready(s)
    s.close()
    r = sampler.finish()
    r.update(case="copy_in", mib=a.mb, seconds=round(took, 1), sqlstate=code)
    return r


def case_statements(a):
    """N distinct named prepared statements on one session, which then stays idle."""
    s = login_trust(a.host, a.port, a.user, a.database)
    sampler = Sampler(a.pid)
    batch = 1000
    for start in range(0, a.n, batch):
        out = bytearray()
        for i in range(start, min(start + batch, a.n)):
            out += message(b"P", f"stmt_{i}\0SELECT {i}\0".encode() + struct.pack("!h", 0))
        out += message(b"S", b"")
        s.sendall(out)
        while True:
            m = read_message(s)
            if m is None:
                raise RuntimeError("closed")
            if m[0] == b"E":
                raise RuntimeError(f"error {sqlstate(m[1])}")
            if m[0] == b"Z":
                break
    r = sampler.finish(settle=2.0)
    s.close()
    r.update(case="named_statements", statements=a.n)
    return r


def case_server_error(a):
    """A server ErrorResponse of MB megabytes; the session then stays idle."""
    s = login_trust(a.host, a.port, a.user, a.database)
    sampler = Sampler(a.pid)
    sql = f"DO $$BEGIN RAISE EXCEPTION '%', repeat('e', {a.mb} * 1048576); END$$\0"
    s.sendall(message(b"Q", sql.encode()))
    _, code, size = read_until_ready(s)
    r = sampler.finish(settle=2.0)
    s.close()
    r.update(case="server_error", mib=a.mb, sqlstate=code, reply_mib=round(size / MIB, 1))
    return r


def case_idle(a):
    """N logged-in clients left idle: RSS per client."""
    sampler = Sampler(a.pid)
    socks = [login_trust(a.host, a.port, a.user, a.database) for _ in range(a.n)]
    if a.query:
        # Each client runs one query first (a server connection comes and goes): what an
        # idle client costs once it has been active.
        for s in socks:
            s.sendall(message(b"Q", b"SELECT 1\0"))
        for s in socks:
            read_until_ready(s)
    r = sampler.finish(settle=2.0)
    for s in socks:
        s.close()
    per = (r["rss_after_mib"] - r["rss_before_mib"]) * 1024 / a.n
    r.update(case="idle_clients_active" if a.query else "idle_clients", clients=a.n, kib_per_client=round(per, 2))
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pid", type=int)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("case", choices=["auth_1gib", "pipeline", "copy_in", "statements", "server_error", "idle"])
    p.add_argument("--user", default="app.bench")
    p.add_argument("--database", default="bench")
    p.add_argument("--method", choices=["sasl", "md5", "query"], default="sasl")
    p.add_argument("--conns", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--sleep", type=float, default=20.0)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--query", action="store_true", help="idle: each client runs SELECT 1 first")
    a = p.parse_args()
    r = globals()["case_" + a.case](a)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
