//! Statements against `pgtenant.instances`, the instance registry (migrations 8, 9 and 11):
//! register (taking the lowest free slot under an advisory lock), heartbeat (which also
//! reports the view of the registry the instance applied to its shares, expires stale rows
//! and reads every row, in one round trip), deregister, and the live rows (for the cancel
//! routing cache, `SHOW INSTANCES` and `GET /instances`). The registry's behaviour lives in
//! [`crate::instances`], the share arithmetic in [`crate::leases`].

use tokio_postgres::Client;

/// Slots are 1..=MAX_SLOT: ten bits of a cancel key's process id (see `crate::cancel`).
pub const MAX_SLOT: i32 = 1023;

/// One live instance, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub slot: i32,
    pub advertised_addr: String,
    pub version: String,
    /// `timestamptz` as the control database prints it.
    pub started_at: String,
    pub heartbeat_at: String,
    /// Seconds since the last heartbeat, by the control database's clock.
    pub heartbeat_age: f64,
    /// The view of the registry (slots, comma-separated) the instance last applied to its
    /// shares of the service-wide caps ([`crate::leases`]).
    pub seen: String,
    /// Whether it holds its full shares of that view.
    pub settled: bool,
    /// Whether it has stopped accepting and waits for its clients to leave (as of its last
    /// heartbeat).
    pub draining: bool,
}

/// Registers `id` (or refreshes its row if it is there, as a newcomer: nothing seen) and
/// returns its slot; `prefer` asks for a slot held before (a re-registration after the
/// control database was away), granted when still free. Stale rows are not removed here:
/// a stale row may belong to an instance that is alive and still holds its shares (the
/// control database was away for everyone); heartbeats remove them ([`beat`]).
pub async fn register(
    db: &mut Client,
    id: &str,
    advertised_addr: &str,
    version: &str,
    prefer: Option<i32>,
) -> Result<i32, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    // One registration at a time, so two instances never pick the same free slot.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('pgtenant.instances'))", &[]).await?;
    let slot: i32 = tx
        .query_one(
            "INSERT INTO pgtenant.instances AS i (id, slot, advertised_addr, version)
             VALUES ($1,
                     COALESCE((SELECT $4::int WHERE $4::int IS NOT NULL
                                 AND NOT EXISTS (SELECT 1 FROM pgtenant.instances WHERE slot = $4::int)),
                              (SELECT min(s) FROM generate_series(1, $5::int) s
                                WHERE NOT EXISTS (SELECT 1 FROM pgtenant.instances WHERE slot = s))),
                     $2, $3)
             ON CONFLICT (id) DO UPDATE
                SET advertised_addr = EXCLUDED.advertised_addr, version = EXCLUDED.version,
                    heartbeat_at = now(), seen = '', settled = false, streak_since = now(),
                    draining = false
             RETURNING i.slot",
            &[&id, &advertised_addr, &version, &prefer, &MAX_SLOT],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(slot)
}

/// What one heartbeat reports: the view of the registry the instance applied to its shares
/// and whether it holds them in full ([`crate::leases::Leases`]).
pub struct Beat<'a> {
    pub id: &'a str,
    pub seen: &'a str,
    pub settled: bool,
    /// The instance has stopped accepting and waits for its clients to leave.
    pub draining: bool,
    /// A row older than this is stale.
    pub expiry_secs: f64,
    /// A heartbeat this long after the previous one starts a new streak.
    pub gap_secs: f64,
}

/// One heartbeat in one round trip: records it (with what the instance applied), removes
/// other instances' stale rows, and returns every registered row, stale ones included (as
/// the snapshot before this statement: this instance's `seen` is the previous one, and a
/// just-removed peer is left out). Stale rows are removed only by an instance whose own
/// heartbeats have had no gap for a whole expiry window: after an outage of the control
/// database every live instance gets that window to come back before anyone is counted out.
/// `None` when this instance's row is gone (another instance expired it while this one could
/// not reach the control database): the caller registers again.
pub async fn beat(db: &Client, b: &Beat<'_>) -> Result<Option<Vec<InstanceRow>>, tokio_postgres::Error> {
    let rows = db
        .query(
            "WITH hb AS (UPDATE pgtenant.instances
                            SET heartbeat_at = now(), seen = $2, settled = $3, draining = $6,
                                streak_since = CASE WHEN heartbeat_at < now() - make_interval(secs => $5)
                                                    THEN now() ELSE streak_since END
                          WHERE id = $1 RETURNING streak_since),
                  gone AS (DELETE FROM pgtenant.instances
                            WHERE heartbeat_at < now() - make_interval(secs => $4) AND id <> $1
                              AND (SELECT streak_since FROM hb) <= now() - make_interval(secs => $4)
                           RETURNING id)
             SELECT id, slot, advertised_addr, version, started_at::text, heartbeat_at::text,
                    extract(epoch FROM now() - heartbeat_at)::float8, seen, settled, draining,
                    (SELECT count(*) FROM hb)
               FROM pgtenant.instances
              WHERE id NOT IN (SELECT id FROM gone)
              ORDER BY slot",
            &[&b.id, &b.seen, &b.settled, &b.expiry_secs, &b.gap_secs, &b.draining],
        )
        .await?;
    let alive = rows.first().is_some_and(|r| r.get::<_, i64>(10) == 1);
    Ok(alive.then(|| rows.iter().map(row).collect()))
}

/// Removes this instance's row (at shutdown).
pub async fn deregister(db: &Client, id: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(db.execute("DELETE FROM pgtenant.instances WHERE id = $1", &[&id]).await? == 1)
}

/// The instances whose last heartbeat is at most `expiry_secs` old, by slot.
pub async fn live(db: &Client, expiry_secs: f64) -> Result<Vec<InstanceRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT id, slot, advertised_addr, version, started_at::text, heartbeat_at::text,
                    extract(epoch FROM now() - heartbeat_at)::float8, seen, settled, draining
               FROM pgtenant.instances
              WHERE heartbeat_at >= now() - make_interval(secs => $1)
              ORDER BY slot",
            &[&expiry_secs],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

fn row(r: &tokio_postgres::Row) -> InstanceRow {
    InstanceRow {
        id: r.get(0),
        slot: r.get(1),
        advertised_addr: r.get(2),
        version: r.get(3),
        started_at: r.get(4),
        heartbeat_at: r.get(5),
        heartbeat_age: r.get(6),
        seen: r.get(7),
        settled: r.get(8),
        draining: r.get(9),
    }
}
