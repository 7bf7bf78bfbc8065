//! The `pgtenant` binary of this build, run as a user would: with arguments, environment and
//! standard input, to its exit.

use tokio::io::AsyncWriteExt;

/// A command for the `pgtenant` binary, to add arguments to (for a process kept running, such
/// as `serve`).
pub fn pgtenant_command() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
}

/// Runs `pgtenant args` with `stdin` written to it (then closed); returns (exit code, stdout,
/// stderr), the exit code -1 when a signal ended it.
pub async fn pgtenant(args: &[&str], stdin: &str) -> (i32, String, String) {
    pgtenant_env(args, stdin, &[]).await
}

/// [`pgtenant`] with environment variables set.
pub async fn pgtenant_env(args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = pgtenant_command()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pgtenant");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("pgtenant output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `pgtenant serve` process a test started: its log (standard error) collected as it comes —
/// a full pipe would stall the process — and the address it said it listens on.
pub struct ServeProcess {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServeProcess {
    /// Runs `command` (a `pgtenant serve …` with its arguments and environment) and returns
    /// once it logs where it listens; panics with its log if that takes over 30 s.
    pub async fn spawn(command: &mut tokio::process::Command) -> ServeProcess {
        use std::process::Stdio;
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run pgtenant serve");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut log = sink.lock().expect("log");
                    log.push_str(&line);
                    log.push('\n');
                }
                // Told once the line is in the log, so the caller sees it there.
                if line.contains("pgtenant listening") {
                    if let (Some(tx), Some(addr)) = (tx.take(), listen_addr(&line)) {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = tokio::time::timeout(std::time::Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("pgtenant did not start: {}", log.lock().expect("log")))
            .unwrap_or_else(|_| panic!("pgtenant ended before listening: {}", log.lock().expect("log")));
        ServeProcess { child, addr, log }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Sends signal `name` (`HUP`, `TERM` …) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
        assert!(ok.expect("kill").success(), "kill -{name} {pid}");
    }

    /// Waits at most `within` for the process to exit by itself, which it must do with
    /// success; returns its log.
    pub async fn exited(mut self, within: std::time::Duration) -> String {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!("still running after {within:?}: {}", self.log()),
        };
        assert!(status.success(), "{status:?}: {}", self.log());
        self.log()
    }
}

/// `addr=127.0.0.1:PORT` in a log line (colour codes or not).
fn listen_addr(line: &str) -> Option<std::net::SocketAddr> {
    let plain = strip_ansi(line);
    let at = plain.find("addr=")? + "addr=".len();
    plain[at..].split_whitespace().next()?.trim_matches('"').parse().ok()
}

/// `s` without ANSI escape sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
