//! The PgBouncer-compatible admin console: statements ([`command`]), the columns of each
//! SHOW and their encoding ([`show`]), one authenticated session over the simple and the
//! extended protocol ([`session`]), and what it needs from the proxy ([`ConsoleSource`]).
//!
//! The console does not start or authenticate connections: the listener does the startup
//! and authentication, sends [`session::greeting`], then hands the stream to
//! [`serve_console`].

pub mod command;
pub mod error;
pub mod live;
pub mod session;
pub mod show;

use std::future::Future;
use std::pin::Pin;

pub use command::{Action, Command, ShutdownMode};
pub use error::ConsoleError;
pub use session::{greeting, serve_console, SessionEnd, SessionError};
pub use show::{ColType, Column, Value, View};

/// A boxed future, so that [`ConsoleSource`] can be used as `&dyn`.
pub type ConsoleFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ConsoleError>> + Send + 'a>>;

/// What a console user may do: PgBouncer's `admin_users` and `stats_users`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every statement.
    Admin,
    /// SHOW only; actions answer "admin access needed".
    Stats,
}

/// What the console needs from the proxy. Implemented by the proxy over its pools, clients
/// and catalog; a test double implements it in the tests.
pub trait ConsoleSource: Send + Sync {
    /// The rows of one view, each as wide as `view.columns()` and in that order. `VERSION`
    /// never reaches here (the console answers it itself).
    fn rows(&self, view: View) -> ConsoleFuture<'_, Vec<Vec<Value>>>;

    /// Carries out an action; the future ends when PgBouncer would answer (PAUSE once the
    /// running transactions have finished, WAIT_CLOSE once the marked connections are
    /// closed). A stats user's actions are refused before they get here.
    fn act<'a>(&'a self, action: &'a Action) -> ConsoleFuture<'a, ()>;
}
