//! The Redis shared counters against a real Redis (127.0.0.1:6379, a fresh key prefix per
//! test): they decide exactly as one node's own counters do, they are exact across nodes
//! under concurrency, and an unreachable Redis leaves each node deciding alone.

use keyward_core::limits::shared::SharedCounters as _;
use keyward_core::limits::{Charge, KeyRules, Limits};
use keyward_core::model::{
    Api, ApiPolicies, DigestVersion, Key, KeyDigest, KeyState, Meta, Project, RateLimit, Refill,
    RefillInterval, UsageLimit, VerifyRecord,
};
use keyward_store::shared_counters::RedisCounters;
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use std::sync::Arc;
use time::macros::datetime;
use time::OffsetDateTime;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Ten seconds before a month (and a day) ends, so the sequences below cross a refill.
const START: OffsetDateTime = datetime!(2025-03-31 23:59:50 UTC);

/// A fresh prefix on the local Redis; its keys are deleted on drop. `None` (after a notice)
/// when Redis is unreachable, except under `CI=true`, where that fails the test.
struct Prefix(String);

impl Prefix {
    fn fresh() -> Option<Self> {
        let reachable = redis::Client::open(REDIS_URL)
            .and_then(|c| c.get_connection_with_timeout(std::time::Duration::from_secs(2)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match reachable {
            Ok(_) => Some(Self(format!("kwstore-{:016x}", rand::random::<u64>()))),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("Redis at {REDIS_URL} is required in CI but unreachable: {e}")
            }
            Err(e) => {
                eprintln!("skipping: Redis at {REDIS_URL} is unreachable: {e}");
                None
            }
        }
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

fn limit(name: &str, limit: u64, period: &str) -> RateLimit {
    RateLimit {
        name: name.into(),
        limit,
        period: period.into(),
    }
}

/// A key with two limits of its own, one of its project's, and a daily-refilled quota.
fn record(id: &str) -> VerifyRecord {
    VerifyRecord {
        key: Key {
            id: id.into(),
            workspace_id: "ws_1".into(),
            api_id: "api_1".into(),
            project_id: Some(format!("prj_{id}")),
            name: "k".into(),
            start: "kw_abcdef".into(),
            digest: KeyDigest {
                version: DigestVersion::Hmac(1),
                bytes: [1; 32],
            },
            state: KeyState::Active,
            permissions: vec![],
            roles: vec![],
            meta: Meta::new(),
            expires_at: None,
            rate_limits: vec![limit("burst", 5, "1s"), limit("hourly", 1000, "1h")],
            usage_limit: Some(UsageLimit {
                remaining: 150,
                refill: Some(Refill {
                    amount: 40,
                    interval: RefillInterval::Daily,
                }),
            }),
            restrictions: None,
            rotated_from: None,
            rotated_to: None,
            identity_id: id.into(),
            state_reason: None,
            created_at: START,
            updated_at: START,
            revoked_at: None,
            last_used_at: None,
            last_used_ip: None,
            recoverable: false,
            usage_refilled_at: None,
        },
        api: Arc::new(Api {
            id: "api_1".into(),
            workspace_id: "ws_1".into(),
            name: "a".into(),
            prefix: "kw".into(),
            permissions: vec![],
            roles: Default::default(),
            default_permissions: vec![],
            default_rate_limits: vec![],
            default_usage_limit: None,
            policies: ApiPolicies::default(),
            created_at: START,
            updated_at: START,
        }),
        project: Some(Arc::new(Project {
            id: format!("prj_{id}"),
            workspace_id: "ws_1".into(),
            name: "p".into(),
            external_id: None,
            meta: Meta::new(),
            owner: None,
            rate_limits: vec![limit("project", 600, "1m")],
            created_at: START,
            updated_at: START,
        })),
    }
}

/// One node: its own counters and the rules of the key on them.
fn node(record: &VerifyRecord) -> (Limits, KeyRules) {
    let limits = Limits::new();
    let rules = limits.rules_for(record);
    (limits, rules)
}

#[tokio::test]
async fn shared_counters_decide_exactly_as_one_nodes_own_counters_do() {
    let Some(prefix) = Prefix::fresh() else {
        return;
    };
    let counters = RedisCounters::connect(REDIS_URL, None, &prefix.0)
        .await
        .expect("valid url");
    assert!(counters.is_up());
    let mut denials = std::collections::BTreeMap::<String, usize>::new();
    for seed in 0..4_u64 {
        let record = record(&format!("key_{seed}"));
        let (local_limits, local) = node(&record);
        let (shared_limits, shared) = node(&record);
        let mut rng = StdRng::seed_from_u64(seed);
        // Whole µs (what shared counters hold); every emission interval is whole µs too.
        let mut now_us = START.unix_timestamp() * 1_000_000;
        let mut admitted = 0;
        for step in 0..400 {
            now_us += rng.gen_range(0..120_000);
            let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_us) * 1000)
                .expect("in range");
            let cost = [0, 1, 1, 1, 2, 7][rng.gen_range(0..6)];
            let explain = rng.gen_bool(0.3);
            let want: Charge = local.charge(&local_limits, now, cost, explain);
            let got = shared
                .charge_shared(&shared_limits, &counters, now, cost, explain)
                .await;
            assert_eq!(got, want, "seed {seed}, step {step}, cost {cost}");
            match want.denied {
                None => admitted += 1,
                Some(code) => *denials.entry(format!("{code:?}")).or_insert(0) += 1,
            }
        }
        assert!(admitted > 50, "{admitted} admitted");
        assert_eq!(
            shared_limits.quota_of(&format!("key_{seed}")),
            local_limits.quota_of(&format!("key_{seed}"))
        );
    }
    // Both denials were decided (and, crossing midnight, the quota was refilled).
    assert_eq!(denials.len(), 2, "{denials:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_sharing_counters_admit_exactly_the_limit_under_concurrency() {
    let Some(prefix) = Prefix::fresh() else {
        return;
    };
    let counters = Arc::new(
        RedisCounters::connect(REDIS_URL, None, &prefix.0)
            .await
            .expect("valid url"),
    );
    let mut record = record("key_c");
    record.key.rate_limits = vec![limit("default", 25, "1h")];
    record.key.usage_limit = None;
    record.project = None;
    let nodes: Vec<Arc<(Limits, KeyRules)>> = (0..3).map(|_| Arc::new(node(&record))).collect();
    let now = OffsetDateTime::now_utc();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let node = Arc::clone(&nodes[i % nodes.len()]);
        let counters = Arc::clone(&counters);
        tasks.spawn(async move {
            let (limits, rules) = &*node;
            rules
                .charge_shared(limits, counters.as_ref(), now, 1, false)
                .await
                .denied
                .is_none()
        });
    }
    let mut admitted = 0;
    while let Some(ok) = tasks.join_next().await {
        admitted += usize::from(ok.expect("task"));
    }
    assert_eq!(admitted, 25);
}

#[tokio::test]
async fn without_redis_each_node_decides_alone_and_says_redis_is_down() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let started = std::time::Instant::now();
    let counters = RedisCounters::connect(&format!("redis://{dead}"), None, "kw")
        .await
        .expect("a well-formed url is accepted even when nothing answers");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(!counters.is_up());
    let mut record = record("key_d");
    record.key.rate_limits = vec![limit("default", 3, "1h")];
    record.project = None;
    let (limits, rules) = node(&record);
    let mut codes = Vec::new();
    for _ in 0..5 {
        let c = rules
            .charge_shared(&limits, &counters, START, 1, false)
            .await;
        codes.push(c.denied.is_none());
    }
    assert_eq!(codes, [true, true, true, false, false]);
    assert_eq!(limits.quota_of("key_d").map(|(left, _)| left), Some(147));
}

#[tokio::test]
async fn a_url_that_is_not_redis_is_refused() {
    for url in ["http://127.0.0.1:6379", "redis://user:pw@", "not a url"] {
        let err = RedisCounters::connect(url, None, "kw")
            .await
            .expect_err(url);
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}

#[tokio::test]
async fn a_ca_file_needs_tls_and_a_certificate() {
    let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let err = RedisCounters::connect("redis://:pw@127.0.0.1:6379", Some(cert), "kw")
        .await
        .expect_err("a CA without TLS");
    assert!(err.to_string().contains("rediss://"), "{err}");
    let err = RedisCounters::connect("rediss://:pw@127.0.0.1:6379", Some(b"not pem"), "kw")
        .await
        .expect_err("a CA file without a certificate");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    let err = RedisCounters::connect("rediss://:pw@127.0.0.1:6379", Some(cert), "kw")
        .await
        .expect_err("a certificate that is not DER");
    assert!(err.to_string().contains("CA file"), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");
}
