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
