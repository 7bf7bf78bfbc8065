//! The catalog hot path a login takes: tenant resolution over the startup parameters and a
//! cache hit in front of the control database.
//!
//! `cargo bench --bench catalog_cache`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pgtenant::catalog::cache::TenantCache;
use pgtenant::catalog::StaticCatalog;
use pgtenant::config::{Config, ResolverConfig, TenantConfig};
use pgtenant::model::TenantId;
use pgtenant::protocol::startup::StartupMessage;
use pgtenant::tenant::resolve;

fn bench(c: &mut Criterion) {
    let mut config = Config::parse("[[upstreams]]\nname = 'u'\nhost = '127.0.0.1'").expect("config");
    for i in 0..1000 {
        config.tenants.push(TenantConfig::new(&format!("t{i}"), "u", "db", "role", None));
    }
    let catalog = StaticCatalog::from_config(&config);
    let cache = TenantCache::new(Duration::from_secs(3600), Duration::from_secs(2), 100_000);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let ids: Vec<TenantId> = (0..1000).map(|i| TenantId::parse(&format!("t{i}")).expect("id")).collect();
    rt.block_on(async {
        for id in &ids {
            let t = catalog.get(id);
            cache.get(id, || async { Ok(t) }).await.expect("fill");
        }
    });

    c.bench_function("cache_hit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ids.len();
            let hit = rt.block_on(cache.get(&ids[i], || async { Err("not expected".to_owned()) }));
            criterion::black_box(hit.expect("hit"));
        })
    });

    let startup = StartupMessage {
        major: 3,
        minor: 0,
        params: vec![
            ("user".into(), "app.t417".into()),
            ("database".into(), "t417".into()),
            ("application_name".into(), "psql".into()),
            ("client_encoding".into(), "UTF8".into()),
        ],
    };
    let resolver = ResolverConfig::default();
    c.bench_function("resolve_user", |b| b.iter(|| criterion::black_box(resolve(&startup, None, &resolver))));

    let shared = Arc::new(cache);
    c.bench_function("resolve_then_cache_hit", |b| {
        b.iter(|| {
            let r = resolve(&startup, None, &resolver).expect("resolves");
            let hit = rt.block_on(shared.get(&r.tenant, || async { Err("not expected".to_owned()) }));
            criterion::black_box(hit.expect("hit"));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
