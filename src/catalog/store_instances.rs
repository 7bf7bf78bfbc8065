//! Statements against `pgtenant.instances`, the instance registry (migration 8): register
//! (taking the lowest free slot under an advisory lock), heartbeat (which also expires stale
//! rows and reads the live ones, in one round trip), deregister, and the live rows (for the cancel routing cache, `SHOW INSTANCES` and
//! `GET /instances`). The registry's behaviour lives in [`crate::instances`].

use tokio_postgres::{Client, GenericClient};

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
}

/// Registers `id` (or refreshes its row if it is there) and returns its slot. Rows stale for
/// more than `expiry_secs` are removed first, so their slots can be taken again; `prefer`
/// asks for a slot held before (a re-registration after the control database was away),
/// granted when still free.
pub async fn register(
    db: &mut Client,
    id: &str,
    advertised_addr: &str,
    version: &str,
    expiry_secs: f64,
    prefer: Option<i32>,
) -> Result<i32, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    // One registration at a time, so two instances never pick the same free slot.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('pgtenant.instances'))", &[]).await?;
    expire(&tx, expiry_secs).await?;
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
                    heartbeat_at = now()
             RETURNING i.slot",
            &[&id, &advertised_addr, &version, &prefer, &MAX_SLOT],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(slot)
}

/// One heartbeat in one round trip: records it, removes other instances' stale rows, and
/// returns the live rows (as the snapshot before this statement: a just-expired peer may
/// still be in it once). `None` when this instance's row is gone (another instance expired
/// it while this one could not reach the control database): the caller registers again.
pub async fn beat(
    db: &Client,
    id: &str,
    expiry_secs: f64,
) -> Result<Option<Vec<InstanceRow>>, tokio_postgres::Error> {
    let rows = db
        .query(
            "WITH hb AS (UPDATE pgtenant.instances SET heartbeat_at = now() WHERE id = $1 RETURNING id),
                  gone AS (DELETE FROM pgtenant.instances
                            WHERE heartbeat_at < now() - make_interval(secs => $2) AND id <> $1
                           RETURNING id)
             SELECT id, slot, advertised_addr, version, started_at::text, heartbeat_at::text,
                    extract(epoch FROM now() - heartbeat_at)::float8, (SELECT count(*) FROM hb)
               FROM pgtenant.instances
              WHERE (heartbeat_at >= now() - make_interval(secs => $2) OR id = $1)
                AND id NOT IN (SELECT id FROM gone)
              ORDER BY slot",
            &[&id, &expiry_secs],
        )
        .await?;
    let alive = rows.first().is_some_and(|r| r.get::<_, i64>(7) == 1);
    Ok(alive.then(|| rows.iter().map(row).collect()))
}

/// Removes rows whose heartbeat is older than `expiry_secs`; returns how many.
pub async fn expire(db: &impl GenericClient, expiry_secs: f64) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "DELETE FROM pgtenant.instances WHERE heartbeat_at < now() - make_interval(secs => $1)",
        &[&expiry_secs],
    )
    .await
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
                    extract(epoch FROM now() - heartbeat_at)::float8
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
    }
}
