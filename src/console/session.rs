//! One console session after authentication: simple Query and the extended protocol
//! (monitoring agents use both), each answered from a [`ConsoleSource`].
//!
//! PgBouncer's console refuses the extended protocol; this one carries it out for the
//! statements the console knows, which take no parameters: Parse checks the statement,
//! Bind makes a portal, Execute runs it (honouring a row limit with PortalSuspended),
//! Describe tells the columns, Close forgets, Sync ends the implicit transaction (and drops
//! its portals), Flush sends what is pending. As in PostgreSQL, an error in the extended
//! protocol skips every message up to the next Sync.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::command::{self, Action, Command, ShutdownMode};
use super::error::ConsoleError;
use super::show::{self, Column, ShowError, Value, View};
use super::{Access, ConsoleSource};
use crate::protocol::backend::{self, cstr};
use crate::protocol::{FrameError, FrameReader, PgError};

/// The largest message the console reads. Console statements are one short line; PgBouncer
/// reads them into its 4 KiB packet buffer. Anything larger is refused and the session ends.
pub const MAX_CONSOLE_MESSAGE: usize = 16 * 1024;

/// Prepared statements and portals one session may hold at once.
const MAX_NAMED: usize = 64;

/// Output is written out once this much is pending, so a client that pipelines without
/// reading cannot make the console hold more.
const FLUSH_AT: usize = 64 * 1024;

/// Why a console session ended other than by the client's Terminate.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("console i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("console framing: {0}")]
    Frame(#[from] FrameError),
    /// A malformed or unsupported message; the client was sent 08P01 first.
    #[error("console protocol violation: {0}")]
    Protocol(String),
}

/// How a console session ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Terminate, or the client closed the connection between messages.
    ClientClosed,
    /// `SHUTDOWN` was accepted: PgBouncer sends no reply and the connection ends with the
    /// process; the caller closes it.
    Shutdown,
}

/// The messages a client sends, by tag (frontend direction only: `C` here is Close, not
/// CommandComplete). <https://www.postgresql.org/docs/current/protocol-message-formats.html>
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frontend {
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Sync,
    Flush,
    Close,
    Terminate,
    Other(u8),
}

impl From<u8> for Frontend {
    fn from(tag: u8) -> Self {
        match tag {
            b'Q' => Frontend::Query,
            b'P' => Frontend::Parse,
            b'B' => Frontend::Bind,
            b'D' => Frontend::Describe,
            b'E' => Frontend::Execute,
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            b'C' => Frontend::Close,
            b'X' => Frontend::Terminate,
            other => Frontend::Other(other),
        }
    }
}

/// What the client sees in its greeting after AuthenticationOk: PgBouncer's console sends
/// these (`admin_setup` in admin.c), with our version in `server_version`.
pub fn greeting(buf: &mut BytesMut, pid: i32, secret: i32) {
    backend::authentication_ok(buf);
    let version = format!("{}/pgtenant", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
    ] {
        backend::parameter_status(buf, name, value);
    }
    backend::backend_key_data(buf, pid, secret);
    backend::ready_for_query_idle(buf);
}

/// Reads a message body field by field; every read is checked against the bytes left.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let (s, rest) = cstr(self.0)?;
        self.0 = rest;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        let (b, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(i16::from_be_bytes(*b))
    }
    fn i32(&mut self) -> Option<i32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_be_bytes(*b))
    }
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }
    /// A count of items each at least `min` bytes long, bounded by the bytes left.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.i16()?).ok()?;
        (n * min <= self.0.len()).then_some(n)
    }
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// A portal: a statement bound with its result formats, and its rows once executed.
struct Portal {
    command: Command,
    formats: Vec<i16>,
    /// Rows not yet sent, once Execute fetched them.
    rows: Option<std::vec::IntoIter<Vec<Value>>>,
    /// An action already ran: a second Execute only repeats its tag.
    done: bool,
}

/// What one statement produces, before encoding.
enum Outcome {
    Rows(&'static [Column], Vec<Vec<Value>>),
    Notice(&'static str, Option<&'static str>, &'static str),
    Done(String),
    Shutdown,
}

struct Console<'s, S> {
    reader: FrameReader<S>,
    out: BytesMut,
    source: &'s dyn ConsoleSource,
    access: Access,
    statements: HashMap<Vec<u8>, Command>,
    portals: HashMap<Vec<u8>, Portal>,
    /// After an error in the extended protocol, messages are skipped up to Sync.
    skipping: bool,
}

/// Serves one authenticated console connection until the client leaves, `SHUTDOWN`, or a
/// protocol violation (answered with 08P01 first). `buffered` is what the handshake read
/// past the last authentication message. Sends nothing first: the caller's greeting ended
/// with ReadyForQuery.
pub async fn serve_console<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    buffered: BytesMut,
    source: &dyn ConsoleSource,
    access: Access,
) -> Result<SessionEnd, SessionError> {
    let mut c = Console {
        reader: FrameReader::with_buffer(stream, buffered, MAX_CONSOLE_MESSAGE),
        out: BytesMut::new(),
        source,
        access,
        statements: HashMap::new(),
        portals: HashMap::new(),
        skipping: false,
    };
    let end = c.run().await;
    // Whatever is pending (an error before closing, say) goes out on a best-effort basis.
    let _ = c.flush().await;
    end
}

impl<S: AsyncRead + AsyncWrite + Unpin> Console<'_, S> {
    async fn run(&mut self) -> Result<SessionEnd, SessionError> {
        loop {
            let frame = match self.reader.read_frame().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(SessionEnd::ClientClosed),
                Err(FrameError::Io(e)) => return Err(e.into()),
                Err(e) => return Err(self.violation(e.to_string())),
            };
            let body = frame.body();
            let msg = Frontend::from(frame.tag());
            // PostgreSQL discards everything up to Sync after an extended-protocol error,
            // simple Queries included (`ignore_till_sync` in `postgres.c`).
            if self.skipping && !matches!(msg, Frontend::Sync | Frontend::Terminate) {
                continue;
            }
            let step = match msg {
                Frontend::Query => self.query(body).await,
                Frontend::Parse => self.parse(body),
                Frontend::Bind => self.bind(body),
                Frontend::Describe => self.describe(body),
                Frontend::Execute => self.execute(body).await,
                Frontend::Close => self.close(body),
                Frontend::Sync => {
                    self.skipping = false;
                    self.portals.clear();
                    backend::ready_for_query_idle(&mut self.out);
                    self.flush().await?;
                    Ok(None)
                }
                Frontend::Flush => {
                    self.flush().await?;
                    Ok(None)
                }
                Frontend::Terminate => return Ok(SessionEnd::ClientClosed),
                Frontend::Other(tag) => {
                    return Err(self.violation(format!(
                        "unsupported packet type for admin console: {}",
                        char::from(tag).escape_default()
                    )))
                }
            };
            match step {
                Ok(Some(end)) => return Ok(end),
                Ok(None) => {}
                Err(Step::Malformed(what)) => return Err(self.violation(format!("malformed {what} message"))),
                Err(Step::Io(e)) => return Err(e),
            }
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            let stream = self.reader.get_mut();
            stream.write_all(&self.out).await?;
            stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues FATAL 08P01 and gives the error that ends the session.
    fn violation(&mut self, what: String) -> SessionError {
        PgError::console_fatal(what.clone()).encode(&mut self.out);
        SessionError::Protocol(what)
    }

    /// An error in the extended protocol: sent, then everything skipped up to Sync.
    fn extended_error(&mut self, e: PgError) {
        e.encode(&mut self.out);
        self.skipping = true;
    }

    /// Simple Query: one statement, its result, ReadyForQuery. Errors leave the session on.
    async fn query(&mut self, body: &[u8]) -> StepResult {
        let mut b = Body(body);
        let q = b.cstr().ok_or(Step::Malformed("Query"))?;
        b.end().ok_or(Step::Malformed("Query"))?;
        let q = String::from_utf8_lossy(q);
        // A simple Query ends the implicit transaction and replaces the unnamed statement
        // (protocol docs, "Simple Query"): portals and the unnamed statement go.
        self.portals.clear();
        self.statements.remove(&b""[..]);
        match command::parse(&q) {
            Ok(cmd) => match self.run_command(&cmd).await {
                Ok(Outcome::Shutdown) => return Ok(Some(SessionEnd::Shutdown)),
                Ok(outcome) => {
                    if let Err(e) = self.encode_simple(outcome) {
                        internal(e).encode(&mut self.out);
                    }
                }
                Err(e) => e.to_pg_error().encode(&mut self.out),
            },
            Err(e) => e.to_pg_error().encode(&mut self.out),
        }
        backend::ready_for_query_idle(&mut self.out);
        self.flush().await.map_err(Step::Io)?;
        Ok(None)
    }

    fn encode_simple(&mut self, outcome: Outcome) -> Result<(), ShowError> {
        match outcome {
            Outcome::Rows(columns, rows) => show::result_set(&mut self.out, columns, &rows),
            Outcome::Notice(message, detail, tag) => {
                notice(&mut self.out, message, detail);
                show::command_complete(&mut self.out, tag);
                Ok(())
            }
            Outcome::Done(tag) => {
                show::command_complete(&mut self.out, &tag);
                Ok(())
            }
            Outcome::Shutdown => Ok(()),
        }
    }

    /// Runs a statement against the source. SHOW is open to every console user; actions
    /// only to admin users, as in PgBouncer.
    async fn run_command(&self, cmd: &Command) -> Result<Outcome, ConsoleError> {
        Ok(match cmd {
            Command::Show(View::Version) => {
                Outcome::Rows(View::Version.columns(), vec![vec![show::version_string().into()]])
            }
            Command::Show(view) => Outcome::Rows(view.columns(), self.source.rows(*view).await?),
            Command::Help => Outcome::Notice("Console usage", Some(HELP), "SHOW"),
            Command::ShowParam(name, value) => {
                Outcome::Rows(param_columns(name), vec![vec![(*value).into()]])
            }
            Command::IgnoredSet => Outcome::Notice("SET ignored", None, "SET"),
            Command::Action(action) => {
                if self.access != Access::Admin {
                    return Err(ConsoleError::AdminAccessNeeded);
                }
                self.source.act(action).await?;
                match action {
                    Action::Shutdown(ShutdownMode::Immediate) => Outcome::Shutdown,
                    other => Outcome::Done(other.tag()),
                }
            }
        })
    }

    fn parse(&mut self, body: &[u8]) -> StepResult {
        let mut b = Body(body);
        let name = b.cstr().ok_or(Step::Malformed("Parse"))?;
        let query = b.cstr().ok_or(Step::Malformed("Parse"))?;
        let n = b.count(4).ok_or(Step::Malformed("Parse"))?;
        b.skip(4 * n).ok_or(Step::Malformed("Parse"))?;
        b.end().ok_or(Step::Malformed("Parse"))?;
        let cmd = match command::parse(&String::from_utf8_lossy(query)) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.extended_error(e.to_pg_error());
                return Ok(None);
            }
        };
        if !name.is_empty() && self.statements.contains_key(name) {
            self.extended_error(PgError::duplicate_statement(name));
            return Ok(None);
        }
        if self.statements.len() >= MAX_NAMED && !self.statements.contains_key(name) {
            self.extended_error(too_many("prepared statements"));
            return Ok(None);
        }
        self.statements.insert(name.to_vec(), cmd);
        self.out.put_slice(b"1\0\0\0\x04"); // ParseComplete
        Ok(None)
    }

    fn bind(&mut self, body: &[u8]) -> StepResult {
        let mut b = Body(body);
        let portal = b.cstr().ok_or(Step::Malformed("Bind"))?;
        let statement = b.cstr().ok_or(Step::Malformed("Bind"))?;
        let n = b.count(2).ok_or(Step::Malformed("Bind"))?;
        b.skip(2 * n).ok_or(Step::Malformed("Bind"))?;
        let params = b.count(4).ok_or(Step::Malformed("Bind"))?;
        for _ in 0..params {
            let len = b.i32().ok_or(Step::Malformed("Bind"))?;
            if let Ok(len) = usize::try_from(len) {
                b.skip(len).ok_or(Step::Malformed("Bind"))?;
            }
        }
        let n = b.count(2).ok_or(Step::Malformed("Bind"))?;
        let formats: Vec<i16> =
            (0..n).map(|_| b.i16()).collect::<Option<_>>().ok_or(Step::Malformed("Bind"))?;
        b.end().ok_or(Step::Malformed("Bind"))?;
        let Some(command) = self.statements.get(statement).cloned() else {
            self.extended_error(PgError::no_such_statement(statement));
            return Ok(None);
        };
        if params != 0 {
            // PostgreSQL's text for a parameter count that does not match (08P01).
            self.extended_error(PgError::console(format!(
                "bind message supplies {params} parameters, but prepared statement requires 0"
            )));
            return Ok(None);
        }
        if let Err(e) = show::check_formats(columns_of(&command).unwrap_or(&[]), &formats) {
            self.extended_error(PgError::console(e.to_string()));
            return Ok(None);
        }
        if self.portals.len() >= MAX_NAMED && !self.portals.contains_key(portal) {
            self.extended_error(too_many("portals"));
            return Ok(None);
        }
        self.portals.insert(portal.to_vec(), Portal { command, formats, rows: None, done: false });
        self.out.put_slice(b"2\0\0\0\x04"); // BindComplete
        Ok(None)
    }

    fn describe(&mut self, body: &[u8]) -> StepResult {
        let mut b = Body(body);
        let kind = b.u8().ok_or(Step::Malformed("Describe"))?;
        let name = b.cstr().ok_or(Step::Malformed("Describe"))?;
        b.end().ok_or(Step::Malformed("Describe"))?;
        let (command, formats) = match kind {
            b'S' => match self.statements.get(name) {
                Some(cmd) => {
                    self.out.put_slice(b"t\0\0\0\x06\0\0"); // ParameterDescription: none
                    (cmd, &[][..])
                }
                None => {
                    self.extended_error(PgError::no_such_statement(name));
                    return Ok(None);
                }
            },
            b'P' => match self.portals.get(name) {
                Some(p) => (&p.command, &p.formats[..]),
                None => {
                    self.extended_error(PgError::no_such_portal(name));
                    return Ok(None);
                }
            },
            _ => return Err(Step::Malformed("Describe")),
        };
        match columns_of(command) {
            Some(columns) => {
                if let Err(e) = show::row_description(&mut self.out, columns, formats) {
                    let e = PgError::console(e.to_string());
                    self.extended_error(e);
                }
            }
            None => self.out.put_slice(b"n\0\0\0\x04"), // NoData
        }
        Ok(None)
    }

    async fn execute(&mut self, body: &[u8]) -> StepResult {
        let mut b = Body(body);
        let name = b.cstr().ok_or(Step::Malformed("Execute"))?.to_vec();
        let max_rows = b.i32().ok_or(Step::Malformed("Execute"))?;
        b.end().ok_or(Step::Malformed("Execute"))?;
        let Some(portal) = self.portals.get(&name) else {
            self.extended_error(PgError::no_such_portal(&name));
            return Ok(None);
        };
        // First Execute of a portal: run its statement; later ones go on with its rows.
        if portal.rows.is_none() && !portal.done {
            let cmd = portal.command.clone();
            match self.run_command(&cmd).await {
                Ok(Outcome::Shutdown) => return Ok(Some(SessionEnd::Shutdown)),
                Ok(Outcome::Rows(_, rows)) => {
                    if let Some(p) = self.portals.get_mut(&name) {
                        p.rows = Some(rows.into_iter());
                    }
                }
                Ok(Outcome::Notice(message, detail, _)) => notice(&mut self.out, message, detail),
                Ok(Outcome::Done(_)) => {}
                Err(e) => {
                    self.extended_error(e.to_pg_error());
                    return Ok(None);
                }
            }
        }
        let Some(portal) = self.portals.get_mut(&name) else {
            return Ok(None);
        };
        portal.done = true;
        let Some(rows) = portal.rows.as_mut() else {
            show::command_complete(&mut self.out, &tag_of(&portal.command));
            return Ok(None);
        };
        let columns = columns_of(&portal.command).unwrap_or(&[]);
        // A limit of 0 (or less) means all rows.
        let limit = usize::try_from(max_rows).ok().filter(|&n| n > 0).unwrap_or(usize::MAX);
        let mut sent = 0;
        while sent < limit {
            let Some(row) = rows.next() else { break };
            if let Err(e) = show::data_row(&mut self.out, columns, &row, &portal.formats) {
                let e = internal(e);
                self.extended_error(e);
                return Ok(None);
            }
            sent += 1;
        }
        if rows.len() > 0 {
            self.out.put_slice(b"s\0\0\0\x04"); // PortalSuspended
        } else {
            show::command_complete(&mut self.out, "SHOW");
        }
        Ok(None)
    }

    fn close(&mut self, body: &[u8]) -> StepResult {
        let mut b = Body(body);
        let kind = b.u8().ok_or(Step::Malformed("Close"))?;
        let name = b.cstr().ok_or(Step::Malformed("Close"))?;
        b.end().ok_or(Step::Malformed("Close"))?;
        // Closing a name that does not exist is not an error (PostgreSQL's rule).
        match kind {
            b'S' => drop(self.statements.remove(name)),
            b'P' => drop(self.portals.remove(name)),
            _ => return Err(Step::Malformed("Close")),
        }
        self.out.put_slice(b"3\0\0\0\x04"); // CloseComplete
        Ok(None)
    }
}

/// Why a message could not be handled: malformed (ends the session with 08P01) or a failed
/// write to the client.
enum Step {
    Malformed(&'static str),
    Io(SessionError),
}

type StepResult = Result<Option<SessionEnd>, Step>;

/// The columns a statement returns, `None` for one that returns no rows.
fn columns_of(cmd: &Command) -> Option<&'static [Column]> {
    match cmd {
        Command::Show(view) => Some(view.columns()),
        Command::ShowParam(name, _) => Some(param_columns(name)),
        Command::Help | Command::IgnoredSet | Command::Action(_) => None,
    }
}

fn tag_of(cmd: &Command) -> String {
    match cmd {
        Command::Show(_) | Command::ShowParam(..) | Command::Help => "SHOW".into(),
        Command::IgnoredSet => "SET".into(),
        Command::Action(a) => a.tag(),
    }
}

/// The one text column `SHOW client_encoding` and the like answer with.
fn param_columns(name: &str) -> &'static [Column] {
    const fn text(name: &'static str) -> [Column; 1] {
        [Column { name, ty: show::ColType::Text }]
    }
    const COLS: [[Column; 1]; 5] = [
        text("client_encoding"),
        text("default_transaction_isolation"),
        text("standard_conforming_strings"),
        text("datestyle"),
        text("timezone"),
    ];
    COLS.iter().find(|c| c[0].name == name).map_or(&[], |c| &c[..])
}

fn too_many(what: &str) -> PgError {
    PgError::console_limit(MAX_NAMED, what)
}

/// A row the proxy handed over did not fit its view: logged in full, reported by reference.
fn internal(e: ShowError) -> PgError {
    let reference = PgError::reference();
    tracing::error!(error = %e, reference, "admin console could not encode a result");
    PgError::console_internal(&reference)
}

/// NoticeResponse with severity NOTICE and SQLSTATE 00000, as PgBouncer sends them.
fn notice(buf: &mut BytesMut, message: &str, detail: Option<&str>) {
    show::frame(buf, b'N', |b| {
        for (field, value) in [
            (b'S', Some("NOTICE")),
            (b'V', Some("NOTICE")),
            (b'C', Some("00000")),
            (b'M', Some(message)),
            (b'D', detail),
        ] {
            if let Some(value) = value {
                b.put_u8(field);
                show::cstring(b, value);
            }
        }
        b.put_u8(0);
    });
}

/// `SHOW HELP`'s detail, PgBouncer's list less what this console does not carry out.
const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
\tSHOW LISTS|STATE\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES\n\
\tSHOW TENANTS|USAGE|INSTANCES\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tKILL_CLIENT <client_id>\n\
\tSHUTDOWN\n\
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
\tWAIT_CLOSE [<db>]";

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
