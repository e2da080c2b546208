//! Seeds a keyward data dir for the HTTP load benchmark (`bench/targets.sh`).
//!
//! Creates, through `Service` and in the same layout `keyward serve --data-dir DIR` reads
//! (`DIR/keyward.db`, `DIR/pepper`): a root key with `*` in workspace `default`, an api with
//! prefix `kw`, and `--keys N` keys. Writes into `--out DIR` (default: the data dir), each file
//! mode 0600:
//!
//! - `root_key.txt`: the root key;
//! - `load_keys.txt`: 1000 of the N keys, sampled at random, in random order;
//! - `unknown_keys.txt`: 1000 well-formed keys that were never created.
//!
//! Keys go only into these files, never to stdout or stderr. Every insert is a durable SQLite
//! commit, so put the data dir on tmpfs (`/dev/shm/…`) unless you want to wait for the disk:
//! 100k keys take about 20-40 s on tmpfs on the 2-core benchmark VM.
//!
//! `cargo run --release -p keyward --example bench_seed -- --data-dir /dev/shm/kw-seed [--keys 100000]`

use anyhow::{bail, Context as _};
use keyward_core::digest::Peppers;
use keyward_core::model::{CreateApiRequest, CreateKeyRequest, CreateRootKeyRequest};
use keyward_core::service::Service;
use keyward_core::{keyfmt, KeyMaterial, SystemClock};
use rand::seq::{index, SliceRandom as _};
use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const SAMPLE: usize = 1000;
const IN_FLIGHT: usize = 8;

struct Args {
    data_dir: PathBuf,
    out: PathBuf,
    keys: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut data_dir = None;
    let mut out = None;
    let mut keys = 100_000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--keys" => keys = value()?.parse().context("--keys: not a number")?,
            _ => bail!("usage: bench_seed --data-dir DIR [--out DIR] [--keys N]"),
        }
    }
    let data_dir = data_dir.context("--data-dir is required")?;
    if keys < SAMPLE {
        bail!("--keys must be at least {SAMPLE}");
    }
    Ok(Args {
        out: out.unwrap_or_else(|| data_dir.clone()),
        data_dir,
        keys,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(seed(args))
}

async fn seed(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    for dir in [&args.data_dir, &args.out] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let peppers = Arc::new(Peppers::load_or_create(&args.data_dir.join("pepper"))?);
    let url = format!("sqlite://{}", args.data_dir.join("keyward.db").display());
    let store = keyward_store::open(&url, true).await?;
    let service = Arc::new(Service::new(store, Arc::new(SystemClock), peppers));

    let (_, root) = service
        .bootstrap_root_key(
            "default",
            CreateRootKeyRequest {
                name: "bench".into(),
                permissions: vec!["*".into()],
            },
        )
        .await?;
    let actor = service
        .authenticate(root.expose())
        .await?
        .context("the new root key does not authenticate")?;
    let api = service
        .create_api(
            &actor,
            CreateApiRequest {
                name: "bench".into(),
                prefix: Some("kw".into()),
                ..CreateApiRequest::default()
            },
        )
        .await?;

    let mut rng = rand::thread_rng();
    let sampled: HashSet<usize> = index::sample(&mut rng, args.keys, SAMPLE)
        .into_iter()
        .collect();
    let mut kept: Vec<KeyMaterial> = Vec::with_capacity(SAMPLE);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.keys {
        if tasks.len() >= IN_FLIGHT {
            keep(tasks.join_next().await, &mut kept)?;
        }
        let (service, actor, api_id) = (Arc::clone(&service), Arc::clone(&actor), api.id.clone());
        let sample = sampled.contains(&i);
        tasks.spawn(async move {
            let req = CreateKeyRequest {
                api_id,
                name: format!("bench key {i}"),
                ..CreateKeyRequest::default()
            };
            let (_, material) = service.create_key(&actor, req).await?;
            Ok::<_, keyward_core::Error>(sample.then_some(material))
        });
        if (i + 1) % 10_000 == 0 {
            eprintln!("bench_seed: {} keys, {:.1?}", i + 1, started.elapsed());
        }
    }
    while let Some(r) = tasks.join_next().await {
        keep(Some(r), &mut kept)?;
    }
    kept.shuffle(&mut rng);
    let unknown: Vec<KeyMaterial> = (0..SAMPLE).map(|_| keyfmt::generate("kw")).collect();

    write_keys(&args.out.join("root_key.txt"), std::slice::from_ref(&root))?;
    write_keys(&args.out.join("load_keys.txt"), &kept)?;
    write_keys(&args.out.join("unknown_keys.txt"), &unknown)?;
    eprintln!(
        "bench_seed: {} keys (api {}, prefix kw) in {} in {:.1?}; root key, {} load keys and {} unknown keys written to {}",
        args.keys,
        api.id,
        args.data_dir.display(),
        started.elapsed(),
        kept.len(),
        unknown.len(),
        args.out.display(),
    );
    Ok(())
}

type Created = Result<Result<Option<KeyMaterial>, keyward_core::Error>, tokio::task::JoinError>;

fn keep(joined: Option<Created>, kept: &mut Vec<KeyMaterial>) -> anyhow::Result<()> {
    if let Some(material) = joined.context("no task to join")??? {
        kept.push(material);
    }
    Ok(())
}

/// One key per line, in a file only the owner can read.
fn write_keys(path: &Path, keys: &[KeyMaterial]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for key in keys {
        writeln!(file, "{}", key.expose())?;
    }
    file.sync_all()?;
    Ok(())
}
