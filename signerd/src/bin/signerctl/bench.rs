//! `signerctl bench`: a load generator against a running daemon, in the manner of `ghz`:
//! N concurrent mTLS clients (one connection each) send signing requests for a fixed time and
//! the tool reports throughput, latency percentiles and errors.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::json;
use signerd::client::{ClientSettings, connect};
use signerd_proto::v1;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Key to sign with (secp256k1: EIP-191 messages).
    #[arg(long = "key")]
    key_id: String,
    /// Concurrent clients, each with its own mTLS connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to send requests, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Send SignDigest requests (random 32-byte digests) instead of EIP-191 messages: for
    /// ed25519 and p256 keys.
    #[arg(long)]
    digest: bool,
    /// First measure calling Vault transit directly for the same key (a native transit key of
    /// this signerd configuration) at the same concurrency, then signerd, and report the ratio.
    #[arg(long, value_name = "SIGNERD_CONFIG")]
    baseline_vault: Option<std::path::PathBuf>,
}

struct Worker {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

pub(crate) async fn run(
    settings: ClientSettings,
    args: BenchArgs,
    json_out: bool,
) -> anyhow::Result<()> {
    if !(1..=4096).contains(&args.concurrency) || !(1..=3600).contains(&args.duration) {
        bail!("--concurrency must be 1..=4096 and --duration 1..=3600");
    }
    let baseline = match &args.baseline_vault {
        Some(cfg) => Some(
            crate::bench_vault::direct(cfg, &args.key_id, args.concurrency, args.duration).await?,
        ),
        None => None,
    };
    let mut nonce = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let run_id = hex::encode(nonce);
    let mut clients = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        clients.push(connect(&settings).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let key_id = args.key_id.clone();
        let run_id = run_id.clone();
        let digest = args.digest;
        tasks.push(tokio::spawn(async move {
            let mut out = Worker {
                latencies: Vec::new(),
                errors: Vec::new(),
            };
            let mut i = 0u64;
            while Instant::now() < deadline {
                let request_id = format!("bench-{run_id}-{w}-{i}");
                let message = format!("signerctl bench {run_id} {w} {i}").into_bytes();
                let t = Instant::now();
                let sent = if digest {
                    let digest = sha2::Digest::finalize(sha2::Digest::chain_update(
                        <sha2::Sha256 as sha2::Digest>::new(),
                        &message,
                    ));
                    client
                        .sign_digest(v1::SignDigestRequest {
                            request_id,
                            key_id: key_id.clone(),
                            digest: digest.to_vec(),
                            dry_run: false,
                        })
                        .await
                        .map(|_| ())
                } else {
                    client
                        .sign_evm_message(v1::SignEvmMessageRequest {
                            request_id,
                            key_id: key_id.clone(),
                            message,
                            dry_run: false,
                        })
                        .await
                        .map(|_| ())
                };
                match sent {
                    Ok(_) => out.latencies.push(t.elapsed()),
                    Err(s) => out.errors.push(format!("{:?}", s.code())),
                }
                i += 1;
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for t in tasks {
        let w = t.await?;
        latencies.extend(w.latencies);
        for e in w.errors {
            *errors.entry(e).or_default() += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[idx.min(latencies.len() - 1)].as_secs_f64() * 1000.0
    };
    let ok = latencies.len();
    let rate = ok as f64 / elapsed;
    let baseline_json = baseline.as_ref().map(|b| {
        json!({"what": "vault transit sign, called directly", "ok": b.ok, "errors": b.errors,
               "throughput_per_s": b.rate, "latency_ms": {"p50": b.p50_ms, "p99": b.p99_ms},
               "signerd_over_direct": if b.rate > 0.0 { rate / b.rate } else { 0.0 }})
    });
    let report = json!({
        "baseline": baseline_json,
        "concurrency": args.concurrency,
        "duration_s": elapsed,
        "ok": ok,
        "errors": errors,
        "throughput_per_s": ok as f64 / elapsed,
        "latency_ms": {
            "p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "p99.9": pct(99.9),
            "max": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        },
    });
    if json_out {
        println!("{report:#}");
    } else {
        println!(
            "{ok} signed in {elapsed:.1} s with {} clients: {:.0}/s",
            args.concurrency,
            ok as f64 / elapsed
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(99.9),
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        let total_errors: u64 = errors.values().sum();
        println!("errors: {total_errors} {errors:?}");
        if let Some(b) = &baseline {
            println!(
                "baseline (vault transit directly): {} signed, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                b.ok, b.rate, b.p50_ms, b.p99_ms, b.errors
            );
            println!(
                "signerd / direct transit: {:.1}%",
                if b.rate > 0.0 {
                    100.0 * rate / b.rate
                } else {
                    0.0
                }
            );
        }
    }
    Ok(())
}
