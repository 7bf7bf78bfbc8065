//! Console statements: the grammar PgBouncer's admin console accepts (`src/admin.c`,
//! `cmd_normal_rx`, `cmd_set_word_rx`, `cmd_set_str_rx`), parsed by hand into [`Command`].
//!
//! One statement per query, case-insensitive, an optional trailing `;`:
//! `WORD [WORD]`, `SET key = value` / `SET key TO value`, where a word is `[0-9a-z_]+` or a
//! double-quoted identifier (`""` for a quote) and a value is a word or a single-quoted
//! string (`''` for a quote). Anything else is PgBouncer's "invalid command".

use super::error::ConsoleError;
use super::show::View;

/// PgBouncer copies a command name into 16 bytes, an argument into 64 and a SET value into
/// 256 (NUL included); longer ones are "bad arguments".
const MAX_CMD: usize = 15;
const MAX_ARG: usize = 63;
const MAX_VAL: usize = 255;

/// Settings some drivers SET or SHOW at connect without checking whether they must; the
/// console answers them with fixed values and ignores SETs (`fake_param_list` in admin.c).
pub const FAKE_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
];

/// One parsed console statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `SHOW view` (or `SELECT view`, which PgBouncer treats the same).
    Show(View),
    /// `SHOW HELP`: a notice listing the commands.
    Help,
    /// `SHOW client_encoding` and the other settings in [`FAKE_PARAMS`]: name and value.
    ShowParam(&'static str, &'static str),
    /// `SET` of a setting in [`FAKE_PARAMS`]: acknowledged and ignored.
    IgnoredSet,
    /// Something that changes the proxy (admin users only).
    Action(Action),
}

/// What the console asks the proxy to do. A tenant plays PgBouncer's database; `None` means
/// every tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No new transaction starts; running ones finish; answered once they have.
    Pause(Option<String>),
    Resume(Option<String>),
    /// Server connections are closed once released, and replaced.
    Reconnect(Option<String>),
    /// Clients and server connections are closed at once, and the tenant paused.
    Kill(Option<String>),
    /// One client, by the `id` that `SHOW CLIENTS` lists.
    KillClient(u64),
    Reload,
    /// Answered once the server connections that `RECONNECT` or `RELOAD` marked are closed.
    WaitClose(Option<String>),
    Shutdown(ShutdownMode),
    /// `SET key = value` of a live setting.
    Set {
        key: String,
        value: String,
    },
}

impl Action {
    /// The CommandComplete tag PgBouncer answers the action with.
    pub fn tag(&self) -> String {
        match self {
            Action::Pause(_) => "PAUSE".into(),
            Action::Resume(_) => "RESUME".into(),
            Action::Reconnect(_) => "RECONNECT".into(),
            Action::Kill(_) => "KILL".into(),
            Action::KillClient(_) => "KILL_CLIENT".into(),
            Action::Reload => "RELOAD".into(),
            Action::WaitClose(_) => "WAIT_CLOSE".into(),
            Action::Shutdown(_) => "SHUTDOWN".into(),
            Action::Set { key, value } => format!("SET {key}={value}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// `SHUTDOWN`: stop now; PgBouncer sends no reply, the connection ends with the process.
    Immediate,
    /// `SHUTDOWN WAIT_FOR_CLIENTS`: stop listening, exit when the last client has gone.
    WaitForClients,
    /// `SHUTDOWN WAIT_FOR_SERVERS`: pause, exit when the server connections are released.
    WaitForServers,
}

#[derive(Debug, PartialEq, Eq)]
enum Tok {
    /// A word, unquoted if it was a quoted identifier; `bare` when it was not quoted.
    Word {
        text: String,
        bare: bool,
    },
    /// A single-quoted string, unquoted.
    Str(String),
    Eq,
    Semi,
}

/// A token and whether whitespace came before it.
type Spaced = (bool, Tok);

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Reads a quoted token whose opening quote `q` has been consumed; `''`/`""` is one quote.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, q: char) -> Option<String> {
    let mut out = String::new();
    loop {
        let c = chars.next()?;
        if c == q {
            if chars.peek() == Some(&q) {
                chars.next();
                out.push(q);
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
}

/// Splits a statement into tokens; `None` for anything PgBouncer's grammar has no place for.
fn tokenize(q: &str) -> Option<Vec<Spaced>> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    let mut spaced = false;
    while let Some(&c) = chars.peek() {
        if is_ws(c) {
            chars.next();
            spaced = true;
            continue;
        }
        let tok = match c {
            '"' => {
                chars.next();
                let text = quoted(&mut chars, '"')?;
                // The regex's quoted word is `"([^"]+|"")*"`: an empty `""` is no word.
                if text.is_empty() {
                    return None;
                }
                Tok::Word { text, bare: false }
            }
            '\'' => {
                chars.next();
                Tok::Str(quoted(&mut chars, '\'')?)
            }
            '=' => {
                chars.next();
                Tok::Eq
            }
            ';' => {
                chars.next();
                Tok::Semi
            }
            c if is_word_char(c) => {
                let mut text = String::new();
                while let Some(&c) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    text.push(c);
                    chars.next();
                }
                Tok::Word { text, bare: true }
            }
            _ => return None,
        };
        out.push((spaced, tok));
        spaced = false;
    }
    // At most one `;`, and only last.
    if let Some((_, Tok::Semi)) = out.last() {
        out.pop();
    }
    if out.iter().any(|(_, t)| *t == Tok::Semi) {
        return None;
    }
    Some(out)
}

/// Parses one console query. Errors are the ones PgBouncer answers with.
pub fn parse(query: &str) -> Result<Command, ConsoleError> {
    let invalid = || ConsoleError::InvalidCommand(query.to_owned());
    let toks = tokenize(query).ok_or_else(invalid)?;
    match toks.as_slice() {
        // `WORD [WS1 WORD]`.
        [(_, Tok::Word { text: cmd, .. })] => command(cmd, "", query),
        [(_, Tok::Word { text: cmd, .. }), (true, Tok::Word { text: arg, .. })] => command(cmd, arg, query),
        // `set WS1 WORD WS0 (=|to) WS0 (WORD|STRING)`: `set` and `to` are literal, not quoted.
        [(_, Tok::Word { text: set, bare: true }), (true, Tok::Word { text: key, .. }), (_, op), (_, val)]
            if set.eq_ignore_ascii_case("set") && is_assign(op) =>
        {
            let value = match val {
                Tok::Word { text, .. } | Tok::Str(text) => text,
                _ => return Err(invalid()),
            };
            // `to` needs whitespace both sides to be a word of its own, which the
            // tokenizer gives: `keyto` is one word.
            if key.len() > MAX_ARG || value.len() > MAX_VAL {
                return Err(ConsoleError::BadArguments);
            }
            if FAKE_PARAMS.iter().any(|(name, _)| name.eq_ignore_ascii_case(key)) {
                return Ok(Command::IgnoredSet);
            }
            Ok(Command::Action(Action::Set { key: key.clone(), value: value.clone() }))
        }
        _ => Err(invalid()),
    }
}

fn is_assign(op: &Tok) -> bool {
    match op {
        Tok::Eq => true,
        Tok::Word { text, bare: true } => text.eq_ignore_ascii_case("to"),
        _ => false,
    }
}

/// `cmd [arg]`, looked up as PgBouncer's `cmd_list` does.
fn command(cmd: &str, arg: &str, query: &str) -> Result<Command, ConsoleError> {
    if cmd.len() > MAX_CMD || arg.len() > MAX_ARG {
        return Err(ConsoleError::BadArguments);
    }
    let invalid = || ConsoleError::InvalidCommand(query.to_owned());
    let db = || (!arg.is_empty()).then(|| arg.to_owned());
    let cmd = cmd.to_ascii_lowercase();
    let action = match cmd.as_str() {
        "show" | "select" => return show(arg).ok_or_else(invalid),
        "pause" => Action::Pause(db()),
        "resume" => Action::Resume(db()),
        "reconnect" => Action::Reconnect(db()),
        "kill" => Action::Kill(db()),
        "kill_client" => Action::KillClient(client_id(arg).ok_or(ConsoleError::InvalidClientId)?),
        // PgBouncer ignores an argument to RELOAD.
        "reload" => Action::Reload,
        "wait_close" => Action::WaitClose(db()),
        "shutdown" => Action::Shutdown(match arg.to_ascii_lowercase().as_str() {
            "" => ShutdownMode::Immediate,
            "wait_for_clients" => ShutdownMode::WaitForClients,
            "wait_for_servers" => ShutdownMode::WaitForServers,
            _ => return Err(invalid()),
        }),
        _ => return Err(invalid()),
    };
    Ok(Command::Action(action))
}

/// `sscanf("%llu")`: leading digits, whatever follows them.
fn client_id(arg: &str) -> Option<u64> {
    let end = arg.find(|c: char| !c.is_ascii_digit()).unwrap_or(arg.len());
    arg.get(..end)?.parse().ok()
}

fn show(arg: &str) -> Option<Command> {
    if let Some((name, value)) = FAKE_PARAMS.iter().find(|(name, _)| name.eq_ignore_ascii_case(arg)) {
        return Some(Command::ShowParam(name, value));
    }
    if arg.eq_ignore_ascii_case("help") {
        return Some(Command::Help);
    }
    View::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(arg)).map(Command::Show)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> Command {
        parse(q).unwrap_or_else(|e| panic!("{q}: {e:?}"))
    }

    #[test]
    fn shows_any_case_with_or_without_semicolon() {
        assert_eq!(ok("SHOW POOLS"), Command::Show(View::Pools));
        assert_eq!(ok("  show\tpools ;  "), Command::Show(View::Pools));
        assert_eq!(ok("Show Stats_Totals;"), Command::Show(View::StatsTotals));
        assert_eq!(ok("select tenants"), Command::Show(View::Tenants));
        assert_eq!(ok("\"show\" \"pools\""), Command::Show(View::Pools));
        for v in View::ALL {
            assert_eq!(ok(&format!("show {}", v.name().to_uppercase())), Command::Show(*v));
        }
        assert_eq!(ok("SHOW HELP"), Command::Help);
        assert_eq!(ok("show CLIENT_ENCODING"), Command::ShowParam("client_encoding", "UTF-8"));
    }

    #[test]
    fn actions_and_their_arguments() {
        assert_eq!(ok("PAUSE"), Command::Action(Action::Pause(None)));
        assert_eq!(ok("pause acme;"), Command::Action(Action::Pause(Some("acme".into()))));
        assert_eq!(ok("RESUME \"Acme\"\"s\""), Command::Action(Action::Resume(Some("Acme\"s".into()))));
        assert_eq!(ok("reconnect"), Command::Action(Action::Reconnect(None)));
        assert_eq!(ok("KILL acme"), Command::Action(Action::Kill(Some("acme".into()))));
        assert_eq!(ok("KILL_CLIENT 42"), Command::Action(Action::KillClient(42)));
        assert_eq!(ok("RELOAD"), Command::Action(Action::Reload));
        assert_eq!(ok("wait_close acme"), Command::Action(Action::WaitClose(Some("acme".into()))));
        assert_eq!(ok("SHUTDOWN"), Command::Action(Action::Shutdown(ShutdownMode::Immediate)));
        assert_eq!(
            ok("shutdown wait_for_clients"),
            Command::Action(Action::Shutdown(ShutdownMode::WaitForClients))
        );
        let set = |k: &str, v: &str| Command::Action(Action::Set { key: k.into(), value: v.into() });
        assert_eq!(ok("SET default_pool_size = 20"), set("default_pool_size", "20"));
        assert_eq!(ok("set log_level to 'debug';"), set("log_level", "debug"));
        assert_eq!(ok("SET x='it''s'"), set("x", "it's"));
        assert_eq!(ok("SET client_encoding = 'UTF8'"), Command::IgnoredSet);
        assert_eq!(Action::Set { key: "a".into(), value: "b".into() }.tag(), "SET a=b");
    }

    #[test]
    fn errors_are_pgbouncers() {
        for q in [
            "",
            ";",
            "SHOW",
            "SHOW FOO",
            "SHOW POOLS STATS",
            "SHOW POOLS; SHOW STATS",
            "SHOWPOOLS x",
            "show pools;;",
            "SHUTDOWN NOW",
            "SET x",
            "SET x == 1",
            "FOO",
            "SHOW pg.pools",
            "\"\"",
            "show \"pools",
            "SET \"set\" x = 1",
        ] {
            let e = parse(q).expect_err(q);
            assert_eq!(e, ConsoleError::InvalidCommand(q.into()), "{q}");
            assert_eq!(e.to_pg_error().message, format!("invalid command '{q}', use SHOW HELP;"));
            assert_eq!(e.to_pg_error().state.code(), "08P01");
        }
        assert_eq!(parse("KILL_CLIENT abc"), Err(ConsoleError::InvalidClientId));
        assert_eq!(parse("KILL_CLIENT 7x"), Ok(Command::Action(Action::KillClient(7))));
        assert_eq!(parse(&format!("PAUSE {}", "a".repeat(64))), Err(ConsoleError::BadArguments));
        assert_eq!(parse(&format!("PAUSE {}", "a".repeat(63))).map(|_| ()), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_never_panic(q in ".{0,200}") {
            let _ = parse(&q);
        }

        #[test]
        fn near_miss_strings_never_panic(q in "[ ;='\"a-zA-Z_0-9\t]{0,60}") {
            let _ = parse(&q);
        }
    }
}
