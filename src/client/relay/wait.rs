//! What the session waits for between its decisions: its sockets (the server written and
//! read, the client read, within the back-pressure bounds), its signals and its timer; and
//! the write of freshly staged bytes that needs no wait.
//!
//! Each socket's read is registered with a waker of its own (the session's
//! [`crate::console::live::Signal`] raises SERVER_READ or CLIENT_READ and wakes the task), so
//! a wake-up says which socket it came from: a read that is pending stays registered until
//! its wake-up, and the socket is not polled again before (only a wake-up takes the
//! registration). TLS sockets, whose reads may register a write, are polled at every wake-up
//! as before.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::plain::{self, PlainTcp};
use super::{buffers, Event, Exit, Session, Signals, MAX_CLIENT_BUFFERED, MAX_SERVER_BOUND, READ_CHUNK};
use crate::console::live::{CLIENT_READ, DRAIN, FORCE, KICK, SERVER_READ};

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    /// Not an `async fn`: the wait is this one `poll_fn`, polled directly (an async fn
    /// around it would add a state machine's resume and return to every poll, about 30
    /// instructions, four polls a round trip).
    pub(super) fn next_event<'a>(
        &'a mut self,
        signals: &'a mut Signals,
    ) -> impl Future<Output = Event> + Send + 'a {
        // Buffers grow with the bytes that arrive and shrink back once drained.
        for buf in [&mut self.cbuf, &mut self.sbuf, &mut self.out] {
            if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
                *buf = BytesMut::new();
            }
        }
        if self.server.is_some() {
            buffers::room(&mut self.sbuf);
            buffers::room(&mut self.cbuf);
        } else if self.cbuf.is_empty() {
            // Between transactions the buffers go back to the thread's spares, and the client
            // is waited for without one (see `buffers`).
            buffers::give_all([&mut self.sbuf, &mut self.out, &mut self.cbuf]);
        } else {
            buffers::give_all([&mut self.sbuf, &mut self.out]);
            buffers::room(&mut self.cbuf);
        }
        // Back-pressure: the client is read while little waits for the server, or when a frame
        // that must arrive whole is still incomplete (bounded by the message size limit and,
        // past `large::FREE`, by the large-message budget it took from).
        let waiting = self.cbuf.len() + self.out.len();
        super::large::settle(&mut self.large, waiting);
        let read_client = !self.terminated
            && self.broken.is_none()
            && (waiting < MAX_CLIENT_BUFFERED || (self.c_scanned == 0 && self.out.len() < MAX_SERVER_BOUND));
        let watched = if self.draining.is_none() { FORCE | DRAIN | KICK } else { FORCE };
        let limit = self.next_limit();
        if let Some((_, deadline)) = limit {
            self.arm_timer(deadline);
        }
        poll_fn(move |cx| {
            let signal = signals.poll(cx, watched);
            if signal == Some(FORCE) {
                return Poll::Ready(Event::Force);
            }
            if let Some((limit, deadline)) = limit {
                if Self::timer_expired(&mut self.timed, cx, deadline) {
                    return Poll::Ready(Event::Timeout(limit));
                }
            }
            match signal {
                Some(DRAIN) => return Poll::Ready(Event::Drain),
                Some(_) => return Poll::Ready(Event::Kick),
                None => {}
            }
            if let Some(server) = self.server.as_mut() {
                let stream = server.conn().stream_mut();
                let out: &[u8] = &self.out;
                if !out.is_empty() {
                    if let Poll::Ready(r) = plain::poll_write_any(&mut *stream, cx, out) {
                        return Poll::Ready(Event::ServerWrote(r));
                    }
                }
                // The server's socket is read with the session's signal as its waker: once a
                // read is pending, its wake-up (and only it) raises SERVER_READ, and until then
                // the socket has nothing new and is not polled again (the registration stays in
                // place: only a wake-up takes it). A new connection (see `attach`), a read that
                // returned and TLS (whose reads may register a write) are always polled.
                let fired = self.signal.take(SERVER_READ);
                if !self.progress.server_armed || fired {
                    self.progress.server_armed = false;
                    let tls = stream.is_tls();
                    let read = if tls {
                        poll_read_buf(Pin::new(stream), cx, &mut self.sbuf)
                    } else {
                        // Made per read (not kept: every client's task would carry it).
                        let waker = Waker::from(self.signal.clone());
                        let own = &mut Context::from_waker(&waker);
                        match stream.plain_tcp() {
                            // Not woken for it: the last read was the relay's own.
                            Some(tcp) if !fired => plain::poll_read_again(tcp, own, &mut self.sbuf),
                            _ => plain::poll_read_any(stream, own, &mut self.sbuf),
                        }
                    };
                    match read {
                        Poll::Ready(r) => return Poll::Ready(Event::ServerRead(r)),
                        Poll::Pending => self.progress.server_armed = !tls,
                    }
                }
            }
            if read_client {
                // As the server's socket above, with the client's own waker (CLIENT_READ).
                let fired = self.signal.take(CLIENT_READ);
                if !self.progress.client_armed || fired {
                    self.progress.client_armed = false;
                    let plain = self.progress.client_plain;
                    let read = if plain {
                        let mut own = Context::from_waker(&self.client_waker);
                        match self.client.plain_tcp() {
                            // As the server's above (a client without a buffer is idle: see
                            // `buffers::poll_read`, which waits for readiness first itself).
                            Some(tcp) if !fired && self.cbuf.capacity() != 0 => {
                                plain::poll_read_again(tcp, &mut own, &mut self.cbuf)
                            }
                            _ => buffers::poll_read(&mut self.client, &mut own, &mut self.cbuf),
                        }
                    } else {
                        buffers::poll_read(&mut self.client, cx, &mut self.cbuf)
                    };
                    match read {
                        Poll::Ready(r) => return Poll::Ready(Event::Client(r)),
                        Poll::Pending => self.progress.client_armed = plain,
                    }
                }
            }
            Poll::Pending
        })
    }

    /// Writes staged bytes to the server if its socket takes them now: `Ok(true)` when some
    /// went (the caller settles again, as after [`Event::ServerWrote`]), `Ok(false)` when
    /// nothing was written (nothing staged, no server, the socket full: `next_event` waits
    /// for it, its waker registered here or there). Polled once with the task's own context:
    /// never waits. A `poll_fn` returned, not an `async fn` around one (as `next_event`).
    pub(super) fn write_server_now(&mut self) -> impl Future<Output = Result<bool, Exit>> + Send + '_ {
        poll_fn(move |cx| {
            if self.out.is_empty() {
                return Poll::Ready(Ok(false));
            }
            let Some(server) = self.server.as_mut() else { return Poll::Ready(Ok(false)) };
            let stream = server.conn().stream_mut();
            let out: &[u8] = &self.out;
            Poll::Ready(match plain::poll_write_any(&mut *stream, cx, out) {
                Poll::Ready(Ok(0)) | Poll::Pending => Ok(false),
                Poll::Ready(Ok(n)) => {
                    self.consume_written(n);
                    Ok(true)
                }
                Poll::Ready(Err(_)) => Err(Exit::ServerLost),
            })
        })
    }

    pub(super) fn consume_written(&mut self, n: usize) {
        buffers::consume(&mut self.out, n);
    }
}
