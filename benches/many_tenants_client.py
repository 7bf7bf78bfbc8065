#!/usr/bin/env python3
"""benches/many_tenants_client.py — the clients of benches/many_tenants.sh.

Speaks the PostgreSQL wire protocol over raw sockets (trust authentication, simple queries),
so that thousands of clients of hundreds of tenants fit in one process, and reads the proxy's
own CPU time from /proc/PID/task/*/schedstat (nanoseconds on CPU, summed over its threads)
around each case. Prints one line of JSON per case.

  login PID HOST PORT --tenants N --logins K [--first F]
      K logins one after the other, user app.t<F+i> for i = 0, 1, … N-1, 0, 1 …: startup,
      ReadyForQuery, `SELECT 1`, Terminate. Reports the proxy's CPU µs and the wall ms
      per login.
  tx PID HOST PORT --tenants N --clients C --seconds S
      C clients, client j logged in as tenant t<j mod N>, all connected first, then each runs
      `SELECT 1` again and again (one query in flight per client) for S seconds. Reports
      transactions per second and the proxy's CPU µs per transaction.
"""
import argparse
import json
import os
import selectors
import socket
import struct
import time


def proxy_cpu_ns(pid):
    """Nanoseconds the process's threads have run (threads that ended are not counted:
    the proxy's runtime threads live as long as it does)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def startup_packet(user):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", "shared")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


QUERY = b"Q" + struct.pack("!i", 4 + 9) + b"SELECT 1\0"
TERMINATE = b"X" + struct.pack("!i", 4)


class Conn:
    """One client: a socket and the bytes read but not yet parsed."""

    def __init__(self, host, port, user):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.user = user
        self.sock.sendall(startup_packet(user))

    def ready(self):
        """Consumes whole messages in the buffer; True once a ReadyForQuery was among them.
        An ErrorResponse is fatal: the bench counts only what succeeded."""
        seen = False
        while len(self.buf) >= 5:
            tag = self.buf[0:1]
            n = struct.unpack("!i", self.buf[1:5])[0]
            if len(self.buf) < 1 + n:
                break
            body, self.buf = self.buf[5 : 1 + n], self.buf[1 + n :]
            if tag == b"E":
                raise RuntimeError(f"{self.user}: {body!r}")
            if tag == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise RuntimeError(f"{self.user}: asked for a password (the bench expects trust)")
            if tag == b"Z":
                seen = True
        return seen

    def wait_ready(self):
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError(f"{self.user}: connection closed")
            self.buf += data
            if self.ready():
                return

    def close(self):
        try:
            self.sock.sendall(TERMINATE)
        except OSError:
            pass
        self.sock.close()


def login(args):
    cpu0, t0 = proxy_cpu_ns(args.pid), time.monotonic()
    for i in range(args.logins):
        c = Conn(args.host, args.port, f"app.t{args.first + i % args.tenants}")
        c.wait_ready()
        c.sock.sendall(QUERY)
        c.wait_ready()
        c.close()
    cpu1, t1 = proxy_cpu_ns(args.pid), time.monotonic()
    return {
        "case": "login",
        "tenants": args.tenants,
        "first": args.first,
        "logins": args.logins,
        "cpu_us_per_login": round((cpu1 - cpu0) / 1e3 / args.logins, 1),
        "wall_ms_per_login": round((t1 - t0) * 1e3 / args.logins, 3),
    }


def tx(args):
    conns = []
    for j in range(args.clients):
        c = Conn(args.host, args.port, f"app.t{j % args.tenants}")
        c.wait_ready()
        conns.append(c)
    sel = selectors.DefaultSelector()
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    done = 0
    cpu0, t0 = proxy_cpu_ns(args.pid), time.monotonic()
    deadline = t0 + args.seconds
    for c in conns:
        c.sock.sendall(QUERY)
    in_flight = len(conns)
    while in_flight:
        stopping = time.monotonic() >= deadline
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            data = c.sock.recv(65536)
            if not data:
                raise RuntimeError(f"{c.user}: connection closed")
            c.buf += data
            if c.ready():
                done += 1
                if stopping:
                    in_flight -= 1
                    sel.unregister(c.sock)
                else:
                    c.sock.sendall(QUERY)
    cpu1, t1 = proxy_cpu_ns(args.pid), time.monotonic()
    for c in conns:
        c.sock.setblocking(True)
        c.close()
    return {
        "case": "tx",
        "tenants": args.tenants,
        "clients": args.clients,
        "tps": round(done / (t1 - t0), 1),
        "cpu_us_per_tx": round((cpu1 - cpu0) / 1e3 / done, 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["login", "tx"])
    p.add_argument("pid", type=int)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--tenants", type=int, required=True)
    p.add_argument("--first", type=int, default=0, help="login: the first tenant number")
    p.add_argument("--logins", type=int, default=2000)
    p.add_argument("--clients", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    print(json.dumps(login(args) if args.mode == "login" else tx(args)), flush=True)


if __name__ == "__main__":
    main()
