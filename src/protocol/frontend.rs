//! Frontend messages pgtenant sends to upstream servers, built with `postgres-protocol`
//! (the same code tokio-postgres uses), plus the CancelRequest packet.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

/// The CancelRequest code word (`CANCEL_REQUEST_CODE` in `src/include/libpq/pqcomm.h`).
pub const CANCEL_REQUEST_CODE: i32 = 80877102;

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

pub fn terminate(buf: &mut BytesMut) {
    frontend::terminate(buf);
}

pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}
