"""benches/wire.py — PostgreSQL protocol messages as pgtenant sends them to a server, for the
raw-protocol benches and probes (handoff_cost.py, reset_probe.py)."""
import struct

SETSEED_OID = 1599


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def startup(user="postgres", database="postgres"):
    """A StartupMessage (protocol 3.0)."""
    body = struct.pack("!I", 196608) + cstr("user") + cstr(user) + cstr("database") + cstr(database) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query(sql):
    return msg(b"Q", cstr(sql))


def sync():
    return msg(b"S", b"")


def unsynced(sql, param=None):
    """Parse, Bind, Execute of the unnamed statement and its Close, no Sync (pgtenant's
    `frontend::unsynced`); with `param`, one float8 parameter in text."""
    if param is None:
        parse = msg(b"P", b"\0" + cstr(sql) + struct.pack("!H", 0))
        bind = msg(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
    else:
        parse = msg(b"P", b"\0" + cstr(sql) + struct.pack("!HI", 1, 701))
        bind = msg(b"B", b"\0\0" + struct.pack("!HHI", 0, 1, len(param)) + param + struct.pack("!H", 0))
    return parse + bind + msg(b"E", b"\0" + struct.pack("!I", 0)) + msg(b"C", b"S\0")


def reseed(seed):
    """The reseed as pgtenant sends it: a FunctionCall of setseed(float8) by OID, the argument
    in binary (float8, big-endian), the result asked in text."""
    arg = struct.pack("!d", seed)
    return msg(b"F", struct.pack("!IHHHI", SETSEED_OID, 1, 1, 1, len(arg)) + arg + struct.pack("!H", 0))
