//! The untagged packets a client may open with: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage. <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>

use std::borrow::Cow;

use super::backend::cstr;
use super::error::{ClientFacing, ErrorKind, SqlState};

/// `NEGOTIATE_SSL_CODE` and `NEGOTIATE_GSS_CODE` in `src/include/libpq/pqcomm.h`.
pub const SSL_REQUEST_CODE: i32 = 80877103;
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
/// The CancelRequest code word (`CANCEL_REQUEST_CODE` in `src/include/libpq/pqcomm.h`).
pub const CANCEL_REQUEST_CODE: i32 = 80877102;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// Secret is 4 bytes in protocol 3.0, up to 256 in 3.2.
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    Startup(StartupMessage),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// In the client's order; names are unique.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `_pq_.`-prefixed protocol options: pgtenant supports none of them.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect()
    }

    /// Whether the client asked for a replication connection (physical or logical).
    pub fn wants_replication(&self) -> bool {
        match self.get("replication") {
            None => false,
            Some(v) => !matches!(v.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet layout")]
    Malformed,
    #[error("unsupported frontend protocol {0}.{1}: pgtenant supports 3.0")]
    UnsupportedProtocol(u16, u16),
    #[error("startup packet has no user name")]
    NoUser,
}

/// The words of the `options` startup parameter, as the server splits them
/// (`pg_split_opts` in `src/backend/utils/init/postinit.c`): separated by whitespace, a
/// backslash escaping the next character. Words come as written (escapes kept): see
/// [`unescape_option`].
pub fn option_words(options: &str) -> impl Iterator<Item = &str> {
    let mut rest = options;
    std::iter::from_fn(move || {
        let start = rest.find(|c: char| !c.is_ascii_whitespace())?;
        let word = &rest[start..];
        let mut escaped = false;
        let end = word
            .char_indices()
            .find(|&(_, c)| {
                let split = !escaped && c.is_ascii_whitespace();
                escaped = !escaped && c == '\\';
                split
            })
            .map_or(word.len(), |(i, _)| i);
        rest = &word[end..];
        Some(&word[..end])
    })
}

/// An option word with its backslash escapes resolved.
pub fn unescape_option(word: &str) -> Cow<'_, str> {
    if !word.contains('\\') {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

impl ClientFacing for StartupError {
    fn sqlstate(&self) -> SqlState {
        match self {
            // As PostgreSQL answers a protocol version it does not speak (a repeated
            // SSLRequest reads as version 1234.5679).
            StartupError::UnsupportedProtocol(..) => SqlState::FeatureNotSupported,
            StartupError::Malformed | StartupError::NoUser => SqlState::ProtocolViolation,
        }
    }

    fn client_text(&self) -> Cow<'_, str> {
        match self {
            StartupError::Malformed => Cow::Borrowed("invalid startup packet layout"),
            StartupError::UnsupportedProtocol(major, minor) => {
                format!("unsupported frontend protocol {major}.{minor}: pgtenant supports 3.0").into()
            }
            StartupError::NoUser => Cow::Borrowed("startup packet has no user name"),
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Client
    }
}

/// Parses a startup-phase packet body (after its length word).
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let (code, rest) = body.split_first_chunk::<4>().ok_or(StartupError::Malformed)?;
    let code = i32::from_be_bytes(*code);
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let (pid, secret) = rest.split_first_chunk::<4>().ok_or(StartupError::Malformed)?;
            if secret.len() < 4 || secret.len() > 256 {
                return Err(StartupError::Malformed);
            }
            Ok(StartupPacket::Cancel { pid: i32::from_be_bytes(*pid), secret: secret.to_vec() })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            let params = parse_params(rest)?;
            let msg = StartupMessage { major, minor, params };
            if msg.get("user").is_none_or(str::is_empty) {
                return Err(StartupError::NoUser);
            }
            Ok(StartupPacket::Startup(msg))
        }
    }
}

/// Name/value pairs, each NUL-terminated, ending with an empty name. Non-UTF-8 bytes are
/// replaced (pgtenant reads these, it never forwards the packet itself).
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let (name, after) = cstr(rest).ok_or(StartupError::Malformed)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed);
            }
            return Ok(params);
        }
        let (value, after) = cstr(after).ok_or(StartupError::Malformed)?;
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        // Postgres keeps the last of duplicate names; so do we.
        params.retain(|(k, _)| *k != name);
        params.push((name, value));
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_as_the_server_splits_them() {
        let words: Vec<&str> = option_words("  -c a=1\t tenant=acme  x\\ y \\").collect();
        assert_eq!(words, ["-c", "a=1", "tenant=acme", "x\\ y", "\\"]);
        assert_eq!(unescape_option("x\\ y"), "x y");
        assert_eq!(unescape_option("a\\\\b"), "a\\b");
        assert_eq!(option_words("   ").count(), 0);
    }

    fn startup(params: &[u8]) -> Vec<u8> {
        let mut b = 196608i32.to_be_bytes().to_vec();
        b.extend_from_slice(params);
        b
    }

    #[test]
    fn parses_each_packet_kind() {
        assert_eq!(parse(&SSL_REQUEST_CODE.to_be_bytes()), Ok(StartupPacket::SslRequest));
        assert_eq!(parse(&GSSENC_REQUEST_CODE.to_be_bytes()), Ok(StartupPacket::GssEncRequest));
        let mut c = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        c.extend_from_slice(&[0, 0, 0, 5, 1, 2, 3, 4]);
        assert_eq!(parse(&c), Ok(StartupPacket::Cancel { pid: 5, secret: vec![1, 2, 3, 4] }));
        let p = parse(&startup(b"user\0app.acme\0database\0db\0\0")).expect("startup");
        let StartupPacket::Startup(m) = p else { panic!("not a startup") };
        assert_eq!(m.get("user"), Some("app.acme"));
        assert_eq!(m.params.len(), 2);
    }

    #[test]
    fn rejects_hostile_packets() {
        assert_eq!(parse(b"\0\0"), Err(StartupError::Malformed));
        assert_eq!(parse(&startup(b"user\0x")), Err(StartupError::Malformed));
        assert_eq!(parse(&startup(b"user\0x\0\0junk")), Err(StartupError::Malformed));
        assert_eq!(parse(&startup(b"database\0x\0\0")), Err(StartupError::NoUser));
        assert_eq!(parse(&startup(b"user\0\0\0")), Err(StartupError::NoUser));
        let mut v4 = 0x0004_0000i32.to_be_bytes().to_vec();
        v4.extend_from_slice(b"user\0u\0\0");
        assert_eq!(parse(&v4), Err(StartupError::UnsupportedProtocol(4, 0)));
        let mut short_cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        short_cancel.extend_from_slice(&[0, 0, 0, 5]);
        assert_eq!(parse(&short_cancel), Err(StartupError::Malformed));
    }

    #[test]
    fn newer_minor_versions_and_options_parse() {
        let mut b = 0x0003_0002i32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0u\0_pq_.compression\0on\0replication\0database\0\0");
        let StartupPacket::Startup(m) = parse(&b).expect("ok") else { panic!() };
        assert_eq!((m.major, m.minor), (3, 2));
        assert_eq!(m.protocol_options(), vec!["_pq_.compression".to_owned()]);
        assert!(m.wants_replication());
    }
}
