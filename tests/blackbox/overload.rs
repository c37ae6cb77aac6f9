//! Load shedding: with the key backend made slow for real (OpenBao transit behind a TCP proxy
//! that holds every chunk it forwards to OpenBao for a fixed time), many more clients than
//! `server.max_in_flight` get fast RESOURCE_EXHAUSTED refusals instead of an ever longer
//! queue: every accepted request finishes within `server.queue_timeout` plus its own work,
//! a shed request leaves nothing in the audit log or the state store (its retry is a fresh
//! try that signs), the shed requests are counted in `signerd_requests_shed_total`, and
//! health answers while signing is overloaded.
//!
//! These tests need `bao` on `PATH` (see `vault.rs`) and fail, never skip, without it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use signerd_proto::v1;
use signerd_proto::v1::signer_client::SignerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::metrics::{metrics_addr, scrape, value};
use crate::util::*;
use crate::vault::{Bao, ROOT_TOKEN, generate, use_vault, write_token};

/// How long the proxy holds each chunk on its way to OpenBao.
const BACKEND_DELAY: Duration = Duration::from_millis(50);
/// `server.max_in_flight` of the test daemon.
const MAX_IN_FLIGHT: usize = 8;
/// `keys.vault.max_connections` of the test daemon: half of the turns wait for a connection.
const VAULT_CONNECTIONS: usize = 4;
/// `server.queue_timeout` of the test daemon.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(250);
/// Connections, and requests sent at once on each.
const CONNECTIONS: usize = 64;
const PER_CONNECTION: usize = 8;
/// The work of one accepted request: its own transit call and, at worst, the call ahead of
/// it on the same connection (`MAX_IN_FLIGHT` is twice `VAULT_CONNECTIONS`), each of up to
/// two forwarded chunks (head and body), plus its audit commit.
const OWN_WORK: Duration = Duration::from_millis(2 * 2 * 50 + 100);
/// Slack for two cores shared by the daemon, OpenBao, the proxy, the 512 callers and
/// whatever else runs. Without shedding, the last of 512 requests waits for 512 / 4 transit
/// calls of at least 50 ms each (over 6 s).
const MARGIN: Duration = Duration::from_millis(1500);

/// A TCP proxy to `upstream` that holds every chunk from the client for `delay` before it
/// forwards it (answers come back at once). Runs on a thread of its own; stops when dropped.
struct SlowProxy {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowProxy {
    fn start(upstream: SocketAddr, delay: Duration) -> SlowProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let inbound = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => return,
                        },
                    };
                    tokio::spawn(forward(inbound, upstream, delay));
                }
            });
        });
        SlowProxy {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One proxied connection: client to upstream chunk by chunk, each held for `delay`.
async fn forward(inbound: tokio::net::TcpStream, upstream: SocketAddr, delay: Duration) {
    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut client_r, mut client_w) = inbound.into_split();
    let (mut up_r, mut up_w) = outbound.into_split();
    let to_upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tokio::time::sleep(delay).await;
            if up_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = up_w.shutdown().await;
    };
    let to_client = async move {
        let _ = tokio::io::copy(&mut up_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

fn digest_req(id: &str) -> v1::SignDigestRequest {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(id.as_bytes());
    v1::SignDigestRequest {
        dry_run: false,
        request_id: id.to_owned(),
        key_id: "ved".to_owned(),
        digest: digest.to_vec(),
    }
}

/// One request's answer and how long it took, as its client saw it.
struct Answer {
    id: String,
    code: Code,
    message: String,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_fast_and_accepted_requests_finish_within_the_bound() {
    let env = TestEnv::new("overload");
    let bao = Bao::start(&env.dir);
    write_token(&env, ROOT_TOKEN);
    use_vault(
        &env,
        &bao,
        &format!("token_file = \"vault.token\"\nmax_connections = {VAULT_CONNECTIONS}"),
    );
    generate(&env, "ved", "ed25519");
    // The daemon reaches OpenBao only through the slow proxy.
    let upstream: SocketAddr = bao.addr.trim_start_matches("http://").parse().unwrap();
    let proxy = SlowProxy::start(upstream, BACKEND_DELAY);
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(&bao.addr), "the test config changed shape");
    let text = text
        .replace(&bao.addr, &format!("http://{}", proxy.addr))
        .replace("timeout = \"2s\"", "timeout = \"20s\"")
        .replace(
            "[server]\n",
            &format!(
                "[server]\nmax_in_flight = {MAX_IN_FLIGHT}\nqueue_timeout = \"{}ms\"\n",
                QUEUE_TIMEOUT.as_millis()
            ),
        );
    let text = format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);
    let d = env.start();
    let metrics = metrics_addr(&d);

    // The first signature pins the key; the storm measures signing alone.
    let mut warm = env.client(&d, "app").await;
    warm.sign_digest(digest_req("warm-up")).await.unwrap();

    let health_channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    let mut clients: Vec<SignerClient<Channel>> = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(env.client(&d, "app").await);
    }
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(CONNECTIONS * PER_CONNECTION + 1));
    let mut calls = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for i in 0..PER_CONNECTION {
            let mut client = client.clone();
            let go = go.clone();
            let id = format!("storm-{c}-{i}");
            calls.spawn(async move {
                go.wait().await;
                let t = Instant::now();
                let got = client.sign_digest(digest_req(&id)).await;
                let took = t.elapsed();
                let (code, message) = match got {
                    Ok(_) => (Code::Ok, String::new()),
                    Err(s) => (s.code(), s.message().to_owned()),
                };
                Answer {
                    id,
                    code,
                    message,
                    took,
                }
            });
        }
    }
    let storm = Instant::now();
    go.wait().await;
    // Health is not signing work: it answers at once while signing is overloaded.
    tokio::time::sleep(QUEUE_TIMEOUT).await;
    let t = Instant::now();
    let h = health(health_channel, SIGNER_SERVICE).await;
    let health_took = t.elapsed();
    let mut answers = Vec::with_capacity(CONNECTIONS * PER_CONNECTION);
    while let Some(a) = calls.join_next().await {
        answers.push(a.unwrap());
    }
    let storm_took = storm.elapsed();
    assert_eq!(h.unwrap(), SERVING, "health during the storm");
    assert!(
        health_took < MARGIN,
        "health took {health_took:?} during the storm"
    );

    let (accepted, shed): (Vec<&Answer>, Vec<&Answer>) =
        answers.iter().partition(|a| a.code == Code::Ok);
    let slowest = |v: &[&Answer]| v.iter().map(|a| a.took).max().unwrap_or_default();
    eprintln!(
        "overload: {} signed (slowest {:?}), {} shed (slowest {:?}), storm {storm_took:?}",
        accepted.len(),
        slowest(&accepted),
        shed.len(),
        slowest(&shed)
    );
    let others: Vec<String> = shed
        .iter()
        .filter(|a| a.code != Code::ResourceExhausted)
        .map(|a| format!("{}: {:?} {}", a.id, a.code, a.message))
        .collect();
    assert!(others.is_empty(), "neither signed nor shed: {others:?}");
    assert!(!accepted.is_empty(), "nothing was signed");
    assert!(!shed.is_empty(), "nothing was shed among 512 requests");
    for a in &shed {
        assert!(
            a.message.contains("overloaded") && a.message.contains("retry"),
            "{}: {}",
            a.id,
            a.message
        );
        assert!(
            a.took <= QUEUE_TIMEOUT + MARGIN,
            "{} was refused after {:?}",
            a.id,
            a.took
        );
    }
    for a in &accepted {
        assert!(
            a.took <= QUEUE_TIMEOUT + OWN_WORK + MARGIN,
            "{} was signed after {:?}: the queue is not bounded",
            a.id,
            a.took
        );
    }

    // The metric counted every shed request.
    let body = scrape(&metrics);
    let counted = value(&body, "signerd_requests_shed_total{method=\"SignDigest\"");
    assert_eq!(counted, shed.len() as f64, "{body}");
    // One log line per second at most, not one per shed request.
    let lines = d
        .stderr()
        .lines()
        .filter(|l| l.contains("signing requests shed"))
        .count();
    let at_most = usize::try_from(storm_took.as_secs()).unwrap() + 2;
    assert!(
        (1..=at_most).contains(&lines),
        "{lines} log lines about shedding in {storm_took:?}"
    );

    // A shed request left nothing in the audit log; an accepted one is on record.
    let audit = env.wait_audit(|a| {
        accepted
            .iter()
            .all(|x| a.results(&x.id) == vec!["signed".to_owned()])
    });
    for a in &shed {
        assert!(
            audit.for_req(&a.id).is_empty(),
            "{} was shed but is in the audit log: {:?}",
            a.id,
            audit.for_req(&a.id)
        );
    }

    // Its retry, once the load is gone, is a fresh try that signs (nothing was stored).
    // A second after the last report, the admitted retry also logs the rest of the burst.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retried = &shed[0].id;
    let sig = warm.sign_digest(digest_req(retried)).await;
    assert!(sig.is_ok(), "retry of {retried}: {sig:?}");
    let logged: usize = d
        .stderr()
        .lines()
        .filter(|l| l.contains("signing requests shed"))
        .map(|l| {
            let n = l.split("shed=").nth(1).unwrap_or_else(|| panic!("{l}"));
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().unwrap_or_else(|_| panic!("{l}"))
        })
        .sum();
    assert_eq!(logged, shed.len(), "shed requests in the log lines");
    let audit = env.wait_audit(|a| a.results(retried) == vec!["signed".to_owned()]);
    assert_eq!(audit.count("sign.request", retried), 1);
    audit.assert_seq_contiguous();
    drop(warm);
    drop(clients);
    d.stop();
    drop(proxy);
}
