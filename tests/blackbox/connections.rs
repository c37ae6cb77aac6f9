//! Connections that cannot lock everyone out: 1,024 clients that finish the TLS handshake and
//! then say nothing, or send only the HTTP/2 preface, or an HTTP/2 connection and no request,
//! never keep a new client (or a health check) waiting, and are closed by
//! `server.preface_timeout` or `server.idle_timeout`; one identity, and the certificates mapped
//! to no identity together, hold at most their caps. And `auth.failure` records that cannot
//! flood the log: repeated refusals are folded into records with a `count`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signerd_proto::v1::ListKeysRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::Code;

use crate::audit_support::{assert_verifies, vkey};
use crate::util::*;

/// Connections each batch opens.
const CONNECTIONS: usize = 1024;
/// The client HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a client sends after the preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Slack for a loaded two-core machine between a timeout and the close a client sees.
const MARGIN: Duration = Duration::from_millis(2_500);

/// The test process holds 1,024 connections (and the daemon, its child, as many): make sure
/// the open-files limit allows it.
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= 3 * CONNECTIONS as u64),
        "RLIMIT_NOFILE {now:?} is too low for this test"
    );
}

/// An installation whose `[server]` gets `server` and whose `[audit]` gets `audit`.
fn installation(name: &str, server: &str, audit: &str) -> TestEnv {
    raise_open_files();
    let env = TestEnv::new(name);
    configure(&env, server, audit);
    env
}

/// Adds `server` to the `[server]` table of `env`'s configuration and `audit` to `[audit]`.
fn configure(env: &TestEnv, server: &str, audit: &str) {
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    let listen = "[server]\nlisten = \"127.0.0.1:0\"\n";
    assert!(
        config.contains(listen),
        "the test configuration changed shape"
    );
    assert!(config.trim_end().ends_with("dir = \"audit\""), "{config}");
    let config = config.replace(listen, &format!("{listen}{server}\n"));
    std::fs::write(env.config_path(), format!("{config}{audit}\n")).unwrap();
}

/// A raw TLS client with `client`'s certificate (in the installation's `pki/`).
fn connector(env: &TestEnv, client: &str) -> TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = env.dir.join("pki");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(pki.join(format!("{client}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("{client}-key.pem"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// What a raw client sends after its handshake.
#[derive(Debug, Clone, Copy)]
enum Sends {
    Nothing,
    PrefaceOnly,
    PrefaceAndSettings,
}

/// One raw connection: when its handshake finished, and the stream (`None` when the daemon
/// refused it before the handshake finished).
struct Raw {
    opened: Instant,
    stream: Option<TlsStream<TcpStream>>,
}

/// Opens `n` raw connections as `client`, 32 at a time, each sending `sends`.
async fn open(addr: SocketAddr, tls: &TlsConnector, n: usize, sends: Sends) -> Vec<Raw> {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (tls, gate) = (tls.clone(), gate.clone());
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let stream = match tls.connect(name, tcp).await {
                Ok(mut s) => {
                    let sent = match sends {
                        Sends::Nothing => Ok(()),
                        Sends::PrefaceOnly => s.write_all(PREFACE).await,
                        Sends::PrefaceAndSettings => {
                            s.write_all(&[PREFACE, EMPTY_SETTINGS].concat()).await
                        }
                    };
                    let _ = s.flush().await;
                    sent.ok().map(|()| s)
                }
                Err(_) => None,
            };
            (
                i,
                Raw {
                    opened: Instant::now(),
                    stream,
                },
            )
        });
    }
    let mut out: Vec<(usize, Raw)> = tasks.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Reads each connection until the daemon closes it (EOF or an error); how long each stayed
/// open after its handshake, or `None` if it was still open `limit` after it.
async fn lifetimes(raws: Vec<Raw>, limit: Duration) -> Vec<Option<Duration>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, raw) in raws.into_iter().enumerate() {
        tasks.spawn(async move {
            let Some(mut s) = raw.stream else {
                return (i, Some(Duration::ZERO));
            };
            let until = raw.opened + limit;
            let mut buf = vec![0u8; 4096];
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return (i, Some(raw.opened.elapsed())),
                    // The daemon's SETTINGS and the like: the connection is open.
                    Ok(Ok(_)) => {}
                    Err(_) => return (i, None),
                }
            }
        });
    }
    let mut out = tasks.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, l)| l).collect()
}

/// A new client is served while the raw connections are open: a health check answers
/// SERVING and a mapped client lists keys, both within a second.
async fn new_client_is_served(env: &TestEnv, d: &Daemon, what: &str) {
    let started = Instant::now();
    let within = Duration::from_secs(1);
    let served = tokio::time::timeout(within, async {
        let channel = signerd::client::channel(&env.settings(d, "bob"))
            .await
            .unwrap();
        assert_eq!(health(channel.clone(), "").await.unwrap(), SERVING);
        signerd_proto::v1::signer_client::SignerClient::new(channel)
            .list_keys(ListKeysRequest {})
            .await
            .unwrap();
    })
    .await;
    assert!(
        served.is_ok(),
        "with {what} open, a new client was not served within {within:?} ({:?})",
        started.elapsed()
    );
}

/// `n` raw connections that send `sends` are all closed within `timeout` (+ margin) of their
/// handshake, and a new client is served meanwhile. Returns how many stayed open until the
/// timeout rather than being refused at once.
async fn batch(env: &TestEnv, d: &Daemon, client: &str, sends: Sends, timeout: Duration) -> usize {
    let what = format!("{CONNECTIONS} connections of {client} sending {sends:?}");
    let raws = open(d.addr, &connector(env, client), CONNECTIONS, sends).await;
    new_client_is_served(env, d, &what).await;
    let lives = lifetimes(raws, timeout + MARGIN).await;
    let open: Vec<usize> = lives
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_none())
        .map(|(i, _)| i)
        .collect();
    assert!(
        open.is_empty(),
        "{what}: {} still open {:?} after their handshake (timeout {timeout:?}), e.g. #{}",
        open.len(),
        timeout + MARGIN,
        open[0]
    );
    // The ones the daemon kept were closed by the timeout, not before it.
    let held: Vec<Duration> = lives
        .into_iter()
        .flatten()
        .filter(|l| *l >= timeout / 2)
        .collect();
    assert!(
        held.iter()
            .all(|l| *l >= timeout - Duration::from_millis(200)),
        "{what}: closed before the timeout {timeout:?}: {held:?}"
    );
    held.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_never_lock_out_new_clients_and_are_closed() {
    let preface = Duration::from_secs(2);
    let idle = Duration::from_secs(2);
    // The default caps (1,024 connections, a quarter per identity, 4 unmapped).
    let env = installation(
        "conn-idle",
        "preface_timeout = \"2s\"\nidle_timeout = \"2s\"",
        "",
    );
    let d = env.start();

    // Handshake only, then nothing. Those over the identity's cap are closed at once (how
    // many the cap holds at a time is checked below); the others by the timeout.
    let held = batch(&env, &d, "app", Sends::Nothing, preface).await;
    assert!(held >= 1, "no connection waited for the preface timeout");
    // Only the 24 octets of the preface: no SETTINGS frame, no HTTP/2 connection.
    let held = batch(&env, &d, "app", Sends::PrefaceOnly, preface).await;
    assert!(held >= 1, "no connection waited for the preface timeout");
    // A live HTTP/2 connection that makes no request.
    let held = batch(&env, &d, "app", Sends::PrefaceAndSettings, idle).await;
    assert!(held >= 1, "no connection waited for the idle timeout");
    let stopped = d.stop();
    assert!(stopped.success(), "{stopped:?}");
}

/// How many of `raws` the daemon still holds open a second after they were opened (the
/// preface timeout is far longer).
async fn still_open(raws: Vec<Raw>) -> usize {
    let opened = raws.iter().map(|r| r.opened).max().unwrap();
    tokio::time::sleep_until((opened + Duration::from_secs(1)).into()).await;
    lifetimes(raws, Duration::from_secs(1))
        .await
        .iter()
        .filter(|l| l.is_none())
        .count()
}

/// The `auth.failure` records whose reason contains `needle`, and the refusals they count.
fn failures(dir: &Path, needle: &str) -> (usize, u64) {
    let audit = Audit::read(dir);
    let records: Vec<_> = audit
        .of_type("auth.failure")
        .into_iter()
        .filter(|v| v["reason"].as_str().is_some_and(|r| r.contains(needle)))
        .collect();
    let count = records
        .iter()
        .map(|v| v.get("count").map_or(1, |c| c.as_u64().unwrap()))
        .sum();
    (records.len(), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_and_unmapped_certificates_hold_at_most_their_caps() {
    let env = installation(
        "conn-caps",
        "preface_timeout = \"30s\"\nmax_connections_per_identity = 8\nmax_connections_unmapped = 4",
        "auth_failure_window = \"2s\"",
    );
    let d = env.start();
    let n = 64;
    let app = open(d.addr, &connector(&env, "app"), n, Sends::Nothing).await;
    let stranger = open(d.addr, &connector(&env, "stranger"), n, Sends::Nothing).await;
    new_client_is_served(&env, &d, "the capped connections").await;
    assert_eq!(still_open(app).await, 8, "connections of identity `app`");
    assert_eq!(
        still_open(stranger).await,
        4,
        "connections of an unmapped certificate"
    );
    // Each refusal counts, folded into at most a few records per certificate.
    let stopped = d.stop();
    assert!(stopped.success(), "{stopped:?}");
    let dir = env.audit_dir();
    let (records, count) = failures(&dir, "max_connections_per_identity");
    assert_eq!(count, (n - 8) as u64, "refusals of `app` over its cap");
    assert!(records <= 3, "{records} records for {count} refusals");
    let (records, count) = failures(&dir, "max_connections_unmapped");
    assert_eq!(count, (n - 4) as u64, "refusals of `stranger` over the cap");
    assert!(records <= 3, "{records} records for {count} refusals");
    assert_verifies(&dir, &vkey(&env));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_of_an_unmapped_certificate_are_folded() {
    let window = Duration::from_secs(3);
    let env = installation("conn-fold", "", "auth_failure_window = \"3s\"");
    let d = env.start();
    let mut c = env.client(&d, "stranger").await;
    let calls = 2000u64;
    let started = Instant::now();
    for _ in 0..calls {
        let st = c.list_keys(ListKeysRequest {}).await.unwrap_err();
        // The client still gets its precise error.
        assert_eq!(st.code(), Code::Unauthenticated);
        assert!(st.message().contains("not mapped"), "{st:?}");
    }
    let took = started.elapsed();
    let dir = env.audit_dir();
    // The first refusal is on record at once; the others are being counted.
    let audit = env.wait_audit(|_| failures(&dir, "not mapped").0 >= 1);
    let (records, _) = failures(&dir, "not mapped");
    let windows = u32::try_from(took.as_millis() / window.as_millis()).unwrap();
    assert!(
        records <= 2 + windows as usize,
        "{records} auth.failure records for {calls} refusals in {took:?}"
    );
    drop(audit);
    // When the window ends, a record with `count` accounts for the rest.
    let deadline = Instant::now() + window + MARGIN;
    while failures(&dir, "not mapped").1 < calls && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failures(&dir, "not mapped").1, calls);
    // Refusals still being counted at shutdown are written then.
    for _ in 0..10 {
        c.list_keys(ListKeysRequest {}).await.unwrap_err();
    }
    drop(c);
    let stopped = d.stop();
    assert!(stopped.success(), "{stopped:?}");
    let (records, count) = failures(&dir, "not mapped");
    assert_eq!(count, calls + 10);
    assert!(records <= 4 + windows as usize, "{records} records");
    assert_verifies(&dir, &vkey(&env));
}

/// A call in flight longer than the idle timeout (a `WatchSignRequest` stream of 3 s, with an
/// idle timeout of 1 s) keeps its connection: only connections without calls are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_idle_timeout_is_not_cut() {
    let env = crate::approvals::approvals_env("conn-watch", "1h");
    configure(&env, "idle_timeout = \"1s\"", "");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    crate::approvals::pending(&mut c, "watch-1", 5_000).await;
    let started = Instant::now();
    let mut stream = c
        .watch_sign_request(signerd_proto::v1::WatchSignRequestRequest {
            request_id: "watch-1".to_owned(),
            max_wait_secs: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let mut states = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(_))) => states += 1,
            Ok(Ok(None)) => break,
            Ok(Err(st)) => panic!("the stream was cut after {:?}: {st:?}", started.elapsed()),
            Err(_) => panic!("the stream did not end after max_wait_secs"),
        }
    }
    assert!(states >= 1);
    assert!(
        started.elapsed() >= Duration::from_millis(2_800),
        "the stream ended after {:?}, before its 3 s",
        started.elapsed()
    );
}

/// A connection over its identity's cap is told why before it is closed: the daemon's SETTINGS,
/// then a GOAWAY that accepts no stream, with ENHANCE_YOUR_CALM and the reason, then a clean
/// TLS close. (tonic's client reports such a connection's calls as CANCELLED, "connection
/// closed", without the reason.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_cap_is_told_why() {
    let env = installation(
        "conn-cap-told",
        "preface_timeout = \"30s\"\nmax_connections_per_identity = 2",
        "",
    );
    let d = env.start();
    let held = open(
        d.addr,
        &connector(&env, "app"),
        2,
        Sends::PrefaceAndSettings,
    )
    .await;
    let mut over = open(d.addr, &connector(&env, "app"), 1, Sends::Nothing).await;
    let mut stream = over.pop().unwrap().stream.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    // SETTINGS (9 octets), then GOAWAY: last stream 0, ENHANCE_YOUR_CALM, the reason.
    assert_eq!(got[3], 0x4, "{got:?}");
    assert_eq!(got[12], 0x7, "{got:?}");
    assert_eq!(&got[18..26], &[0, 0, 0, 0, 0, 0, 0, 0xb]);
    let reason = String::from_utf8_lossy(&got[26..]);
    assert!(reason.contains("max_connections_per_identity"), "{reason}");
    // A gRPC client over the cap is refused too (tonic reports it as CANCELLED or, when it
    // reads the GOAWAY first, RESOURCE_EXHAUSTED); one within the cap is served once a slot
    // is free.
    let mut c = signerd_proto::v1::signer_client::SignerClient::new(
        signerd::client::channel(&env.settings(&d, "app"))
            .await
            .unwrap(),
    );
    let st = c.list_keys(ListKeysRequest {}).await.unwrap_err();
    assert!(
        matches!(st.code(), Code::Cancelled | Code::ResourceExhausted),
        "{st:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = env.client(&d, "app").await;
    c.list_keys(ListKeysRequest {}).await.unwrap();
    assert!(d.stop().success());
}
