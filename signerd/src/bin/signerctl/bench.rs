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
        tasks.push(tokio::spawn(async move {
            let mut out = Worker {
                latencies: Vec::new(),
                errors: Vec::new(),
            };
            let mut i = 0u64;
            while Instant::now() < deadline {
                let req = v1::SignEvmMessageRequest {
                    request_id: format!("bench-{run_id}-{w}-{i}"),
                    key_id: key_id.clone(),
                    message: format!("signerctl bench {run_id} {w} {i}").into_bytes(),
                    dry_run: false,
                };
                let t = Instant::now();
                match client.sign_evm_message(req).await {
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
    let report = json!({
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
    }
    Ok(())
}
