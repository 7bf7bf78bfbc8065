//! Backend messages: the few pgtenant writes to clients itself (encoded with pgwire), and
//! typed views of the few server messages it reads.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey};
use pgwire::messages::Message;

/// Backend message tags. The same byte means something else from a client (`C` is
/// CommandComplete here and Close there): see [`super::frontend::tag`].
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html>
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// The transaction status a ReadyForQuery carries.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-READYFORQUERY>
pub mod txn {
    /// Not in a transaction block.
    pub const IDLE: u8 = b'I';
    /// In a transaction block.
    pub const IN_TRANSACTION: u8 = b'T';
    /// In a failed transaction block.
    pub const FAILED: u8 = b'E';
}

/// The AuthenticationRequest codes pgtenant handles as an upstream's client.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-AUTHENTICATIONOK>
pub mod auth {
    pub const OK: i32 = 0;
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// The one-byte answers to SSLRequest and GSSENCRequest.
/// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SSL>
pub mod encryption {
    pub const ACCEPTED: u8 = b'S';
    pub const REFUSED: u8 = b'N';
}

/// Appends one pgwire message; encoding into memory cannot fail for the small, well-formed
/// messages built here, so a failure is logged rather than propagated.
fn put<M: Message>(buf: &mut BytesMut, msg: M) {
    if let Err(e) = msg.encode(buf) {
        tracing::error!(error = %e, "could not encode a backend message");
    }
}

pub fn authentication_ok(buf: &mut BytesMut) {
    put(buf, Authentication::Ok);
}

pub fn md5_password_request(buf: &mut BytesMut, salt: [u8; 4]) {
    put(buf, Authentication::MD5Password(salt.to_vec()));
}

pub fn sasl_mechanisms(buf: &mut BytesMut, mechanisms: &[&str]) {
    put(buf, Authentication::SASL(mechanisms.iter().map(|m| (*m).to_owned()).collect()));
}

pub fn sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    put(buf, Authentication::SASLContinue(bytes::Bytes::copy_from_slice(data)));
}

pub fn sasl_final(buf: &mut BytesMut, data: &[u8]) {
    put(buf, Authentication::SASLFinal(bytes::Bytes::copy_from_slice(data)));
}

/// Written directly (a login sends a dozen of these; the codec's type would copy both strings
/// first). Names and values come from PostgreSQL's own reports or a startup packet, C strings
/// that hold no NUL.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let len = 4 + name.len() + 1 + value.len() + 1;
    buf.reserve(1 + len);
    buf.put_u8(b'S');
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    buf.put_slice(value.as_bytes());
    buf.put_u8(0);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put(buf, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// BackendKeyData with a secret of any length: 4 bytes in protocol 3.0, longer in 3.2.
pub fn backend_key_data_bytes(buf: &mut BytesMut, pid: i32, secret: &[u8]) {
    put(buf, BackendKeyData::new(pid, SecretKey::Bytes(bytes::Bytes::copy_from_slice(secret))));
}

pub fn ready_for_query_idle(buf: &mut BytesMut) {
    put(buf, ReadyForQuery::new(TransactionStatus::Idle));
}

/// NegotiateProtocolVersion: we speak 3.`newest_minor` and none of the `_pq_.` options asked
/// for. The version goes out whole (major << 16 | minor), as PostgreSQL sends it
/// (`SendNegotiateProtocolVersion` in `src/backend/tcop/backend_startup.c`): libpq 18 reads
/// it so and refuses a bare minor number as "version 0.x".
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: u16, unsupported: Vec<String>) {
    put(buf, NegotiateProtocolVersion::new((3 << 16) | i32::from(newest_minor), unsupported));
}

/// The single byte that answers SSLRequest / GSSENCRequest with "not supported".
pub fn refuse_encryption(buf: &mut BytesMut) {
    buf.put_u8(encryption::REFUSED);
}

/// Reads a NUL-terminated string at the front of `buf`, returning it and the rest.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = nul_at(buf)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// Where the first NUL of `buf` is: eight bytes at a time (a byte loop costs ~4 instructions
/// a byte on a Parse's query text; `memchr`'s dispatch costs more than that on the short
/// names most strings are), the last few one by one.
#[inline]
fn nul_at(buf: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let mut i = 0;
    while let Some(word) = buf.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let v = u64::from_le_bytes(w);
        // The high bit of every zero byte, and possibly of bytes above one (a borrow): the
        // lowest is the first zero byte.
        let zeros = v.wrapping_sub(ONES) & !v & HIGHS;
        if zeros != 0 {
            return Some(i + (zeros.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    buf[i..].iter().position(|&b| b == 0).map(|p| i + p)
}

/// ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
}

/// The fields of an ErrorResponse or NoticeResponse body that pgtenant logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerNotice {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error_fields(mut body: &[u8]) -> ServerNotice {
    let mut out = ServerNotice::default();
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, rest)) = cstr(rest) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match field {
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
        body = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_login_messages() {
        let mut b = BytesMut::new();
        authentication_ok(&mut b);
        backend_key_data(&mut b, 7, 9);
        ready_for_query_idle(&mut b);
        assert_eq!(&b[..], &b"R\0\0\0\x08\0\0\0\0K\0\0\0\x0c\0\0\0\x07\0\0\0\x09Z\0\0\0\x05I"[..]);
    }

    #[test]
    fn parameter_status_is_encoded_as_the_codec_encodes_it() {
        use pgwire::messages::startup::ParameterStatus;
        for (k, v) in [("TimeZone", "Europe/Paris"), ("application_name", ""), ("a", "é ü")] {
            let mut ours = BytesMut::new();
            parameter_status(&mut ours, k, v);
            let mut codec = BytesMut::new();
            put(&mut codec, ParameterStatus::new(k.to_owned(), v.to_owned()));
            assert_eq!(ours, codec, "{k}");
        }
        let mut b = BytesMut::new();
        parameter_status(&mut b, "TimeZone", "UTC");
        assert_eq!(&b[..], &b"S\0\0\0\x11TimeZone\0UTC\0"[..]);
    }

    #[test]
    fn parses_server_fields() {
        assert_eq!(parse_parameter_status(b"TimeZone\0UTC\0"), Some(("TimeZone".into(), "UTC".into())));
        assert_eq!(parse_parameter_status(b"TimeZone\0UTC"), None);
        let n = parse_error_fields(b"SERROR\0VERROR\0C42P01\0Mno table\0\0");
        assert_eq!((n.code.as_str(), n.message.as_str()), ("42P01", "no table"));
        // Truncated input stops cleanly.
        let n = parse_error_fields(b"C42P0");
        assert_eq!(n.code, "");
    }

    proptest::proptest! {
        /// The word-at-a-time search splits every text where a byte-by-byte search does:
        /// NULs anywhere (bytes 0x01 and 0x80 around them, which a borrow could mark), or none.
        #[test]
        fn cstr_splits_at_the_first_nul(
            bytes in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x80, 0xff, b'a']), 0..40),
        ) {
            let expected = bytes.iter().position(|&b| b == 0).map(|n| (&bytes[..n], &bytes[n + 1..]));
            proptest::prop_assert_eq!(cstr(&bytes), expected);
        }
    }
}
