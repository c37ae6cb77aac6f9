//! `signerctl bench --baseline-vault`: the same load, sent straight to Vault transit (no
//! signerd), so that signerd's overhead is measured against a baseline in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// What the direct run measured.
pub(crate) struct Baseline {
    pub(crate) ok: usize,
    pub(crate) errors: usize,
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// `concurrency` tasks call transit sign for key `key_id` for `duration` seconds.
pub(crate) async fn direct(
    config: &Path,
    key_id: &str,
    concurrency: usize,
    duration: u64,
) -> anyhow::Result<Baseline> {
    let cfg = signerd::config::Config::load(config)?;
    let vault = cfg
        .keys
        .vault
        .as_ref()
        .with_context(|| format!("{}: no [keys.vault] table", config.display()))?;
    let backend = Arc::new(signerd::keys::vault::VaultBackend::open(vault).await?);
    let deadline = Instant::now() + Duration::from_secs(duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let backend = backend.clone();
        let key_id = key_id.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let digest = sha2::Digest::finalize(sha2::Digest::chain_update(
                    <sha2::Sha256 as sha2::Digest>::new(),
                    format!("baseline {w} {i}"),
                ));
                let t = Instant::now();
                match backend.transit_sign_only(&key_id, &digest).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * (lat.len() - 1) as f64).round() as usize;
        lat[idx.min(lat.len() - 1)].as_secs_f64() * 1000.0
    };
    Ok(Baseline {
        ok: lat.len(),
        errors,
        rate: lat.len() as f64 / elapsed,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
    })
}
