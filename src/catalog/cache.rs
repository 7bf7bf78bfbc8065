//! The tenant cache in front of the control database: bounded, with a TTL, negative entries
//! for unknown tenants, one lookup in flight per tenant however many clients arrive at once,
//! and stale entries served (and logged) while the control database is unreachable.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;

use super::{CatalogError, Tenant};
use crate::model::TenantId;

type Lookup = Result<Option<Arc<Tenant>>, String>;

struct Entry {
    tenant: Option<Arc<Tenant>>,
    fetched: Instant,
}

pub struct TenantCache {
    entries: DashMap<TenantId, Entry>,
    inflight: Mutex<HashMap<TenantId, Arc<OnceCell<Lookup>>>>,
    ttl: Duration,
    negative_ttl: Duration,
    max: usize,
}

impl TenantCache {
    pub fn new(ttl: Duration, negative_ttl: Duration, max: usize) -> TenantCache {
        TenantCache { entries: DashMap::new(), inflight: Mutex::new(HashMap::new()), ttl, negative_ttl, max }
    }

    /// The cached tenant if fresh; otherwise one `fetch` per tenant at a time, shared by every
    /// concurrent caller. When the fetch fails, a stale entry is served if there is one.
    pub async fn get<F, Fut>(&self, id: &TenantId, fetch: F) -> Result<Option<Arc<Tenant>>, CatalogError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Lookup>,
    {
        if let Some(e) = self.entries.get(id) {
            let ttl = if e.tenant.is_some() { self.ttl } else { self.negative_ttl };
            if e.fetched.elapsed() < ttl {
                return Ok(e.tenant.clone());
            }
        }
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(id.clone()).or_default().clone()
        };
        let result = cell.get_or_init(fetch).await.clone();
        // Cached before the in-flight entry goes, so that `lookup_is_free` never sees neither.
        if let Ok(tenant) = &result {
            self.insert(id.clone(), tenant.clone());
        }
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(id);
            }
        }
        match result {
            Ok(tenant) => Ok(tenant),
            Err(why) => match self.entries.get(id) {
                Some(stale) if stale.tenant.is_some() => {
                    tracing::warn!(tenant = %id, error = %why, "control database unreachable: serving the cached tenant");
                    Ok(stale.tenant.clone())
                }
                _ => Err(CatalogError::Unavailable { tenant: id.clone(), cause: why }),
            },
        }
    }

    /// Whether looking `id` up now costs no new control-database query: it has an entry
    /// within its TTL, or a lookup of it is in flight (a new one joins it).
    pub fn lookup_is_free(&self, id: &TenantId) -> bool {
        self.is_fresh(id) || self.inflight.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    /// Whether `id` has an entry (known or unknown tenant) still within its TTL.
    pub fn is_fresh(&self, id: &TenantId) -> bool {
        self.entries.get(id).is_some_and(|e| {
            let ttl = if e.tenant.is_some() { self.ttl } else { self.negative_ttl };
            e.fetched.elapsed() < ttl
        })
    }

    fn insert(&self, id: TenantId, tenant: Option<Arc<Tenant>>) {
        if self.entries.len() >= self.max && !self.entries.contains_key(&id) {
            // Bounded. Unknown tenants go first, so that a flood of made-up ids cannot push
            // out the tenants clients use: expired negative entries all at once (one scan
            // frees many, so a flood does not scan per insert), else the oldest negative
            // entry, and the oldest known tenant only when nothing else is left. Expired
            // known tenants stay: they are served while the control database is down.
            let negative_ttl = self.negative_ttl;
            self.entries.retain(|_, e| e.tenant.is_some() || e.fetched.elapsed() < negative_ttl);
            if self.entries.len() >= self.max {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|e| (e.value().tenant.is_some(), e.value().fetched))
                    .map(|e| e.key().clone());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(id, Entry { tenant, fetched: Instant::now() });
    }

    /// Drops one tenant (NOTIFY said it changed).
    pub fn invalidate(&self, id: &TenantId) {
        self.entries.remove(id);
    }

    /// Drops everything (an upstream changed, or notifications may have been missed).
    pub fn invalidate_all(&self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached tenant, fresh or not, without fetching.
    pub fn peek(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.entries.get(id).and_then(|e| e.tenant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tenant(id: &str) -> Arc<Tenant> {
        let mut c = Config::parse("[[upstreams]]\nname='u'\nhost='h'").expect("config");
        c.tenants.push(crate::config::TenantConfig::new(id, "u", "d", "r", None));
        let cat = super::super::StaticCatalog::from_config(&c);
        cat.get(&TenantId::parse(id).expect("id")).expect("tenant")
    }

    #[tokio::test]
    async fn one_fetch_for_a_storm_and_ttl() {
        let cache = Arc::new(TenantCache::new(Duration::from_secs(60), Duration::from_millis(50), 10));
        let fetches = Arc::new(AtomicUsize::new(0));
        let id = TenantId::parse("acme").expect("id");
        let mut tasks = Vec::new();
        for _ in 0..500 {
            let (cache, fetches, id) = (cache.clone(), fetches.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&id, || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Some(tenant("acme")))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.expect("join").expect("lookup").is_some());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Invalidation forces a new fetch.
        cache.invalidate(&id);
        let got = cache.get(&id, || async { Ok(None) }).await.expect("lookup");
        assert!(got.is_none());
    }

    #[tokio::test]
    async fn stale_entries_are_served_when_the_database_is_down_and_bounded() {
        let cache = TenantCache::new(Duration::from_millis(1), Duration::from_millis(1), 2);
        let a = TenantId::parse("a").expect("id");
        cache.get(&a, || async { Ok(Some(tenant("a"))) }).await.expect("first");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let got = cache.get(&a, || async { Err("down".to_owned()) }).await.expect("stale served");
        assert_eq!(got.map(|t| t.id.to_string()), Some("a".into()));
        let b = TenantId::parse("b").expect("id");
        assert!(matches!(
            cache.get(&b, || async { Err("down".to_owned()) }).await,
            Err(CatalogError::Unavailable { .. })
        ));
        for id in ["c", "d", "e"] {
            let id = TenantId::parse(id).expect("id");
            cache.get(&id, || async { Ok(None) }).await.expect("negative");
        }
        assert!(cache.len() <= 2);
    }

    #[tokio::test]
    async fn unknown_ids_do_not_push_known_tenants_out() {
        let cache = TenantCache::new(Duration::from_secs(60), Duration::from_secs(60), 3);
        let acme = TenantId::parse("acme").expect("id");
        cache.get(&acme, || async { Ok(Some(tenant("acme"))) }).await.expect("known");
        for n in 0..50 {
            let id = TenantId::parse(&format!("made-up-{n}")).expect("id");
            cache.get(&id, || async { Ok(None) }).await.expect("unknown");
            assert!(cache.is_fresh(&id));
        }
        assert!(cache.len() <= 3);
        assert!(cache.is_fresh(&acme), "the known tenant stays cached");
        assert!(!cache.is_fresh(&TenantId::parse("made-up-0").expect("id")), "the oldest unknown went");
    }

    #[tokio::test]
    async fn a_lookup_in_flight_makes_joining_it_free() {
        let cache = Arc::new(TenantCache::new(Duration::from_secs(60), Duration::from_secs(60), 10));
        let id = TenantId::parse("acme").expect("id");
        assert!(!cache.lookup_is_free(&id));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (cache, id) = (cache.clone(), id.clone());
            tokio::spawn(async move {
                cache
                    .get(&id, || async move {
                        let _ = wait.await;
                        Ok(Some(tenant("acme")))
                    })
                    .await
            })
        };
        for _ in 0..200 {
            if cache.lookup_is_free(&id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cache.lookup_is_free(&id), "in flight: joining costs nothing");
        assert!(!cache.is_fresh(&id));
        let _ = release.send(());
        assert!(first.await.expect("join").expect("lookup").is_some());
        assert!(cache.lookup_is_free(&id) && cache.is_fresh(&id));
    }
}
