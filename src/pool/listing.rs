//! The server connections a pool has open, for the console's SHOW SERVERS: an entry is
//! added when a connection is opened and removed when it closes (its [`Listed`] guard is
//! dropped with it), never touched per checkout or per message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::ServerConn;
use crate::model::TenantId;

/// One open server connection as SHOW SERVERS lists it.
#[derive(Clone, Debug)]
pub struct ServerRow {
    /// Unique among the pool's connections (PgBouncer's `id`).
    pub id: u64,
    /// The upstream's `host:port` (or socket path).
    pub addr: String,
    pub connected_at: SystemTime,
    /// The upstream backend's process id.
    pub backend_pid: i32,
    pub tls: bool,
    /// In the pool now (else checked out by a client).
    pub idle: bool,
    /// The tenant an idle connection was last set up for.
    pub tenant: Option<TenantId>,
    /// Opened before a RECONNECT or login change: closed when released.
    pub close_needed: bool,
    /// Statements pgtenant prepared on it (known for idle connections).
    pub prepared: usize,
    /// The login generation it was opened with.
    generation: u64,
}

/// A pool's open connections.
#[derive(Debug, Default)]
pub(super) struct Listing {
    next: Mutex<u64>,
    rows: Arc<Mutex<HashMap<u64, ServerRow>>>,
}

/// Keeps a connection listed while it lives. One pointer wide: a server connection is held
/// inline in every client session's task.
#[derive(Debug)]
pub struct Listed(Arc<Entry>);

#[derive(Debug)]
struct Entry {
    id: u64,
    rows: Arc<Mutex<HashMap<u64, ServerRow>>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Listing {
    /// Lists a connection just opened.
    pub(super) fn add(&self, conn: &ServerConn) -> Listed {
        let id = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let row = ServerRow {
            id,
            addr: conn.addr.to_string(),
            connected_at: SystemTime::now(),
            backend_pid: conn.backend_pid,
            tls: conn.stream.is_tls(),
            idle: false,
            tenant: None,
            close_needed: false,
            prepared: 0,
            generation: conn.generation,
        };
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).insert(id, row);
        Listed(Arc::new(Entry { id, rows: self.rows.clone() }))
    }

    /// Every open connection; `idle` are the pool's idle ones now, `generation` the
    /// current login generation.
    pub(super) fn rows(&self, idle: &[Box<ServerConn>], generation: u64) -> Vec<ServerRow> {
        let mut rows: Vec<ServerRow> =
            self.rows.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for row in &mut rows {
            row.close_needed = row.generation != generation;
            if let Some(c) = idle.iter().find(|c| c.listed.as_ref().is_some_and(|l| l.0.id == row.id)) {
                row.idle = true;
                row.tenant = c.tenant.clone();
                row.prepared = c.prepared.len();
            }
        }
        rows.sort_by_key(|r| r.id);
        rows
    }
}
