//! Frontend messages (client to server): their tags, typed views of the few pgtenant reads
//! or rewrites (Bind, Describe, Close), and the ones it builds itself (with
//! `postgres-protocol`, the same code tokio-postgres uses, plus the CancelRequest packet).

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::backend::cstr;
use super::frame::HEADER_LEN;

/// Frontend message tags. The same byte means something else from a server (`S` is Sync
/// here and ParameterStatus there): see [`super::backend::tag`].
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html>
pub mod tag {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share it.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// What a Describe or Close names: its first body byte.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-DESCRIBE>
pub mod target {
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}

/// Builds `tag | length | prefix | name \0 | rest`: a Parse, Bind, Describe or Close with its
/// name replaced.
pub fn rename(tag: u8, prefix: &[u8], name: &[u8], rest: &[u8]) -> Bytes {
    let body = prefix.len() + name.len() + 1 + rest.len();
    let mut out = BytesMut::with_capacity(HEADER_LEN + body);
    out.put_u8(tag);
    // Bodies come from frames that passed the size check, so they fit in an i32.
    out.put_i32(i32::try_from(body + 4).unwrap_or(i32::MAX));
    out.put_slice(prefix);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(rest);
    out.freeze()
}

/// The names in a Bind frame (`portal \0 statement \0 …`): (portal, statement, rest).
pub fn bind_parts(frame: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = cstr(frame.get(HEADER_LEN..)?)?;
    let (stmt, rest) = cstr(rest)?;
    Some((portal, stmt, rest))
}

/// A Describe or Close frame: ([`target`] byte, name).
pub fn target_parts(frame: &[u8]) -> Option<(u8, &[u8])> {
    let body = frame.get(HEADER_LEN..)?;
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, name))
}

/// A Query message running `sql`.
pub fn query_frame(sql: &str) -> Option<Bytes> {
    let mut out = BytesMut::new();
    query(&mut out, sql).ok()?;
    Some(out.freeze())
}

/// A Parse message of `sql` under `name`, without parameter types.
pub fn parse_frame(name: &[u8], sql: &str) -> Bytes {
    let mut rest = sql.as_bytes().to_vec();
    rest.extend_from_slice(&[0, 0, 0]);
    rename(tag::PARSE, &[], name, &rest)
}

pub fn startup(buf: &mut BytesMut, params: &[(&str, &str)]) -> std::io::Result<()> {
    frontend::startup_message(params.iter().copied(), buf)
}

pub fn password(buf: &mut BytesMut, password: &[u8]) -> std::io::Result<()> {
    frontend::password_message(password, buf)
}

pub fn sasl_initial(buf: &mut BytesMut, mechanism: &str, data: &[u8]) -> std::io::Result<()> {
    frontend::sasl_initial_response(mechanism, data, buf)
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) -> std::io::Result<()> {
    frontend::sasl_response(data, buf)
}

pub fn query(buf: &mut BytesMut, sql: &str) -> std::io::Result<()> {
    frontend::query(sql, buf)
}

/// `sql` as an unsynced extended-protocol statement: Parse, Bind and Execute of the unnamed
/// statement and portal, then a Close of the unnamed statement, and no Sync. The server
/// answers ParseComplete, BindComplete, CommandComplete and CloseComplete and no
/// ReadyForQuery; if it fails, it skips every message up to the next Sync (simple Queries
/// included), so nothing sent behind it runs (see `benches/reset_probe.py`).
pub fn unsynced(buf: &mut BytesMut, sql: &str) {
    let put = |buf: &mut BytesMut, tag: u8, body: &[u8]| {
        buf.put_u8(tag);
        buf.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
        buf.put_slice(body);
    };
    let mut parse = Vec::with_capacity(sql.len() + 4);
    parse.push(0);
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    put(buf, tag::PARSE, &parse);
    // Portal "", statement "", no parameter formats, no parameters, no result formats.
    put(buf, tag::BIND, &[0, 0, 0, 0, 0, 0, 0, 0]);
    // Portal "", no row limit.
    put(buf, tag::EXECUTE, &[0, 0, 0, 0, 0]);
    put(buf, tag::CLOSE, &[target::STATEMENT, 0]);
}

pub fn terminate(buf: &mut BytesMut) {
    frontend::terminate(buf);
}

/// A whole Terminate message, for a best-effort write where no buffer is at hand.
pub const TERMINATE_MESSAGE: &[u8] = b"X\0\0\0\x04";

/// The SSLRequest packet (length 8, [`super::startup::SSL_REQUEST_CODE`]); the server
/// answers one [`super::backend::encryption`] byte.
pub fn ssl_request() -> [u8; 8] {
    let mut packet = [0u8; 8];
    packet[..4].copy_from_slice(&8i32.to_be_bytes());
    packet[4..].copy_from_slice(&super::startup::SSL_REQUEST_CODE.to_be_bytes());
    packet
}

pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(super::startup::CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn bind_and_target_parts() {
        let b = frame(b'B', b"portal\0s1\0\0\0\0\0\0\0");
        assert_eq!(bind_parts(&b).map(|(p, s, _)| (p, s)), Some((&b"portal"[..], &b"s1"[..])));
        assert_eq!(target_parts(&frame(b'D', b"Ss1\0")), Some((b'S', &b"s1"[..])));
        assert_eq!(bind_parts(&frame(b'B', b"no-terminator")), None);
    }

    #[test]
    fn built_messages() {
        let p = parse_frame(b"s1", "SELECT 1");
        assert_eq!(&p[..], &frame(b'P', b"s1\0SELECT 1\0\0\0")[..]);
        let mut t = BytesMut::new();
        terminate(&mut t);
        assert_eq!(&t[..], TERMINATE_MESSAGE);
        assert_eq!(ssl_request(), [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    }

    #[test]
    fn unsynced_statement_is_parse_bind_execute_close_without_sync() {
        let mut out = BytesMut::new();
        unsynced(&mut out, "DISCARD ALL");
        let expected = [
            frame(b'P', b"\0DISCARD ALL\0\0\0"),
            frame(b'B', &[0; 8]),
            frame(b'E', &[0; 5]),
            frame(b'C', b"S\0"),
        ]
        .concat();
        assert_eq!(&out[..], &expected[..]);
    }
}
