//! Replicas on one PostgreSQL database (`[state] backend = "postgres"`): three signerd
//! processes, each with its own audit log and origin, share limits, idempotency and approvals;
//! the database failing fails closed and signing resumes by itself when it returns.
//!
//! Every test starts a real PostgreSQL server of its own (`crate::pg`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use signerd_proto::v1::{self, SignStatus};
use tonic::Code;

use crate::approvals::{approval, approver, final_state, pending};
use crate::pg::PgServer;
use crate::util::*;

/// One installation (PKI, keys, policy) run as several replicas on one database.
pub(crate) struct Replicas {
    pub(crate) env: TestEnv,
    pub(crate) pg: PgServer,
    /// More `[state]` settings of every replica.
    pub(crate) state: String,
}

impl Replicas {
    pub(crate) fn new(name: &str, policy: &str) -> Replicas {
        Replicas::on(name, policy, PgServer::start(name))
    }

    /// [`Replicas::new`] on a database that takes only TLS connections.
    pub(crate) fn new_tls(name: &str, policy: &str) -> Replicas {
        Replicas::on(name, policy, PgServer::start_tls(name))
    }

    fn on(name: &str, policy: &str, pg: PgServer) -> Replicas {
        let env = TestEnv::with(
            name,
            Opts {
                policy: policy.to_owned(),
                ..Opts::default()
            },
        );
        Replicas {
            env,
            pg,
            state: String::new(),
        }
    }

    pub(crate) fn origin(i: usize) -> String {
        format!("replica-{i}.blackbox.test/signerd")
    }

    pub(crate) fn audit_dir(&self, i: usize) -> PathBuf {
        self.env.dir.join(format!("audit-{i}"))
    }

    /// Writes replica `i`'s configuration: the installation's, with the database as its state,
    /// its own audit directory and origin, and the policy signed for that origin.
    pub(crate) fn config(&self, i: usize) -> PathBuf {
        self.config_on(i, true)
    }

    /// [`Replicas::config`], on the database (`postgres`) or on the embedded store in the
    /// installation's `state` directory.
    pub(crate) fn config_on(&self, i: usize, postgres: bool) -> PathBuf {
        let base = std::fs::read_to_string(self.env.config_path()).unwrap();
        let origin = Replicas::origin(i);
        let mut state = self.pg.state_toml().replace(
            "backend = \"postgres\"\n",
            &format!("backend = \"postgres\"\n{}", self.state),
        );
        if !state.contains("tls =") {
            // The test database listens on loopback only.
            state.push_str("tls = \"disable\"\n");
        }
        let text = base
            // A thousand tries at once wait for their turn rather than being shed.
            .replace(
                "[server]\nlisten = \"127.0.0.1:0\"\n",
                "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"30s\"\nqueue_timeout = \"20s\"\n",
            )
            .replace(
                "[state]\ndir = \"state\"\n",
                &if postgres {
                    format!("{state}\n")
                } else {
                    "[state]\ndir = \"state\"\n".to_owned()
                },
            )
            .replace(
                "[audit]\ndir = \"audit\"\n",
                &format!("[audit]\ndir = \"audit-{i}\"\norigin = \"{origin}\"\n"),
            )
            .replace(
                "[policy]\nfile = \"policy.toml\"\n",
                &format!("[policy]\nfile = \"policy.toml\"\nsignatures = \"policy-{i}.sig\"\n"),
            );
        assert!(
            text.contains("backend = \"postgres\"") == postgres
                && text.contains(&origin)
                && text.contains("queue_timeout"),
            "the configuration did not take the replica's settings:\n{text}"
        );
        let policy_text = std::fs::read_to_string(self.env.policy_path()).unwrap();
        let policy = signerd_policy::Policy::parse("policy.toml", &policy_text).unwrap();
        let sigs: String = self
            .env
            .opts
            .signers
            .iter()
            .map(|n| self.env.signature(n, &origin, &policy).to_toml() + "\n")
            .collect();
        write_file(
            &self.env.dir.join(format!("policy-{i}.sig")),
            sigs.as_bytes(),
            0o644,
        );
        let path = self.env.dir.join(format!("signerd-{i}.toml"));
        write_file(&path, text.as_bytes(), 0o600);
        path
    }

    pub(crate) fn command(&self, i: usize) -> Command {
        let mut cmd = Command::new(SIGNERD);
        cmd.arg("run").arg("--config").arg(self.config(i));
        cmd
    }

    pub(crate) fn start(&self, i: usize) -> Daemon {
        Daemon::spawn(self.command(i)).unwrap_or_else(|e| panic!("replica {i} did not start: {e}"))
    }

    pub(crate) fn audit(&self, i: usize) -> Audit {
        Audit::read(&self.audit_dir(i))
    }

    /// `sign.result` records with status `signed` for `req_id` in every replica's log.
    pub(crate) fn signed_results(&self, n: usize, req_id: Option<&str>) -> usize {
        (0..n)
            .map(|i| {
                self.audit(i)
                    .of_type("sign.result")
                    .into_iter()
                    .filter(|r| r["status"] == "signed")
                    .filter(|r| req_id.is_none_or(|id| r["req_id"] == id))
                    .count()
            })
            .sum()
    }
}

/// At most 10,000 wei a day: ten transfers of 1,000.
fn limited_to_ten() -> String {
    limited_policy(10_000)
}

/// `app` may make at most 25 requests a minute.
const RATED: &str = r#"version = 1
serial = 1

[[rule]]
id = "requesters-hot"
effect = "allow"
roles = ["requester"]
keys = ["hot"]

[[rate_limit]]
id = "burst"
clients = ["app"]
window = "1m"
max_requests = 25
"#;

/// 1,000 concurrent tries of 1,000 wei spread over three replicas against a 10,000 wei window:
/// exactly 10 sign, on whichever replicas, and the three logs together hold exactly 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_is_global_across_three_replicas() {
    let r = Replicas::new("replicas-limit", &limited_to_ten());
    let daemons: Vec<Daemon> = (0..3).map(|i| r.start(i)).collect();
    let mut clients = Vec::new();
    for d in &daemons {
        for _ in 0..4 {
            clients.push(r.env.client(d, "app").await);
        }
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        // Client k talks to replica k mod 3.
        let mut c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            c.sign_evm_transaction(eip1559(&format!("race-{i}"))).await
        }));
    }
    let (signed, denied) = signed_and_denied(tasks, "daily-eth").await;
    assert_eq!((signed, denied), (10, 990));
    for (i, d) in daemons.into_iter().enumerate() {
        assert!(d.stop().success(), "replica {i}");
    }
    assert_eq!(r.signed_results(3, None), 10);
    let results: usize = (0..3)
        .map(|i| r.audit(i).of_type("sign.result").len())
        .sum();
    assert_eq!(results, 1000, "every try has its result in one log");
}

/// A rate limit counts the requests of every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_global_across_three_replicas() {
    let r = Replicas::new("replicas-rate", RATED);
    let daemons: Vec<Daemon> = (0..3).map(|i| r.start(i)).collect();
    let mut clients = Vec::new();
    for d in &daemons {
        clients.push(r.env.client(d, "app").await);
    }
    let mut tasks = Vec::new();
    for i in 0..90 {
        let mut c = clients[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            c.sign_evm_transaction(eip1559(&format!("rate-{i}"))).await
        }));
    }
    let mut signed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => signed += 1,
            Err(st) => assert_status("over the rate", &st, Code::PermissionDenied, "burst"),
        }
    }
    assert_eq!(signed, 25);
}

/// The same (client, request_id) sent to three replicas at once is decided and signed once:
/// every replica returns the same signature. The same id with another request is ABORTED on
/// every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_is_global_across_three_replicas() {
    let r = Replicas::new("replicas-idempotency", &limited_to_ten());
    let daemons: Vec<Daemon> = (0..3).map(|i| r.start(i)).collect();
    let mut clients = Vec::new();
    for d in &daemons {
        clients.push(r.env.client(d, "app").await);
    }
    for round in 0..10 {
        let id = format!("same-{round}");
        let mut tasks = Vec::new();
        for c in &clients {
            let mut c = c.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                c.sign_evm_transaction(eip1559(&id)).await
            }));
        }
        let mut raws = Vec::new();
        for t in tasks {
            raws.push(t.await.unwrap().unwrap().into_inner().raw_transaction);
        }
        assert!(!raws[0].is_empty());
        assert!(
            raws.iter().all(|x| *x == raws[0]),
            "round {round}: replicas returned different signatures"
        );
    }
    // Another request under a used id, on every replica.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut other = eip1559("same-0");
        other.value = "7".into();
        let st = refused(
            "another request, same id",
            c.sign_evm_transaction(other).await,
        );
        assert_eq!(st.code(), Code::Aborted, "replica {i}: {st:?}");
    }
    for d in daemons {
        assert!(d.stop().success());
    }
    for round in 0..10 {
        let id = format!("same-{round}");
        assert_eq!(r.signed_results(3, Some(&id)), 1, "{id}: signed once");
        let decisions: usize = (0..3).map(|i| r.audit(i).count("sign.decision", &id)).sum();
        assert_eq!(decisions, 1, "{id}: decided once");
    }
}

/// A request made on replica 0 is listed and voted on at replicas 1 and 2, watched on 2, and
/// signed once, by one replica, at quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_global_across_three_replicas() {
    let r = Replicas::new(
        "replicas-approvals",
        &crate::approvals::policy(1, "1h", 10_000),
    );
    let daemons: Vec<Daemon> = (0..3).map(|i| r.start(i)).collect();
    let mut app0 = r.env.client(&daemons[0], "app").await;
    let p = pending(&mut app0, "big-1", 6000).await;

    let mut bob1 = approver(&r.env, &daemons[1], "bob").await;
    let list = bob1
        .list_pending(v1::ListPendingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.requests.len(), 1, "{list:?}");
    assert_eq!(list.requests[0].request_id, "big-1");
    // A retry on another replica is the same pending request.
    let mut app2 = r.env.client(&daemons[2], "app").await;
    assert_eq!(
        pending(&mut app2, "big-1", 6000).await.fingerprint,
        p.fingerprint
    );

    bob1.approve(approval("bob", "app", &p)).await.unwrap();
    let mut carol2 = approver(&r.env, &daemons[2], "carol").await;
    carol2.approve(approval("carol", "app", &p)).await.unwrap();
    let state = final_state(&mut app2, "big-1").await;
    assert_eq!(state.status(), SignStatus::Signed, "{state:?}");
    // The answer on replica 0, where it was asked, is the signed one.
    let again = app0
        .sign_evm_transaction(crate::approvals::tx("big-1", 6000))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.raw_transaction.is_empty(), "{again:?}");
    for d in daemons {
        assert!(d.stop().success());
    }
    assert_eq!(r.signed_results(3, Some("big-1")), 1, "signed once");
}

/// PostgreSQL stopped mid-run: requests get UNAVAILABLE with nothing signed, health says
/// NOT_SERVING; when it is back, signing resumes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_closed_and_passes() {
    let mut r = Replicas::new("replicas-outage", &limited_to_ten());
    let d = r.start(0);
    let mut c = r.env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("before")).await.unwrap();

    r.pg.stop();
    for i in 0..5 {
        let id = format!("during-{i}");
        let st = refused("database down", c.sign_evm_transaction(eip1559(&id)).await);
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    }
    let channel = signerd::client::channel(&r.env.settings(&d, "app"))
        .await
        .unwrap();
    wait_health(&channel, NOT_SERVING).await;

    r.pg.start_again();
    wait_health(&channel, SERVING).await;
    let resp = c.sign_evm_transaction(eip1559("after")).await.unwrap();
    assert!(!resp.into_inner().raw_transaction.is_empty());
    // A retry of a refused request is now decided, once.
    c.sign_evm_transaction(eip1559("during-0")).await.unwrap();
    assert!(d.stop().success());
    let audit = r.audit(0);
    for i in 1..5 {
        audit.assert_not_signed(&format!("during-{i}"));
    }
    assert_eq!(r.signed_results(1, None), 3);
}

async fn wait_health(channel: &tonic::transport::Channel, want: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let signer = health(channel.clone(), SIGNER_SERVICE).await;
        if matches!(signer, Ok(s) if s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health still {signer:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A database that cannot be reached at start, a schema newer than this release, and a second
/// replica with the origin of another each stop the start with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_what_it_cannot_trust() {
    let mut r = Replicas::new("replicas-start", &limited_to_ten());
    r.pg.stop();
    let out = run_to_exit(r.command(0), Duration::from_secs(60));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("PostgreSQL") && out.stderr.contains("127.0.0.1"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(r.pg.password()), "the password leaked");
    r.pg.start_again();

    let d = r.start(0);
    assert!(d.stop().success());
    // Replica 1 configured with replica 0's origin, on another log: refused.
    let clash = r.config(1);
    let text = std::fs::read_to_string(&clash)
        .unwrap()
        .replace(&Replicas::origin(1), &Replicas::origin(0));
    write_file(&clash, text.as_bytes(), 0o600);
    let mut cmd = Command::new(SIGNERD);
    cmd.arg("run").arg("--config").arg(&clash);
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("belongs to the audit log"),
        "{}",
        out.stderr
    );

    // A newer release migrated the schema: this one refuses to run on it.
    r.pg.psql("UPDATE signerd_schema SET version = version + 1");
    let out = run_to_exit(r.command(0), Duration::from_secs(60));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("newer than this signerd"),
        "{}",
        out.stderr
    );
}

/// What a client was finally told about one request.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Signed(String),
    Denied,
}

/// Sends `id` to the replicas in turn from `first` until one answers (bounded), as a client
/// behind a load balancer retries a failed call on another instance with the same id.
async fn send_until_answered(
    dir: &std::path::Path,
    endpoints: &[String],
    first: usize,
    id: &str,
) -> (Told, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut k = first;
    loop {
        let pki = dir.join("pki");
        let settings = signerd::client::ClientSettings {
            endpoint: endpoints[k % endpoints.len()].clone(),
            ca: pki.join("ca.pem"),
            identity: Some((pki.join("app.pem"), pki.join("app-key.pem"))),
            server_name: None,
        };
        let answer = match signerd::client::connect(&settings).await {
            Ok(mut c) => Some(c.sign_evm_transaction(eip1559(id)).await),
            Err(_) => None,
        };
        match answer {
            Some(Ok(resp)) => {
                let raw = resp.into_inner().raw_transaction;
                return (Told::Signed(format!("0x{}", hex::encode(raw))), k - first);
            }
            Some(Err(st)) if st.code() == Code::PermissionDenied => {
                return (Told::Denied, k - first);
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no replica answered in a minute"
        );
        k += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kill -9 one replica under load, 20 times (the first time it stays down until its requests
/// were retried elsewhere, so they are taken over when its claims lapse; afterwards it is
/// restarted at once). Every answer a client received is in some replica's log, the limit is
/// never overshot, every request ends with one answer, no reservation of an unsigned request
/// stays held, and the logs and the database cross-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_kill_9_loses_nothing() {
    let r = Replicas::new("replicas-failover", &limited_policy(300_000));
    let mut daemons: Vec<Daemon> = (0..3).map(|i| r.start(i)).collect();
    let dir = std::sync::Arc::new(r.env.dir.clone());
    let mut told: Vec<(String, Told)> = Vec::new();
    let mut retried = 0;
    for round in 0..20usize {
        let victim = round % 3;
        let endpoints: Vec<String> = daemons.iter().map(Daemon::endpoint).collect();
        let mut workers = Vec::new();
        for w in 0..6usize {
            let dir = dir.clone();
            let endpoints = endpoints.clone();
            workers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for j in 0..4usize {
                    let id = format!("r{round}-w{w}-{j}");
                    let (answer, retries) = send_until_answered(&dir, &endpoints, w + j, &id).await;
                    out.push((id, answer, retries));
                }
                out
            }));
        }
        tokio::time::sleep(Duration::from_millis(40 + 20 * (round as u64 % 5))).await;
        let pid = daemons[victim].pid();
        assert!(
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        if round > 0 {
            daemons[victim] = r.start(victim);
        }
        for w in workers {
            for (id, answer, retries) in w.await.unwrap() {
                told.push((id, answer));
                retried += usize::from(retries > 0);
            }
        }
        if round == 0 {
            daemons[victim] = r.start(victim);
        }
    }
    for d in daemons {
        assert!(d.stop().success());
    }

    // The kills hit requests in flight, which were answered by another replica.
    assert!(retried > 0, "no request was retried: the kills hit no load");
    eprintln!("{retried} requests retried on another replica");
    // Every signature a client received is in some replica's log.
    let logs: Vec<Audit> = (0..3).map(|i| r.audit(i)).collect();
    let mut signed_ids = std::collections::BTreeSet::new();
    for log in &logs {
        for rec in log.of_type("sign.result") {
            if rec["status"] == "signed" {
                signed_ids.insert(rec["req_id"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut signed_told = 0;
    for (id, answer) in &told {
        if let Told::Signed(raw) = answer {
            signed_told += 1;
            let logged = logs.iter().any(|log| {
                log.for_req(id)
                    .iter()
                    .any(|rec| rec["type"] == "sign.result" && rec["raw_tx"] == raw.as_str())
            });
            assert!(
                logged,
                "{id}: the signature the client received is in no log"
            );
        }
    }
    // No overshoot: at most 300 distinct requests signed; each one told signed was signed.
    assert!(signed_ids.len() <= 300, "{} signed", signed_ids.len());
    assert_eq!(told.len(), 480);
    assert!(signed_told > 0);
    for (id, answer) in &told {
        assert_eq!(
            matches!(answer, Told::Signed(_)),
            signed_ids.contains(id),
            "{id}: told {answer:?}"
        );
    }
    // Reservations are held by signed requests only: none is left behind by a dead replica.
    let held =
        r.pg.psql("SELECT count(DISTINCT request_id) FROM signerd_spend");
    assert!(
        held.lines()
            .any(|l| l.trim() == signed_ids.len().to_string()),
        "reservations of {held} requests, {} signed",
        signed_ids.len()
    );
    // The auditor's verification of the three logs, each with its key, as one system.
    let mut verify = vec!["audit".to_owned(), "verify".to_owned()];
    for i in 0..3 {
        let config = r.config(i);
        let out =
            crate::audit_support::ctl(&["audit", "pubkey", "--config", config.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        verify.push("--pubkey".to_owned());
        verify.push(out.stdout.trim().to_owned());
        verify.push(r.audit_dir(i).display().to_string());
    }
    let verify: Vec<&str> = verify.iter().map(String::as_str).collect();
    let out = crate::audit_support::ctl(&verify);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("all logs"), "{}", out.stdout);
    // The auditor's cross-check of the three logs against the database.
    let dirs: Vec<String> = (0..3)
        .map(|i| r.audit_dir(i).display().to_string())
        .collect();
    let config = r.config(0);
    let mut args = vec!["state", "cross-check", "--config", config.to_str().unwrap()];
    args.extend(dirs.iter().map(String::as_str));
    let out = crate::audit_support::ctl(&args);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("OK: every signed result"),
        "{}",
        out.stdout
    );
}

/// The cross-check fails on a committed answer no log produces, and on a signed result whose
/// answer is missing from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cross_check_finds_what_differs() {
    let r = Replicas::new("replicas-crosscheck", &limited_to_ten());
    let daemons: Vec<Daemon> = (0..2).map(|i| r.start(i)).collect();
    for (i, d) in daemons.iter().enumerate() {
        let mut c = r.env.client(d, "app").await;
        c.sign_evm_transaction(eip1559(&format!("x-{i}")))
            .await
            .unwrap();
    }
    for d in daemons {
        assert!(d.stop().success());
    }
    let config = r.config(0);
    let dirs = [r.audit_dir(0), r.audit_dir(1)];
    let check = || {
        let mut args = vec![
            "state".to_owned(),
            "cross-check".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        args.extend(dirs.iter().map(|d| d.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::audit_support::ctl(&args)
    };
    let out = check();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // Only one replica's log: the other's answer has no signed result.
    let mut args = vec!["state", "cross-check", "--config", config.to_str().unwrap()];
    let one = dirs[0].display().to_string();
    args.push(&one);
    let out = crate::audit_support::ctl(&args);
    assert!(!out.status.success());
    assert!(
        out.stdout.contains("`x-1` of `app` that no log's"),
        "{}",
        out.stdout
    );
    // An answer removed from the database.
    r.pg.psql("DELETE FROM signerd_requests WHERE request_id = 'x-0'");
    let out = check();
    assert!(!out.status.success());
    assert!(
        out.stdout
            .contains("`x-0` of `app` has no committed answer"),
        "{}",
        out.stdout
    );
}

/// A request whose replica died while holding it (its claim and its reservation are in the
/// database, its answer is not) is taken over by the replica a retry reaches once the claim
/// lapses, and completed once: the dead replica's reservation is replaced, not added to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_by_a_dead_replica_is_taken_over() {
    let r = Replicas::new("replicas-takeover", &limited_to_ten());
    let d = r.start(0);
    let mut c = r.env.client(&d, "app").await;
    for i in 0..9 {
        c.sign_evm_transaction(eip1559(&format!("t-{i}")))
            .await
            .unwrap();
    }
    // What a replica that died mid-request leaves: its claim (lapsing in 3 s) and the
    // request's 1,000 wei reservation. The window now holds 10,000 wei: full.
    let bucket = r.pg.psql("SELECT bucket FROM signerd_spend LIMIT 1");
    r.pg.psql(&format!(
        "INSERT INTO signerd_claims VALUES ('app', 'orphan', 'replica-9.dead/signerd', 1, \
         now() + interval '3 seconds'); \
         INSERT INTO signerd_spend VALUES ('app', 'orphan', '{bucket}', \
         extract(epoch from now())::bigint, 1000)"
    ));
    let st = refused(
        "a new request",
        c.sign_evm_transaction(eip1559("new")).await,
    );
    assert_status("a new request", &st, Code::PermissionDenied, "daily-eth");
    // The retry waits for the claim to lapse, then completes the request within its own
    // reservation.
    let resp = c.sign_evm_transaction(eip1559("orphan")).await.unwrap();
    assert!(!resp.into_inner().raw_transaction.is_empty());
    assert_eq!(
        r.pg.psql("SELECT count(*), sum(amount) FROM signerd_spend WHERE request_id = 'orphan'"),
        "1|1000"
    );
    let (status, log) = d.stop_logged();
    assert!(status.success());
    assert!(
        log.contains("taking over a request") && log.contains("replica-9.dead/signerd"),
        "{log}"
    );
}

/// TLS to the database: the server's certificate is checked against `ca_file` (a server whose
/// certificate another authority issued is refused at start), and a replica signs over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_checked_tls() {
    let r = Replicas::new_tls("replicas-tls", &limited_to_ten());
    let d = r.start(0);
    let mut c = r.env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("over-tls")).await.unwrap();
    assert!(d.stop().success());
    assert_eq!(
        r.pg.psql("SELECT count(*) FROM signerd_requests WHERE request_id = 'over-tls'"),
        "1"
    );
    // The same database, checked against another authority (the clients' CA): refused.
    let config = r.config(0);
    let other_ca = r.env.dir.join("pki").join("ca.pem");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("ca_file = {:?}", r.pg.ca_file().display().to_string()),
        &format!("ca_file = {:?}", other_ca.display().to_string()),
    );
    assert!(text.contains(&other_ca.display().to_string()), "{text}");
    write_file(&config, text.as_bytes(), 0o600);
    let mut cmd = Command::new(SIGNERD);
    cmd.arg("run").arg("--config").arg(&config);
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("PostgreSQL") && out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
}

/// Idempotency retention on the shared database: an answer older than the retention is
/// pruned (by any replica), and a retry of its request_id on any replica is refused with
/// FAILED_PRECONDITION, never signed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_holds_on_the_shared_database() {
    let mut r = Replicas::new("replicas-retention", &limited_to_ten());
    r.state = "idempotency_retention = \"2s\"\nprune_interval = \"100ms\"\n".to_owned();
    let daemons: Vec<Daemon> = (0..2).map(|i| r.start(i)).collect();
    let mut c0 = r.env.client(&daemons[0], "app").await;
    let mut c1 = r.env.client(&daemons[1], "app").await;
    let first = c0
        .sign_evm_transaction(eip1559("kept-then-expired"))
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        match c1.sign_evm_transaction(eip1559("kept-then-expired")).await {
            Ok(resp) => {
                assert_eq!(resp.into_inner(), first, "a retry got another answer");
                assert!(
                    Instant::now() < deadline,
                    "still replayed 15 s after a retention of 2 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(st) => break st,
        }
    };
    assert_status(
        "retry after retention",
        &st,
        Code::FailedPrecondition,
        "use a new request_id",
    );
    let st = refused(
        "retry on the other replica",
        c0.sign_evm_transaction(eip1559("kept-then-expired")).await,
    );
    assert_status(
        "retry on the other replica",
        &st,
        Code::FailedPrecondition,
        "not signed again",
    );
    for d in daemons {
        assert!(d.stop().success());
    }
    assert_eq!(r.signed_results(2, Some("kept-then-expired")), 1);
    assert_eq!(
        r.pg.psql("SELECT count(*) FROM signerd_expired WHERE request_id = 'kept-then-expired'"),
        "1"
    );
    // A replica restarted on its log does not bring the answer back.
    let d = r.start(0);
    let mut c = r.env.client(&d, "app").await;
    let st = refused(
        "after a restart",
        c.sign_evm_transaction(eip1559("kept-then-expired")).await,
    );
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(d.stop().success());
}

/// A single instance moved from the embedded store to the database (docs/operations.md,
/// "Move from the embedded store"): its answers and the spend of its limits carry over, to
/// every replica of the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_moved_from_sled_keeps_its_answers_and_limits() {
    let r = Replicas::new("replicas-move", &limited_to_ten());
    let mut cmd = Command::new(SIGNERD);
    cmd.arg("run").arg("--config").arg(r.config_on(0, false));
    let d = Daemon::spawn(cmd).unwrap();
    let mut c = r.env.client(&d, "app").await;
    let mut first = Vec::new();
    for i in 0..7 {
        let resp = c
            .sign_evm_transaction(eip1559(&format!("m-{i}")))
            .await
            .unwrap();
        first.push(resp.into_inner());
    }
    assert!(d.stop().success());

    // The same instance (its log and origin) on the database, and a second replica.
    let d0 = r.start(0);
    let d1 = r.start(1);
    let mut c0 = r.env.client(&d0, "app").await;
    let mut c1 = r.env.client(&d1, "app").await;
    // Answers carried over, on either replica.
    let again = c1
        .sign_evm_transaction(eip1559("m-3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first[3]);
    // 7,000 of 10,000 wei were spent before the move: three more fit, the next does not, on
    // whichever replica.
    for i in 0..3 {
        c0.sign_evm_transaction(eip1559(&format!("after-{i}")))
            .await
            .unwrap();
    }
    let st = refused(
        "over the limit",
        c1.sign_evm_transaction(eip1559("after-3")).await,
    );
    assert_status("over the limit", &st, Code::PermissionDenied, "daily-eth");
    assert!(d0.stop().success());
    assert!(d1.stop().success());
    assert_eq!(
        r.pg.psql("SELECT count(DISTINCT request_id) FROM signerd_spend"),
        "10"
    );
}

/// A request a replica left `signing` at quorum (it stopped while signing, and is not
/// restarted) is settled by another replica a minute later: failed, its reservation released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_signing_is_settled_by_another_replica() {
    let r = Replicas::new("replicas-stuck", &crate::approvals::policy(1, "1h", 10_000));
    let d0 = r.start(0);
    let mut app = r.env.client(&d0, "app").await;
    let p = pending(&mut app, "stuck", 6000).await;
    assert_eq!(
        r.pg.psql("SELECT count(*) FROM signerd_spend WHERE request_id = 'stuck'"),
        "1"
    );
    // What a replica that died right after quorum leaves: the record `signing` since two
    // minutes, and nobody's claim.
    r.pg.psql(
        "UPDATE signerd_pending SET record = jsonb_set(jsonb_set(record::jsonb, '{status}', \
         '\"signing\"'), '{signing_since}', to_jsonb(extract(epoch from now())::bigint - 120))::text \
         WHERE request_id = 'stuck'",
    );
    let d1 = r.start(1);
    let mut app1 = r.env.client(&d1, "app").await;
    let state = final_state(&mut app1, "stuck").await;
    assert_eq!(state.status(), SignStatus::Failed, "{state:?}");
    assert_eq!(
        r.pg.psql("SELECT count(*) FROM signerd_spend WHERE request_id = 'stuck'"),
        "0"
    );
    // It takes no votes and is never signed.
    let mut bob = approver(&r.env, &d1, "bob").await;
    assert!(bob.approve(approval("bob", "app", &p)).await.is_err());
    assert!(d0.stop().success());
    assert!(d1.stop().success());
    assert_eq!(r.signed_results(2, Some("stuck")), 0);
}

/// A replica that restarts from a snapshot of its own log leaves the database's spend as it
/// is: the signed spend before the snapshot is neither added again nor lost, and the limit
/// still allows exactly what is left of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarting_from_a_snapshot_keeps_the_shared_spend() {
    let r = Replicas::new("replicas-snapshot", &limited_to_ten());
    // Segments seal every 16 KiB (the smallest allowed), so snapshots follow quickly.
    let base = std::fs::read_to_string(r.env.config_path()).unwrap();
    let small = base.replace(
        "[audit]\ndir = \"audit\"\n",
        "[audit]\ndir = \"audit\"\nmax_segment_bytes = 16384\n",
    );
    assert_ne!(small, base);
    write_file(&r.env.config_path(), small.as_bytes(), 0o600);
    let d = r.start(0);
    let mut c = r.env.client(&d, "app").await;
    for i in 0..7 {
        c.sign_evm_transaction(eip1559(&format!("s-{i}")))
            .await
            .unwrap();
    }
    let audit = wait_audit_in(&r.audit_dir(0), |a| !a.of_type("audit.snapshot").is_empty());
    let snapshot = audit.of_type("audit.snapshot");
    assert!(!snapshot.is_empty(), "no snapshot was recorded");
    assert!(d.stop().success());

    let d = r.start(0);
    let mut c = r.env.client(&d, "app").await;
    // 7,000 of 10,000 wei are spent: three more fit, the next does not.
    for i in 0..3 {
        c.sign_evm_transaction(eip1559(&format!("after-{i}")))
            .await
            .unwrap();
    }
    let st = refused(
        "over the limit",
        c.sign_evm_transaction(eip1559("after-3")).await,
    );
    assert_status("over the limit", &st, Code::PermissionDenied, "daily-eth");
    let (status, stderr) = d.stop_logged();
    assert!(status.success());
    assert!(
        stderr.contains("start-up continues from a snapshot the audit log vouches for"),
        "{stderr}"
    );
    assert_eq!(
        r.pg.psql("SELECT count(*) FROM signerd_spend"),
        "10",
        "one reservation per signed request, none added twice"
    );
}
