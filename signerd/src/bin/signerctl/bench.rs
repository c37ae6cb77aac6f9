//! `signerctl bench`: a load generator against a running daemon, in the manner of `ghz`:
//! N concurrent mTLS clients (one connection each) send signing requests for a fixed time and
//! the tool reports throughput, latency percentiles and errors.
//!
//! With `--endpoint` given several times (replicas sharing one state store), client `k` uses
//! endpoint `k mod n`, and the report adds what each endpoint signed and refused.
//!
//! With `--baseline`, the same run first measures the raw limit of the key backend at the same
//! concurrency and for the same time (in-process signing for `soft`, `C_Sign` straight through
//! cryptoki for `pkcs11`), then signerd end to end, and prints the ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use signerd::client::{ClientSettings, connect};
use signerd_proto::v1;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Key to sign with (secp256k1: EIP-191 messages). Repeat it to spread requests
    /// round-robin over several keys of one algorithm; `--baseline` uses the first.
    #[arg(long = "key", required = true)]
    keys: Vec<String>,
    /// Concurrent clients, each with its own mTLS connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to send requests, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Also measure the backend's raw limit in the same run and print the ratio.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Send at this total rate (requests per second, spread evenly over the clients) instead
    /// of as fast as answers come back. Latency then counts from when each request was due,
    /// so a daemon that falls behind shows it (no coordinated omission). With `--baseline
    /// floor`, the floor server is loaded at the same rate, to compare latencies.
    #[arg(long)]
    rate: Option<f64>,
    /// signerd configuration naming the token or the Vault (for `--baseline pkcs11` and
    /// `--baseline vault`; secrets are read from their configured sources, and for SoftHSM2
    /// `SOFTHSM2_CONF` applies).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// What `--baseline` measures.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Baseline {
    /// In-process k256 / ed25519-dalek signing with a fresh key of the same algorithm.
    Soft,
    /// `C_Sign` on the same key in the same token, one session per client.
    Pkcs11,
    /// Transit sign for the same key, called directly on the configured Vault / OpenBao.
    Vault,
    /// The transport floor: a tonic + rustls mTLS server in its own process whose handler
    /// only hashes and signs with an in-memory secp256k1 key (secp256k1 keys only).
    Floor,
}

/// One measured run.
struct Measured {
    /// The offered rate (`--rate`), if paced.
    offered: Option<f64>,
    latencies: Vec<Duration>,
    errors: std::collections::BTreeMap<String, u64>,
    elapsed: f64,
    /// Per endpoint, in the order given, when there are several.
    endpoints: Vec<PerEndpoint>,
}

/// What one endpoint of a run over several answered.
#[derive(Default)]
struct PerEndpoint {
    endpoint: String,
    clients: usize,
    signed: u64,
    errors: u64,
}

impl Measured {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[idx.min(self.latencies.len() - 1)].as_secs_f64() * 1000.0
    }

    fn json(&self, concurrency: usize) -> serde_json::Value {
        let mut report = json!({
            "concurrency": concurrency,
            "offered_per_s": self.offered,
            "duration_s": self.elapsed,
            "ok": self.latencies.len(),
            "errors": self.errors,
            "throughput_per_s": self.throughput(),
            "latency_ms": {
                "p50": self.pct(50.0), "p90": self.pct(90.0), "p99": self.pct(99.0),
                "p99.9": self.pct(99.9), "max": self.pct(100.0),
            },
        });
        if !self.endpoints.is_empty() {
            report["endpoints"] = self
                .endpoints
                .iter()
                .map(|e| {
                    json!({"endpoint": e.endpoint, "clients": e.clients,
                           "ok": e.signed, "errors": e.errors})
                })
                .collect();
        }
        report
    }

    fn print(&self, what: &str, concurrency: usize) {
        if let Some(rate) = self.offered {
            println!("{what}: offered {rate:.0}/s");
        }
        println!(
            "{what}: {} signed in {:.1} s with {concurrency} clients: {:.0}/s",
            self.latencies.len(),
            self.elapsed,
            self.throughput()
        );
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.pct(50.0),
            self.pct(90.0),
            self.pct(99.0),
            self.pct(99.9),
            self.pct(100.0)
        );
        let total: u64 = self.errors.values().sum();
        println!("  errors: {total} {:?}", self.errors);
        for e in &self.endpoints {
            println!(
                "  endpoint {}: {} signed, {} errors ({} clients)",
                e.endpoint, e.signed, e.errors, e.clients
            );
        }
    }
}

struct Worker {
    /// Index of its endpoint.
    endpoint: usize,
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

pub(crate) async fn run(
    endpoints: Vec<ClientSettings>,
    args: BenchArgs,
    json_out: bool,
) -> anyhow::Result<()> {
    if !(1..=4096).contains(&args.concurrency) || !(1..=3600).contains(&args.duration) {
        bail!("--concurrency must be 1..=4096 and --duration 1..=3600");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && (1.0..=1_000_000.0).contains(&rate))
    {
        bail!("--rate must be 1..=1000000 requests per second");
    }
    if args.rate.is_some() && !matches!(args.baseline, None | Some(Baseline::Floor)) {
        bail!("--rate applies to signerd and to --baseline floor only");
    }
    let duration = Duration::from_secs(args.duration);
    if args.keys.len() > 10_000 {
        bail!("--key may be given at most 10000 times");
    }
    if endpoints.is_empty() || endpoints.len() > 256 {
        bail!("--endpoint may be given 1 to 256 times");
    }
    if endpoints.len() > args.concurrency {
        bail!(
            "--concurrency {} is below the {} endpoints: every endpoint needs a client",
            args.concurrency,
            endpoints.len()
        );
    }
    // Every endpoint must answer and hold every key before the run, so that a replica that
    // is down or configured differently is named here rather than counted as errors.
    let mut algorithms = std::collections::BTreeSet::new();
    for settings in &endpoints {
        let several = endpoints.len() > 1;
        let at = |what: String| {
            if several {
                format!("endpoint {}: {what}", settings.endpoint)
            } else {
                what
            }
        };
        let mut probe = connect(settings)
            .await
            .map_err(|e| anyhow::anyhow!(at(e.to_string())))?;
        for id in &args.keys {
            let key = probe
                .get_key(v1::GetKeyRequest { key_id: id.clone() })
                .await
                .map_err(|s| anyhow::anyhow!(at(format!("GetKey {id}: {}", s.message()))))?
                .into_inner();
            algorithms.insert(key.algorithm);
        }
    }
    let [algorithm] = algorithms.into_iter().collect::<Vec<_>>()[..] else {
        bail!("every --key must have the same algorithm");
    };
    let algorithm = v1::Algorithm::try_from(algorithm).unwrap_or(v1::Algorithm::Unspecified);
    let baseline = match args.baseline {
        None => None,
        Some(b) => {
            let (name, m) = run_baseline(b, &args, algorithm, duration).await?;
            Some((name, m))
        }
    };
    let signerd = run_signerd(&endpoints, &args, algorithm, duration).await?;
    if json_out {
        let mut report = signerd.json(args.concurrency);
        report["keys"] = json!(args.keys.len());
        if let Some((name, b)) = &baseline {
            report["baseline"] = b.json(args.concurrency);
            report["baseline"]["kind"] = json!(name);
            if args.rate.is_none() {
                report["ratio"] = json!(signerd.throughput() / b.throughput());
            }
        }
        println!("{report:#}");
    } else {
        if let Some((name, b)) = &baseline {
            b.print(&format!("baseline ({name})"), args.concurrency);
        }
        signerd.print("signerd", args.concurrency);
        if args.keys.len() > 1 {
            println!("keys: {} (round-robin)", args.keys.len());
        }
        if let Some((_, b)) = &baseline
            && args.rate.is_none()
        {
            println!(
                "ratio signerd / baseline: {:.1}%",
                100.0 * signerd.throughput() / b.throughput()
            );
        }
    }
    Ok(())
}

async fn run_baseline(
    kind: Baseline,
    args: &BenchArgs,
    algorithm: v1::Algorithm,
    duration: Duration,
) -> anyhow::Result<(&'static str, Measured)> {
    match kind {
        Baseline::Floor => {
            if algorithm != v1::Algorithm::Secp256k1 {
                bail!("--baseline floor compares EIP-191 signing: give a secp256k1 --key");
            }
            let floor = crate::bench_floor::start()?;
            let m = run_signerd(
                std::slice::from_ref(&floor.settings),
                args,
                algorithm,
                duration,
            )
            .await?;
            drop(floor);
            Ok(("floor: bare tonic + rustls mTLS server that only signs", m))
        }
        Baseline::Soft => {
            let threads = args.concurrency;
            let m =
                tokio::task::spawn_blocking(move || soft_baseline(algorithm, threads, duration))
                    .await??;
            Ok(("soft: in-process signing", m))
        }
        Baseline::Vault => {
            let path = args
                .config
                .as_ref()
                .context("--baseline vault needs --config (the daemon's configuration)")?;
            let (latencies, errors, elapsed) =
                crate::bench_vault::direct(path, &args.keys[0], args.concurrency, duration).await?;
            let mut errs = std::collections::BTreeMap::new();
            if errors > 0 {
                errs.insert("transit sign".to_owned(), errors as u64);
            }
            Ok((
                "vault: transit sign called directly",
                Measured {
                    offered: None,
                    latencies,
                    errors: errs,
                    elapsed,
                    endpoints: Vec::new(),
                },
            ))
        }
        Baseline::Pkcs11 => {
            let path = args
                .config
                .as_ref()
                .context("--baseline pkcs11 needs --config (the daemon's configuration)")?;
            let cfg = signerd::config::Config::load(path)?;
            let p = cfg
                .keys
                .pkcs11
                .context("the configuration has no [keys.pkcs11] table")?;
            let pin = p
                .pin_source()
                .read("keys.pkcs11.pin")
                .map_err(anyhow::Error::msg)?;
            let (id, threads) = (args.keys[0].clone(), args.concurrency);
            let raw = tokio::task::spawn_blocking(move || {
                signerd::keys::pkcs11::bench_raw(&p, &pin, &id, threads, duration)
            })
            .await??;
            let mut errors = std::collections::BTreeMap::new();
            if raw.errors > 0 {
                errors.insert("C_Sign".to_owned(), raw.errors);
            }
            let mut latencies = raw.latencies;
            latencies.sort();
            Ok((
                "pkcs11: C_Sign through cryptoki",
                Measured {
                    offered: None,
                    latencies,
                    errors,
                    elapsed: raw.elapsed.as_secs_f64(),
                    endpoints: Vec::new(),
                },
            ))
        }
    }
}

/// Signs a fixed digest with a fresh in-memory key on `threads` threads.
fn soft_baseline(
    algorithm: v1::Algorithm,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    use k256::ecdsa::signature::hazmat::PrehashSigner;
    let digest = [0x5au8; 32];
    let k1 = k256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let ed = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let p256 = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let started = Instant::now();
    let deadline = started + duration;
    let lists: Vec<Vec<Duration>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (k1, ed, p256) = (&k1, &ed, &p256);
                scope.spawn(move || {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match algorithm {
                            v1::Algorithm::Ed25519 => {
                                std::hint::black_box(ed25519_dalek::Signer::sign(ed, &digest));
                            }
                            v1::Algorithm::P256 => {
                                let s: Result<p256::ecdsa::Signature, _> =
                                    p256.sign_prehash(&digest);
                                std::hint::black_box(s.ok());
                            }
                            _ => {
                                std::hint::black_box(k1.sign_prehash_recoverable(&digest).ok());
                            }
                        }
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut latencies: Vec<Duration> = lists.into_iter().flatten().collect();
    latencies.sort();
    Ok(Measured {
        offered: None,
        latencies,
        errors: Default::default(),
        elapsed: started.elapsed().as_secs_f64(),
        endpoints: Vec::new(),
    })
}

/// When the k-th request of a paced run is due: `started + k / rate`. It goes to client
/// `k mod n`.
fn due(started: Instant, k: u64, rate: f64) -> Instant {
    started + Duration::from_secs_f64(k as f64 / rate)
}

/// Paced load: wakes client `k mod n` at each due time until `deadline`. A thread sleeping to
/// each due time wakes within tens of microseconds of it, where tokio's timers fire on a 1 ms
/// tick and would add up to a millisecond to every latency counted from the due time. A
/// client behind its schedule does not wait for the pacer, and the pacer keeps nothing per
/// request: memory stays bounded whatever the rate.
fn pace(started: Instant, deadline: Instant, rate: f64, clients: &[Arc<tokio::sync::Notify>]) {
    for k in 0u64.. {
        let due = due(started, k, rate);
        if due >= deadline {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        clients[(k % clients.len() as u64) as usize].notify_one();
    }
}

/// signerd end to end: EIP-191 messages for secp256k1 keys, raw digests (a rule must name
/// `raw_digest`) for the others. Client `k` connects to `endpoints[k mod n]`.
async fn run_signerd(
    endpoints: &[ClientSettings],
    args: &BenchArgs,
    algorithm: v1::Algorithm,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let mut nonce = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let run_id = hex::encode(nonce);
    let mut clients = Vec::with_capacity(args.concurrency);
    for k in 0..args.concurrency {
        let settings = &endpoints[k % endpoints.len()];
        let client = connect(settings)
            .await
            .map_err(|e| anyhow::anyhow!("client {k}: endpoint {}: {e}", settings.endpoint))?;
        clients.push(client);
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    // With --rate, a pacer thread wakes each client at its due times.
    let wakers: Vec<Arc<tokio::sync::Notify>> = (0..args.concurrency)
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    let pacer = match args.rate {
        None => None,
        Some(rate) => {
            let wakers = wakers.clone();
            Some(
                std::thread::Builder::new()
                    .name("bench-pacer".to_owned())
                    .spawn(move || pace(started, deadline, rate, &wakers))?,
            )
        }
    };
    let n = args.concurrency as u64;
    let mut per_endpoint: Vec<PerEndpoint> = endpoints
        .iter()
        .map(|e| PerEndpoint {
            endpoint: e.endpoint.clone(),
            ..PerEndpoint::default()
        })
        .collect();
    let endpoints = endpoints.len();
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let keys = args.keys.clone();
        let run_id = run_id.clone();
        let rate = args.rate;
        let waker = Arc::clone(&wakers[w]);
        tasks.push(tokio::spawn(async move {
            let mut out = Worker {
                endpoint: w % endpoints,
                latencies: Vec::new(),
                errors: Vec::new(),
            };
            let mut i = 0u64;
            loop {
                let t = match rate {
                    // Paced: its i-th request is the run's (w + i n)-th. A wake-up left from
                    // a time the client was behind only makes it look at the clock again.
                    Some(rate) => {
                        let due = due(started, w as u64 + i * n, rate);
                        // Requests still unsent at the deadline are not sent: a daemon that
                        // falls behind shows in a throughput below the offered rate.
                        if due >= deadline || Instant::now() >= deadline {
                            break;
                        }
                        while Instant::now() < due {
                            waker.notified().await;
                        }
                        due
                    }
                    None if Instant::now() < deadline => Instant::now(),
                    None => break,
                };
                let request_id = format!("bench-{run_id}-{w}-{i}");
                // Round-robin over the keys, offset per client so that every key is in use.
                let key_id = keys[(w + i as usize) % keys.len()].clone();
                // Longer than 32 bytes: a 32-byte message is `eip191_binary`, which a policy
                // allows only by name.
                let text = format!("signerctl bench run {run_id} client {w} request {i}");
                let result = if algorithm == v1::Algorithm::Secp256k1 {
                    let req = v1::SignEvmMessageRequest {
                        request_id,
                        key_id,
                        message: text.into_bytes(),
                        dry_run: false,
                    };
                    client.sign_evm_message(req).await.map(|_| ())
                } else {
                    use sha2::Digest;
                    let req = v1::SignDigestRequest {
                        request_id,
                        key_id,
                        digest: sha2::Sha256::digest(text.as_bytes()).to_vec(),
                        dry_run: false,
                    };
                    client.sign_digest(req).await.map(|_| ())
                };
                match result {
                    Ok(()) => out.latencies.push(t.elapsed()),
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
        if let Some(e) = per_endpoint.get_mut(w.endpoint) {
            e.clients += 1;
            e.signed += w.latencies.len() as u64;
            e.errors += w.errors.len() as u64;
        }
        latencies.extend(w.latencies);
        for e in w.errors {
            *errors.entry(e).or_default() += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(pacer) = pacer {
        pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    }
    latencies.sort();
    Ok(Measured {
        offered: args.rate,
        latencies,
        errors,
        elapsed,
        // The per-endpoint lines are for runs over several; one endpoint reports as before.
        endpoints: if endpoints > 1 {
            per_endpoint
        } else {
            Vec::new()
        },
    })
}
