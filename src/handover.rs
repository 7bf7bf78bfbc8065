//! Handing the listening socket to a new instance, so that a rolling restart refuses and
//! resets nobody (`[proxy] handover`).
//!
//! Each instance with `handover` set listens on that Unix socket. A new instance started
//! with the same setting connects to it first and receives the running instance's listening
//! socket (SCM_RIGHTS): the same socket, with its accept queue, not a second one bound to
//! the address. Once the new instance is serving it says so (one byte); the old one then
//! stops accepting and exits once its clients have left by themselves (at most
//! `shutdown_timeout`; SIGTERM still drains it faster). Nothing is closed in between, so no
//! connection queued in the kernel is reset, whatever `net.ipv4.tcp_migrate_req` says
//! (closing one of several SO_REUSEPORT sockets resets the connections in its own queue).
//!
//! The link stays open while the old instance drains and carries CancelRequests for its
//! clients: they reach the shared address, where only the new instance accepts now
//! (`crate::cancel`).
//!
//! Protocol, old → new: one byte `L` with the listening socket attached. New → old: one byte
//! `G` once it accepts, then whole CancelRequest packets. A new instance that fails before
//! `G` closes the link, and the old one goes on serving.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::protocol::startup::CANCEL_REQUEST_CODE;
use crate::proxy::Proxy;

/// How long a new instance waits for the old one to hand its socket over.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

const LISTENER: u8 = b'L';
const GO: u8 = b'G';

/// The link to the instance that served `handover` before this one, which handed its
/// listening socket over ([`take_over`]).
pub struct Predecessor {
    link: StdUnixStream,
}

/// Receives the listening socket of the instance serving at `path`; `None` when no instance
/// is there (no file, or a file left by one that has exited).
pub fn take_over(path: &Path) -> std::io::Result<Option<(std::net::TcpListener, Predecessor)>> {
    let link = match StdUnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    same_user(&link)?;
    link.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &link,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let fd = match fds.pop() {
        Some(fd) if fds.is_empty() && got.bytes == 1 && byte[0] == LISTENER => fd,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the running instance did not hand a listening socket over",
            ))
        }
    };
    let listener = std::net::TcpListener::from(fd);
    // A socket that is not a bound TCP socket fails here rather than at accept.
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(Some((listener, Predecessor { link })))
}

impl Predecessor {
    /// Tells the old instance that this one accepts now (it stops and drains), and keeps the
    /// link for its clients' cancels.
    pub async fn go(self, proxy: &Proxy) -> std::io::Result<()> {
        self.link.set_nonblocking(true)?;
        let mut link = UnixStream::from_std(self.link)?;
        link.write_all(&[GO]).await?;
        proxy.cancel.set_predecessor(link).await;
        Ok(())
    }
}

/// Binds `path` for the next instance, replacing the file a previous instance left (its
/// successor connects to it before this binds, so that file has served its purpose).
pub fn listen(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let unix = UnixListener::bind(path)?;
    // Whoever connects gets the listening socket: the file is the owner's alone, and the
    // peer's user is checked as well (see `same_user`).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(unix)
}

/// Only a process of the same user may take the listening socket over, or hand one over:
/// another local user connecting to the handover socket would otherwise receive it (or give
/// a new instance a socket of its own to accept on).
fn same_user(link: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(link)?;
    if peer.uid == rustix::process::geteuid() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("handover: the peer runs as uid {}, not as this process's user", peer.uid.as_raw()),
        ))
    }
}

/// Serves `handover` until this instance drains: a new instance that connects is given
/// `socket` (a duplicate of the listening socket); once it says it accepts, this instance
/// stops accepting, waits for its clients to leave (`SHUTDOWN WAIT_FOR_CLIENTS`: a client
/// between its login and its first query is served, not sent 57P01), and relays the cancels
/// the new one sends over. The duplicate is closed as soon as this instance stops
/// accepting for any reason, so that a socket nobody accepts on is not kept open.
pub async fn serve(unix: UnixListener, socket: OwnedFd, proxy: Arc<Proxy>) {
    let (drain, stop) = (proxy.shutdown.drain.clone(), proxy.shutdown.stop_accepting.clone());
    let link = loop {
        let mut link = tokio::select! {
            _ = drain.cancelled() => return,
            _ = stop.cancelled() => return,
            r = unix.accept() => match r {
                Ok((link, _)) => link,
                Err(e) => {
                    tracing::warn!(error = %e, "handover socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(e) = same_user(&link) {
            tracing::warn!(error = %e, "handover: refused a connection");
            continue;
        }
        if let Err(e) = send_socket(&link, &socket).await {
            tracing::warn!(error = %e, "handover: sending the listening socket failed");
            continue;
        }
        tracing::info!("handover: a new instance has the listening socket; serving until it accepts");
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = drain.cancelled() => return,
            _ = stop.cancelled() => return,
            r = link.read_exact(&mut byte) => match r {
                Ok(_) if byte[0] == GO => break link,
                _ => tracing::warn!("handover: the new instance left before accepting; serving on"),
            },
        }
    };
    drop(socket);
    tracing::info!("handover: the new instance accepts; waiting for this one's clients to leave");
    stop.cancel();
    relay_cancels(link, &proxy).await;
}

async fn send_socket(link: &UnixStream, socket: &OwnedFd) -> std::io::Result<()> {
    link.async_io(tokio::io::Interest::WRITABLE, || {
        let fds = [std::os::fd::AsFd::as_fd(socket)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(std::io::Error::other("no room for the descriptor"));
        }
        rustix::net::sendmsg(link, &[IoSlice::new(&[LISTENER])], &mut control, SendFlags::empty())
            .map_err(std::io::Error::from)
    })
    .await
    .map(|_| ())
}

/// Reads CancelRequests from the new instance until it closes the link, and cancels the
/// ones for this instance's clients (or passes them on to this instance's own predecessor).
async fn relay_cancels(mut link: UnixStream, proxy: &Arc<Proxy>) {
    loop {
        let mut len = [0u8; 4];
        if link.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = i32::from_be_bytes(len);
        // 16 bytes with a 4-byte secret, up to 268 with a 256-byte one (protocol 3.2).
        let Some(rest) = usize::try_from(len).ok().filter(|l| (16..=268).contains(l)).map(|l| l - 4) else {
            tracing::warn!(len, "handover link: not a CancelRequest; closing it");
            return;
        };
        let mut body = vec![0u8; rest];
        if link.read_exact(&mut body).await.is_err() {
            return;
        }
        let (code, pid, secret) = (&body[..4], &body[4..8], &body[8..]);
        if code != CANCEL_REQUEST_CODE.to_be_bytes() {
            tracing::warn!("handover link: not a CancelRequest; closing it");
            return;
        }
        let pid = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
        let (proxy, secret) = (proxy.clone(), secret.to_vec());
        tokio::spawn(async move { proxy.cancel.cancel_from_successor(pid, &secret).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_handover_socket_is_the_owners_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("handover.sock");
        let _unix = listen(&path).expect("listen");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        let (a, _b) = StdUnixStream::pair().expect("pair");
        assert!(same_user(&a).is_ok(), "a peer of the same user is accepted");
    }
}
