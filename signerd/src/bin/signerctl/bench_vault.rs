//! `signerctl bench --baseline vault`: the same load, sent straight to Vault transit (no
//! signerd), so that signerd's overhead is measured against a baseline in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// `concurrency` tasks call transit sign for key `key_id` for `duration`; returns the sorted
/// latencies, the number of failed calls, and the elapsed seconds.
pub(crate) async fn direct(
    config: &Path,
    key_id: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, usize, f64)> {
    let cfg = signerd::config::Config::load(config)?;
    let vault = cfg
        .keys
        .vault
        .as_ref()
        .with_context(|| format!("{}: no [keys.vault] table", config.display()))?;
    let backend = Arc::new(
        signerd::keys::vault::VaultBackend::open(vault, None, &signerd::tasks::Background::new())
            .await?,
    );
    let deadline = Instant::now() + duration;
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
    Ok((lat, errors, elapsed))
}
