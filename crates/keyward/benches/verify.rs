//! Criterion benchmarks of verification through `Service::verify`, as the HTTP handler calls it.
//!
//! Cached cases (1,000,000 keys in the cache; the SQLite store behind it is touched only by
//! `unknown_first_seen_hits_sqlite`): `hot` rotates over 1000 keys, `cold` over 64k keys drawn
//! at random from the 1M, `unknown_negative_cached` rotates over 1000 well-formed keys that
//! exist nowhere (after the first round they are answered from the service's miss cache),
//! `unknown_first_seen_hits_sqlite` presents a fresh unknown key each time (one SQLite query
//! per call), `malformed` fails the checksum. `hot_json` adds the request parse and response serialization, to compare with
//! the shared harness's "verify + serde JSON" row.
//!
//! Cache-miss cases: a SQLite store with 10k keys and, when PostgreSQL answers on
//! 127.0.0.1:5432, a fresh database `kw_bench_<random>` with 10k keys (dropped at the end).
//! Each iteration clears the cache (untimed) and then verifies a key, so the key is loaded
//! from the store.
//!
//! Also prints the resident memory per cached key at 1M keys.
//!
//! `cargo bench -p keyward --bench verify`; medians: `python3 bench/criterion-medians.py`.
//! Knobs: `KW_BENCH_KEYS` (default 1000000), `KW_BENCH_MISS_KEYS` (default 10000),
//! `KW_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`, `off` to skip).

use criterion::{black_box, BatchSize, Criterion};
use keyward_core::digest::Peppers;
use keyward_core::model::{
    CreateApiRequest, CreateKeyRequest, CreateRootKeyRequest, RateLimit, Restrictions, UsageLimit,
    VerifyRecord, VerifyRequest,
};
use keyward_core::service::{Actor, Service};
use keyward_core::verify::{CachedKey, Code, VerifyResponse};
use keyward_core::{keyfmt, KeyMaterial, Store, SystemClock};
use keyward_store::{PgStore, SqliteStore};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use sqlx::Connection as _;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The allocator the `keyward` binary ships with, so allocations cost here what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOT_KEYS: usize = 1000;
const COLD_KEYS: usize = 64 * 1024;
const PAGE_SIZE: u64 = 4096;

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    // sqlx needs a runtime context even when a future is polled outside `block_on`.
    let _context = rt.enter();
    let cached_keys = env_usize("KW_BENCH_KEYS", 1_000_000);
    let miss_keys = env_usize("KW_BENCH_MISS_KEYS", 10_000);
    let scratch = scratch_dir();

    {
        let fixture = rt.block_on(Fixture::sqlite(scratch.path(), "cached.db"));
        let cached = fixture.fill_cache(cached_keys);
        bench_cached(&mut c, &rt, &fixture, &cached);
    }

    {
        let fixture = rt.block_on(Fixture::sqlite(scratch.path(), "miss.db"));
        let keys = rt.block_on(fixture.create_keys(miss_keys));
        bench_miss(&mut c, &rt, "cache_miss/sqlite", &fixture, &keys);
    }

    let pg = std::env::var("KW_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if pg != "off" {
        match rt.block_on(ScratchDatabase::create(&pg)) {
            Ok(db) => {
                let fixture = rt.block_on(Fixture::postgres(&db.url));
                let keys = rt.block_on(fixture.create_keys(miss_keys));
                bench_miss(&mut c, &rt, "cache_miss/postgres", &fixture, &keys);
                rt.block_on(fixture.close());
                rt.block_on(db.drop_database());
            }
            Err(e) => eprintln!("PostgreSQL benchmark skipped: {e}"),
        }
    }

    c.final_summary();
}

/// A service over a real store, with one api (prefix `kw`) and a `*` root key.
struct Fixture {
    service: Arc<Service>,
    peppers: Arc<Peppers>,
    actor: Arc<Actor>,
    /// A real key's record as the store returns it; cached keys are copies with their own
    /// id and digest.
    template: VerifyRecord,
    /// Set for PostgreSQL, so [`Fixture::close`] can close its pool.
    pg: Option<PgStore>,
}

impl Fixture {
    async fn sqlite(dir: &Path, file: &str) -> Self {
        let store = SqliteStore::open(&dir.join(file))
            .await
            .unwrap_or_else(|e| panic!("open sqlite: {e}"));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate sqlite: {e}"));
        Self::new(Arc::new(store), None).await
    }

    async fn postgres(url: &str) -> Self {
        let store = PgStore::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect postgres: {e}"));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate postgres: {e}"));
        Self::new(Arc::new(store.clone()), Some(store)).await
    }

    async fn new(store: Arc<dyn Store>, pg: Option<PgStore>) -> Self {
        let peppers =
            Arc::new(Peppers::new(vec![(1, [7u8; 32])]).unwrap_or_else(|e| panic!("peppers: {e}")));
        let service = Arc::new(Service::new(
            store,
            Arc::new(SystemClock),
            Arc::clone(&peppers),
        ));
        let (_, root) = service
            .bootstrap_root_key(
                "bench",
                CreateRootKeyRequest {
                    name: "bench".into(),
                    permissions: vec!["*".into()],
                },
            )
            .await
            .unwrap_or_else(|e| panic!("root key: {e}"));
        let actor = service
            .authenticate(root.expose())
            .await
            .unwrap_or_else(|e| panic!("authenticate: {e}"))
            .unwrap_or_else(|| panic!("root key does not authenticate"));
        let api = service
            .create_api(
                &actor,
                CreateApiRequest {
                    name: "bench".into(),
                    prefix: Some("kw".into()),
                    ..CreateApiRequest::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("create api: {e}"));
        let (key, _) = service
            .create_key(
                &actor,
                CreateKeyRequest {
                    api_id: api.id.clone(),
                    name: "template".into(),
                    ..CreateKeyRequest::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("create key: {e}"));
        let template = service
            .store()
            .find_key(&key.digest)
            .await
            .unwrap_or_else(|e| panic!("find key: {e}"))
            .unwrap_or_else(|| panic!("the key just created is not in the store"));
        Self {
            service,
            peppers,
            actor,
            template,
            pg,
        }
    }

    /// Puts `n` keys straight into the cache (not the store), as a verification miss would
    /// after loading them (under their lookup digests): copies of a record `Store::find_key`
    /// returned (no project, no permissions, no limits), each with its own id, name and
    /// digest, sharing the record's api as `KeyCache::share` makes keys of one api share it.
    /// Returns their plaintexts. Prints the resident memory the cache grew by.
    fn fill_cache(&self, n: usize) -> Vec<KeyMaterial> {
        let started = Instant::now();
        let plaintexts: Vec<KeyMaterial> = (0..n).map(|_| keyfmt::generate("kw")).collect();
        let digests: Vec<_> = plaintexts
            .iter()
            .map(|k| {
                (
                    self.peppers.digest(k.expose()),
                    self.peppers.lookup(k.expose()),
                )
            })
            .collect();
        let cache = self.service.cache();
        let rss_before = resident_bytes();
        for (i, (digest, lookup)) in digests.into_iter().enumerate() {
            let mut record = self.template.clone();
            record.key.id = format!("key_bench{i:020}");
            record.key.name = format!("bench key {i}");
            record.key.digest = digest;
            cache.fill_cached_as(CachedKey::new(record), &lookup, cache.epoch());
        }
        let rss_after = resident_bytes();
        assert_eq!(cache.len(), n, "every key is cached");
        let per_key = rss_after.saturating_sub(rss_before) as f64 / n as f64;
        eprintln!(
            "cache: {n} keys filled in {:.1?}; resident memory {} -> {} MiB: {per_key:.0} bytes per cached key",
            started.elapsed(),
            rss_before >> 20,
            rss_after >> 20,
        );
        plaintexts
    }

    /// Caches `n` more keys carrying two rate limits, a quota and restrictions (or, without
    /// `rules`, none of them: the control, allocated the same way), with their limit counters
    /// attached as a cache fill from the store would; returns requests that satisfy the
    /// restrictions.
    fn fill_rule_keys(&self, n: usize, rules: bool) -> Vec<VerifyRequest> {
        let cache = self.service.cache();
        (0..n)
            .map(|i| {
                let key = keyfmt::generate("kw");
                let mut record = self.template.clone();
                record.key.id = format!("key_rules{i:020}");
                record.key.identity_id = record.key.id.clone();
                record.key.digest = self.peppers.digest(key.expose());
                let lookup = self.peppers.lookup(key.expose());
                if !rules {
                    let cached = CachedKey::with_limits(record, self.service.limits());
                    cache.fill_cached_as(cached, &lookup, cache.epoch());
                    return VerifyRequest {
                        key,
                        ip: Some("10.1.2.3".into()),
                        path: Some("/v1/orders/42".into()),
                        ..VerifyRequest::default()
                    };
                }
                record.key.rate_limits = vec![
                    RateLimit {
                        name: "burst".into(),
                        limit: 1_000_000_000,
                        period: "1s".into(),
                    },
                    RateLimit {
                        name: "hourly".into(),
                        limit: 1_000_000_000,
                        period: "1h".into(),
                    },
                ];
                record.key.usage_limit = Some(UsageLimit {
                    remaining: u64::MAX / 2,
                    refill: None,
                });
                record.key.restrictions = Some(Restrictions {
                    ips: Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]),
                    paths: Some(vec!["/v1/orders/*".into()]),
                    ..Restrictions::default()
                });
                let cached = CachedKey::with_limits(record, self.service.limits());
                cache.fill_cached_as(cached, &lookup, cache.epoch());
                VerifyRequest {
                    key,
                    ip: Some("10.1.2.3".into()),
                    path: Some("/v1/orders/42".into()),
                    ..VerifyRequest::default()
                }
            })
            .collect()
    }

    /// Creates `n` keys through the service (so they are in the store, not the cache),
    /// eight at a time.
    async fn create_keys(&self, n: usize) -> Vec<KeyMaterial> {
        let started = Instant::now();
        let mut keys = Vec::with_capacity(n);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            if tasks.len() >= 8 {
                keys.push(joined(tasks.join_next().await));
            }
            let service = Arc::clone(&self.service);
            let actor = Arc::clone(&self.actor);
            let api_id = self.template.api.id.clone();
            tasks.spawn(async move {
                let req = CreateKeyRequest {
                    api_id,
                    name: format!("bench key {i}"),
                    ..CreateKeyRequest::default()
                };
                service.create_key(&actor, req).await.map(|(_, m)| m)
            });
        }
        while let Some(r) = tasks.join_next().await {
            keys.push(joined(Some(r)));
        }
        self.service.cache().clear();
        eprintln!("store: {n} keys created in {:.1?}", started.elapsed());
        keys
    }

    /// Closes the PostgreSQL pool, so its database can be dropped.
    async fn close(self) {
        if let Some(pg) = &self.pg {
            pg.close().await;
        }
    }

    fn verify(&self, rt: &tokio::runtime::Runtime, req: &VerifyRequest) -> VerifyResponse {
        now_or_block(rt, self.service.verify(&self.actor, req, false))
            .unwrap_or_else(|e| panic!("verify: {e}"))
    }
}

fn joined(
    r: Option<Result<Result<KeyMaterial, keyward_core::Error>, tokio::task::JoinError>>,
) -> KeyMaterial {
    match r {
        Some(Ok(Ok(m))) => m,
        Some(Ok(Err(e))) => panic!("create key: {e}"),
        Some(Err(e)) => panic!("create key task: {e}"),
        None => panic!("no task to join"),
    }
}

fn bench_cached(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    f: &Fixture,
    cached: &[KeyMaterial],
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let requests = |keys: Vec<KeyMaterial>| -> Vec<VerifyRequest> {
        keys.into_iter()
            .map(|key| VerifyRequest {
                key,
                ..VerifyRequest::default()
            })
            .collect()
    };
    let hot = requests(
        cached
            .choose_multiple(&mut rng, HOT_KEYS)
            .cloned()
            .collect(),
    );
    let cold = requests(
        (0..COLD_KEYS)
            .map(|_| cached[rng.gen_range(0..cached.len())].clone())
            .collect(),
    );
    let unknown = requests((0..HOT_KEYS).map(|_| keyfmt::generate("kw")).collect());
    let malformed = requests(
        hot.iter()
            .map(|r| {
                // Flip the last checksum character: well-shaped, wrong checksum.
                let mut s = r.key.expose().to_owned();
                let last = if s.ends_with('A') { "B" } else { "A" };
                s.pop();
                s.push_str(last);
                KeyMaterial::new(s)
            })
            .collect(),
    );
    let hot_bodies: Vec<Vec<u8>> = hot
        .iter()
        .map(|r| format!("{{\"key\":\"{}\"}}", r.key.expose()).into_bytes())
        .collect();

    for (set, want) in [
        (&hot, Code::Valid),
        (&cold, Code::Valid),
        (&unknown, Code::NotFound),
        (&malformed, Code::Malformed),
    ] {
        assert_eq!(f.verify(rt, &set[0]).code, want, "sanity check");
    }

    let mut g = c.benchmark_group("verify_1m_cached");
    for (name, set) in [
        ("hot", &hot),
        ("cold", &cold),
        ("unknown_negative_cached", &unknown),
        ("malformed", &malformed),
    ] {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % set.len();
                black_box(f.verify(rt, &set[i]))
            });
        });
    }
    // Issue 3's case: the same hot path on keys with two rate limits, a quota and IP and path
    // restrictions (limits high enough that every call is admitted and charged). Compare with
    // `hot` above and with `hot_without_rules`, measured in the same run. The control's keys
    // are made and cached exactly like the rule keys, just after them, and get the same
    // requests: `hot`'s keys are scattered among the 1M, the rule keys allocated together,
    // and that difference in memory layout alone moves the figures by tens of ns.
    let with_rules = f.fill_rule_keys(HOT_KEYS, true);
    let without_rules = f.fill_rule_keys(HOT_KEYS, false);
    for (name, set) in [
        ("hot_without_rules", &without_rules),
        ("hot_with_rules", &with_rules),
    ] {
        assert_eq!(f.verify(rt, &set[0]).code, Code::Valid, "sanity check");
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % set.len();
                black_box(f.verify(rt, &set[i]))
            });
        });
    }
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("unknown_first_seen_hits_sqlite", |b| {
        b.iter_batched(
            // Untimed: a well-formed key never presented before, so not in the miss cache.
            || VerifyRequest {
                key: keyfmt::generate("kw"),
                ..VerifyRequest::default()
            },
            |req| black_box(f.verify(rt, &req)),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("hot_json", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % hot_bodies.len();
            let req: VerifyRequest =
                serde_json::from_slice(&hot_bodies[i]).unwrap_or_else(|e| panic!("request: {e}"));
            let resp = f.verify(rt, &req);
            black_box(serde_json::to_vec(&resp).unwrap_or_default())
        });
    });
    g.finish();
}

fn bench_miss(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    f: &Fixture,
    keys: &[KeyMaterial],
) {
    let mut order: Vec<VerifyRequest> = keys
        .iter()
        .map(|key| VerifyRequest {
            key: key.clone(),
            ..VerifyRequest::default()
        })
        .collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
    assert_eq!(f.verify(rt, &order[0]).code, Code::Valid, "sanity check");
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("verify_after_clear", |b| {
        let mut i = 0;
        b.iter_batched(
            || {
                // Untimed: empty the cache so the next verify loads from the store.
                f.service.cache().clear();
                i = (i + 1) % order.len();
                &order[i]
            },
            |req| black_box(f.verify(rt, req)),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// Polls once with a no-op waker (a cache hit never suspends, so this is what the server's
/// executor does too); a future that does suspend (a store query) is finished on `rt`.
fn now_or_block<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return out;
    }
    rt.block_on(fut)
}

/// The current resident set size, from `/proc/self/statm` (pages; 4 KiB on x86-64 Linux).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE_SIZE)
}

/// On tmpfs when there is one, so creating keys does not wait on the disk's fsync.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("kw-bench").tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh PostgreSQL database for this run, dropped by [`ScratchDatabase::drop_database`].
struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    async fn create(admin_url: &str) -> Result<Self, sqlx::Error> {
        let name = format!("kw_bench_{:016x}", rand::random::<u64>());
        let mut conn = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::PgConnection::connect(admin_url),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_database(self) {
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await
        };
        if let Err(e) = dropped.await {
            eprintln!("could not drop database {}: {e}", self.name);
        }
    }
}
