//! Witnesses: real `signerctl witness run` processes on ports of their own cosign signerd's
//! checkpoints (C2SP tlog-witness, tlog-cosignature); they refuse a rolled-back log and a fork
//! of it; a witness that is down never stops signing (unless `audit.witness_max_lag` says so)
//! and catches up when it is back; `audit verify --witness ... --min-witnesses K` counts
//! cosignatures and fails when a cosigned checkpoint is not in the log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::audit_support::{configure_audit, copy_tree};
use crate::metrics::{metrics_addr, scrape};
use crate::util::*;

/// A witness process and what it needs to restart on the same port.
struct TestWitness {
    process: Option<Daemon>,
    key_file: PathBuf,
    state_dir: PathBuf,
    logs: Vec<String>,
    addr: String,
    vkey: String,
}

impl TestWitness {
    /// Creates a key for witness `name` under `dir` and starts it for the log `log_vkey`.
    fn start(dir: &Path, name: &str, log_vkey: &str) -> TestWitness {
        let key_file = dir.join(format!("{name}.key"));
        let mut keygen = Command::new(SIGNERCTL);
        keygen
            .args(["witness", "keygen", "--name"])
            .arg(format!("witness.test/{name}"))
            .arg("--key-file")
            .arg(&key_file);
        let out = run_to_exit(keygen, Duration::from_secs(30));
        assert!(out.status.success(), "{out:?}");
        let vkey = out.stdout.trim().to_owned();
        let mut w = TestWitness {
            process: None,
            key_file,
            state_dir: dir.join(format!("{name}-state")),
            logs: vec![log_vkey.to_owned()],
            addr: "127.0.0.1:0".to_owned(),
            vkey,
        };
        w.restart();
        w
    }

    /// (Re)starts the process on the same address.
    fn restart(&mut self) {
        let mut cmd = Command::new(SIGNERCTL);
        cmd.args(["witness", "run", "--listen", &self.addr])
            .arg("--key-file")
            .arg(&self.key_file)
            .arg("--state-dir")
            .arg(&self.state_dir);
        for l in &self.logs {
            cmd.args(["--log", l]);
        }
        let d = Daemon::spawn_until(cmd, "witness listening on ")
            .unwrap_or_else(|e| panic!("witness did not start: {e}"));
        self.addr = d.addr.to_string();
        self.process = Some(d);
    }

    fn stop(&mut self) {
        let d = self.process.take().expect("running");
        assert!(d.stop().success());
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stderr(&self) -> String {
        self.process
            .as_ref()
            .map(Daemon::stderr)
            .unwrap_or_default()
    }

    /// The size the witness's state file holds for the log.
    fn stored_size(&self) -> Option<u64> {
        let entry = std::fs::read_dir(&self.state_dir)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("log-"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
        v["size"].as_u64()
    }
}

/// Creates the log's audit key and returns its verifier key.
fn audit_vkey(env: &TestEnv) -> String {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(["audit", "keygen", "--config"])
        .arg(env.config_path());
    let out = run_to_exit(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    out.stdout.trim().to_owned()
}

/// `[[audit.witnesses]]` tables for `witnesses`, after `settings`.
fn configure(env: &TestEnv, settings: &str, witnesses: &[(&str, &TestWitness)]) {
    let mut text = format!("{settings}\n");
    for (name, w) in witnesses {
        text.push_str(&format!(
            "\n[[audit.witnesses]]\nname = \"{name}\"\nurl = \"{}\"\nkey = \"{}\"\n",
            w.url(),
            w.vkey
        ));
    }
    configure_audit(env, &text);
}

/// The checkpoint note kept for witness `name`, and its tree size.
fn cosigned(env: &TestEnv, name: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(env.audit_dir().join("cosignatures").join(name)).ok()?;
    let size = text.lines().nth(1)?.parse().ok()?;
    Some((text, size))
}

/// The tree size of the `checkpoint` file.
fn checkpoint_size(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("checkpoint"))
        .ok()
        .and_then(|t| t.lines().nth(1).and_then(|l| l.parse().ok()))
        .unwrap_or(0)
}

/// Waits (bounded) until `pred` holds.
fn wait_for(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the cosignature of witness `vkey` in `note` with ring, independently of signerd:
/// the key id is SHA-256(name || "\n" || 0x04 || key)[:4], the signature covers
/// `cosignature/v1\ntime <t>\n` and the checkpoint text.
fn check_cosignature_independently(note: &str, vkey: &str) -> u64 {
    let mut parts = vkey.splitn(3, '+');
    let (name, id, key) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let raw = B64.decode(key).unwrap();
    assert_eq!(raw[0], 0x04, "{vkey}");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n\x04");
    ctx.update(&raw[1..]);
    assert_eq!(hex::encode(&ctx.finish().as_ref()[..4]), id);
    let (text, sigs) = note.split_once("\n\n").unwrap();
    let prefix = format!("\u{2014} {name} ");
    let line = sigs
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no cosignature by {name} in {note}"));
    let sig = B64.decode(&line[prefix.len()..]).unwrap();
    assert_eq!(sig.len(), 4 + 8 + 64);
    assert_eq!(hex::encode(&sig[..4]), id);
    let ts = u64::from_be_bytes(sig[4..12].try_into().unwrap());
    let message = format!("cosignature/v1\ntime {ts}\n{text}\n");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &raw[1..])
        .verify(message.as_bytes(), &sig[12..])
        .unwrap_or_else(|_| panic!("the cosignature does not verify: {note}"));
    ts
}

/// `POST /add-checkpoint` over a plain TCP connection: status, content type and body.
fn post_raw(addr: &str, body: &str) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /add-checkpoint HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ct = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-type: ")
            .map(str::to_owned)
    });
    (status, ct, body.to_owned())
}

fn verify(dir: &Path, vkey: &str, extra: &[&str]) -> Exited {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(["audit", "verify"])
        .arg(dir)
        .args(["--pubkey", vkey])
        .args(extra);
    run_to_exit(cmd, Duration::from_secs(60))
}

/// The value of a sample `series` (name and labels, as the exporter prints them), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn sign(env: &TestEnv, d: &Daemon, id: &str) -> Result<(), tonic::Status> {
    let mut c = env.client(d, "app").await;
    c.sign_evm_transaction(eip1559(id)).await.map(|_| ())
}

/// Waits (bounded) until the witnesses' health detail (`signerd.audit.Witnesses`) is `want`.
async fn wait_witness_health(channel: &tonic::transport::Channel, want: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = health(channel.clone(), signerd::server::WITNESS_HEALTH).await;
        if got.as_ref().is_ok_and(|g| *g == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "witness health {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FAST: &str = "checkpoint_every_records = 4\ncheckpoint_every_seconds = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_cosign_checkpoints_and_verify_counts_them() {
    let env = TestEnv::new("witness-cosign");
    let log = audit_vkey(&env);
    let w1 = TestWitness::start(&env.dir, "w1", &log);
    let w2 = TestWitness::start(&env.dir, "w2", &log);
    // A third key that no running witness holds.
    let w3 = TestWitness::start(&env.dir, "w3", &log);
    configure(&env, FAST, &[("w1", &w1), ("w2", &w2)]);
    let d = env.start();
    for i in 0..3 {
        sign(&env, &d, &format!("cosign-{i}")).await.unwrap();
    }
    wait_for(
        "both witnesses to cosign the latest checkpoint",
        Duration::from_secs(30),
        || {
            let latest = checkpoint_size(&env.audit_dir());
            latest > 0
                && ["w1", "w2"]
                    .iter()
                    .all(|n| cosigned(&env, n).is_some_and(|(_, s)| s == latest))
        },
    );
    assert!(d.stop().success());
    let (note, size) = cosigned(&env, "w1").unwrap();
    let ts = check_cosignature_independently(&note, &w1.vkey);
    assert!(ts > 1_700_000_000, "{ts}");
    check_cosignature_independently(&cosigned(&env, "w2").unwrap().0, &w2.vkey);
    assert!(w1.stderr().contains("cosigned"), "{}", w1.stderr());
    assert_eq!(w1.stored_size(), Some(size));

    let dir = env.audit_dir();
    let both = ["--witness", &w1.vkey, "--witness", &w2.vkey];
    let out = verify(&dir, &log, &[&both[..], &["--min-witnesses", "2"]].concat());
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("witnessed:"), "{}", out.stdout);
    // The signerd-auditor binary takes the same options and agrees.
    let auditor = Path::new(SIGNERCTL).with_file_name("signerd-auditor");
    if auditor.exists() {
        let mut cmd = Command::new(&auditor);
        cmd.arg("verify")
            .arg(&dir)
            .args(["--pubkey", &log])
            .args(both)
            .args(["--min-witnesses", "2"]);
        let out = run_to_exit(cmd, Duration::from_secs(60));
        assert!(out.status.success(), "{out:?}");
    }
    // Too few: a witness that never saw the log does not count.
    let three = [&both[..], &["--witness", &w3.vkey, "--min-witnesses", "3"]].concat();
    let out = verify(&dir, &log, &three);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("2 of the 3 witnesses"),
        "{}",
        out.stderr
    );
    let out = verify(&dir, &log, &["--witness", &w3.vkey]);
    assert!(!out.status.success(), "{out:?}");

    // A cosigned checkpoint larger than the log: the log was cut back to an older copy.
    let older = env.dir.join("older-audit");
    copy_tree(&dir, &older);
    let d = env.start();
    for i in 0..3 {
        sign(&env, &d, &format!("more-{i}")).await.unwrap();
    }
    // Larger than the older copy holds: the copy's own last checkpoint, which the witness may
    // cosign after the restart, is not enough.
    let older_records: u64 = std::fs::read_dir(&older)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count() as u64)
        .sum();
    assert!(older_records >= size);
    wait_for(
        "w1 to cosign a checkpoint larger than the older copy",
        Duration::from_secs(30),
        || cosigned(&env, "w1").is_some_and(|(_, s)| s > older_records),
    );
    assert!(d.stop().success());
    let newer = std::fs::read(dir.join("cosignatures/w1")).unwrap();
    std::fs::write(older.join("cosignatures/w1"), newer).unwrap();
    let out = verify(&older, &log, &["--witness", &w1.vkey]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("witness") && out.stderr.contains("covers"),
        "{}",
        out.stderr
    );
    // A forged cosignature line (one signature byte changed) is caught.
    let (note, _) = cosigned(&env, "w2").unwrap();
    let prefix = "\u{2014} witness.test/w2 ";
    let line = note.lines().find(|l| l.starts_with(prefix)).unwrap();
    let mut raw = B64.decode(&line[prefix.len()..]).unwrap();
    raw[40] ^= 1;
    let forged = note.replace(line, &format!("{prefix}{}", B64.encode(&raw)));
    let copy = env.dir.join("forged-audit");
    copy_tree(&dir, &copy);
    std::fs::write(copy.join("cosignatures/w2"), forged).unwrap();
    let out = verify(&copy, &log, &["--witness", &w2.vkey]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("forged or damaged"), "{}", out.stderr);
}

/// A log restored from an older copy (with the state store rebound to it) is refused by the
/// witness, and so is that copy once it grows past what the witness cosigned: a fork of the
/// same origin and key. A forged older checkpoint posted straight to the witness is refused
/// too. The witness keeps what it cosigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_refuses_a_rolled_back_log_and_a_fork() {
    let env = TestEnv::new("witness-fork");
    let log = audit_vkey(&env);
    let w = TestWitness::start(&env.dir, "w1", &log);
    configure(&env, FAST, &[("w1", &w)]);
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);

    let d = env.start();
    sign(&env, &d, "first").await.unwrap();
    wait_for("a first cosignature", Duration::from_secs(30), || {
        cosigned(&env, "w1").is_some_and(|(_, s)| s == checkpoint_size(&env.audit_dir()))
    });
    assert!(d.stop().success());
    let older = env.dir.join("older-audit");
    copy_tree(&env.audit_dir(), &older);
    let old_note = std::fs::read_to_string(older.join("checkpoint")).unwrap();

    let d = env.start();
    for i in 0..4 {
        sign(&env, &d, &format!("second-{i}")).await.unwrap();
    }
    wait_for(
        "the newer checkpoint cosigned",
        Duration::from_secs(30),
        || cosigned(&env, "w1").is_some_and(|(_, s)| s == checkpoint_size(&env.audit_dir())),
    );
    assert!(d.stop().success());
    let held = w.stored_size().unwrap();

    // A forged older checkpoint, validly signed by the log's key, posted to the witness.
    let post = |body: String| post_raw(&w.addr, &body);
    let (status, ct, body) = post(format!("old 0\n\n{old_note}"));
    assert_eq!((status, body.as_str()), (409, format!("{held}\n").as_str()));
    assert_eq!(ct.as_deref(), Some("text/x.tlog.size"));
    let (status, _, _) = post(format!("old {held}\n\n{old_note}"));
    assert_eq!(status, 400);
    // Not signed by the log's key: 403; another origin: 404.
    let unsigned = old_note.replace(
        old_note.lines().last().unwrap(),
        &format!(
            "\u{2014} {} {}",
            log.split('+').next().unwrap(),
            B64.encode([0u8; 68])
        ),
    );
    assert_eq!(post(format!("old {held}\n\n{unsigned}")).0, 403);
    let elsewhere = format!(
        "elsewhere\n1\n{}\n\n\u{2014} elsewhere AAAAAAAAAAAA\n",
        B64.encode([0u8; 32])
    );
    assert_eq!(post(format!("old 0\n\n{elsewhere}")).0, 404);

    // The log rolled back to the older copy: the store must be rebound to start on it.
    let newer = env.dir.join("newer-audit");
    std::fs::rename(env.audit_dir(), &newer).unwrap();
    copy_tree(&older, &env.audit_dir());
    let mut cmd = env.run_command();
    cmd.arg("--rebind-state-to-log");
    let d = Daemon::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    let metrics = metrics_addr(&d);
    wait_for(
        "signerd to report the rollback",
        Duration::from_secs(30),
        || d.stderr().contains("the log was cut back or replaced"),
    );
    let body = scrape(&metrics);
    assert_eq!(
        sample(&body, "signerd_audit_witness_up{witness=\"w1\"}"),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(&body, "signerd_audit_witness_lag_records{witness=\"w1\"}").unwrap_or(0.0) > 0.0,
        "{body}"
    );
    // Signing goes on meanwhile; the copy grows past what the witness cosigned: a fork.
    let mut i = 0;
    while checkpoint_size(&env.audit_dir()) <= held + 4 {
        sign(&env, &d, &format!("fork-{i}")).await.unwrap();
        i += 1;
        assert!(i < 100, "the log does not grow");
    }
    wait_for(
        "signerd to report the fork",
        Duration::from_secs(30),
        || {
            d.stderr()
                .contains("422: the witness refused the consistency proof")
        },
    );
    assert!(d.stop().success());
    assert_eq!(
        w.stored_size(),
        Some(held),
        "the witness moved off its tree"
    );
    let stderr = w.stderr();
    assert!(
        stderr.contains("the old size is not the size last cosigned: 409")
            && stderr
                .contains("the consistency proof does not verify (a fork, or a bad proof): 422"),
        "{stderr}"
    );
    // The rolled-back log kept no cosignature beyond its own first run.
    let (_, kept) = cosigned(&env, "w1").unwrap();
    assert!(kept < held, "{kept} {held}");
    let evidence = std::fs::read_dir(w.state_dir.join("evidence"))
        .unwrap()
        .count();
    assert!(evidence >= 2, "{evidence}");
}

/// A witness that is down: signing goes on, the metrics say so, and when it is back it
/// cosigns the latest checkpoint (with a consistency proof from where it stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_outage_never_stops_signing_and_it_catches_up() {
    let env = TestEnv::new("witness-outage");
    let log = audit_vkey(&env);
    let mut w = TestWitness::start(&env.dir, "w1", &log);
    configure(&env, FAST, &[("w1", &w)]);
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);
    let d = env.start();
    let metrics = metrics_addr(&d);
    sign(&env, &d, "before").await.unwrap();
    wait_for("a first cosignature", Duration::from_secs(30), || {
        cosigned(&env, "w1").is_some_and(|(_, s)| s == checkpoint_size(&env.audit_dir()))
    });
    let (_, before) = cosigned(&env, "w1").unwrap();
    w.stop();
    for i in 0..10 {
        sign(&env, &d, &format!("outage-{i}")).await.unwrap();
    }
    wait_for("the lag in the metrics", Duration::from_secs(30), || {
        let body = scrape(&metrics);
        sample(&body, "signerd_audit_witness_up{witness=\"w1\"}") == Some(0.0)
            && sample(&body, "signerd_audit_witness_lag_records{witness=\"w1\"}")
                .is_some_and(|l| l >= 20.0)
    });
    assert!(d.stderr().contains("unreachable"), "{}", d.stderr());
    assert_eq!(cosigned(&env, "w1").unwrap().1, before);
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    assert_eq!(
        health(channel.clone(), SIGNER_SERVICE).await.unwrap(),
        SERVING
    );
    // The health detail says a witness does not cosign; signing goes on.
    wait_witness_health(&channel, NOT_SERVING).await;
    assert_eq!(
        health(channel.clone(), SIGNER_SERVICE).await.unwrap(),
        SERVING
    );

    w.restart();
    wait_for("the witness to catch up", Duration::from_secs(40), || {
        let latest = checkpoint_size(&env.audit_dir());
        cosigned(&env, "w1").is_some_and(|(_, s)| s == latest && s > before)
    });
    wait_for("the lag back to 0", Duration::from_secs(10), || {
        let body = scrape(&metrics);
        sample(&body, "signerd_audit_witness_lag_records{witness=\"w1\"}") == Some(0.0)
            && sample(&body, "signerd_audit_witness_up{witness=\"w1\"}") == Some(1.0)
    });
    wait_witness_health(&channel, SERVING).await;
    assert!(d.stop().success());
    let out = verify(&env.audit_dir(), &log, &["--witness", &w.vkey]);
    assert!(out.status.success(), "{out:?}");
}

/// With `audit.witness_max_lag`, signing pauses (UNAVAILABLE, health NOT_SERVING) once a
/// witness that is down lags beyond it, and resumes when it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_witness_max_lag_signing_pauses_until_the_witness_catches_up() {
    let env = TestEnv::new("witness-pause");
    let log = audit_vkey(&env);
    let mut w = TestWitness::start(&env.dir, "w1", &log);
    configure(
        &env,
        &format!("{FAST}\nwitness_max_lag = 12"),
        &[("w1", &w)],
    );
    let d = env.start();
    sign(&env, &d, "before").await.unwrap();
    wait_for("a first cosignature", Duration::from_secs(30), || {
        cosigned(&env, "w1").is_some_and(|(_, s)| s == checkpoint_size(&env.audit_dir()))
    });
    w.stop();
    // Signing goes on until the lag passes 12 records, then pauses.
    let mut signed = 0;
    let refusal = loop {
        match sign(&env, &d, &format!("pause-{signed}")).await {
            Ok(()) => signed += 1,
            Err(s) => break s,
        }
        assert!(signed < 50, "signing never paused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(signed >= 1, "paused at once");
    assert_status(
        "paused by the witness lag",
        &refusal,
        tonic::Code::Unavailable,
        "witness `w1` has not cosigned",
    );
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    wait_for("health NOT_SERVING", Duration::from_secs(10), || {
        let c = channel.clone();
        let h = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(health(c, SIGNER_SERVICE))
        });
        h.ok() == Some(NOT_SERVING)
    });

    w.restart();
    wait_for("signing to resume", Duration::from_secs(40), || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(sign(&env, &d, "after"))
        })
        .is_ok()
    });
    wait_for("health SERVING", Duration::from_secs(10), || {
        let c = channel.clone();
        let h = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(health(c, SIGNER_SERVICE))
        });
        h.ok() == Some(SERVING)
    });
    assert!(d.stop().success());
}

/// The latest checkpoint note witness `w` cosigned for the log, from its own state (what an
/// auditor asks the witness's operators for).
fn witness_note(w: &TestWitness) -> String {
    let entry = std::fs::read_dir(&w.state_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("log-"))
        .expect("a log state");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
    v["note"].as_str().unwrap().to_owned()
}

/// A split view: whoever holds the host shows one history of the log to one witness and
/// another history (a copy grown apart from a common prefix) to a second witness. Each witness
/// alone sees a consistent log; an auditor who takes the checkpoint each witness cosigned finds
/// that no log holds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_shown_to_two_witnesses_is_caught_by_comparing_their_checkpoints() {
    let env = TestEnv::new("witness-split");
    let log = audit_vkey(&env);
    let w1 = TestWitness::start(&env.dir, "w1", &log);
    let w2 = TestWitness::start(&env.dir, "w2", &log);
    configure(&env, FAST, &[("w1", &w1)]);
    let d = env.start();
    sign(&env, &d, "common").await.unwrap();
    assert!(d.stop().success());
    // The common prefix, with the state store that belongs to it.
    let prefix_audit = env.dir.join("prefix-audit");
    let prefix_state = env.dir.join("prefix-state");
    copy_tree(&env.audit_dir(), &prefix_audit);
    copy_tree(&env.dir.join("state"), &prefix_state);

    // History A, shown to w1.
    let d = env.start();
    for i in 0..3 {
        sign(&env, &d, &format!("a-{i}")).await.unwrap();
    }
    wait_for("w1 to cosign history A", Duration::from_secs(30), || {
        cosigned(&env, "w1").is_some_and(|(_, s)| s == checkpoint_size(&env.audit_dir()))
    });
    assert!(d.stop().success());
    let history_a = env.dir.join("history-a");
    copy_tree(&env.audit_dir(), &history_a);

    // History B, grown from the same prefix, shown to w2 only.
    std::fs::remove_dir_all(env.audit_dir()).unwrap();
    std::fs::remove_dir_all(env.dir.join("state")).unwrap();
    copy_tree(&prefix_audit, &env.audit_dir());
    copy_tree(&prefix_state, &env.dir.join("state"));
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text
        .replace("name = \"w1\"", "name = \"w2\"")
        .replace(&w1.url(), &w2.url())
        .replace(&w1.vkey, &w2.vkey);
    write_file(&env.config_path(), text.as_bytes(), 0o600);
    let d = env.start();
    for i in 0..5 {
        sign(&env, &d, &format!("b-{i}")).await.unwrap();
    }
    wait_for("w2 to cosign history B", Duration::from_secs(30), || {
        cosigned(&env, "w2").is_some_and(|(_, s)| s == checkpoint_size(&env.audit_dir()))
    });
    assert!(d.stop().success());
    let history_b = env.audit_dir();

    // Each history verifies with the witness it was shown to.
    let a = verify(&history_a, &log, &["--witness", &w1.vkey]);
    assert!(a.status.success(), "{a:?}");
    let b = verify(&history_b, &log, &["--witness", &w2.vkey]);
    assert!(b.status.success(), "{b:?}");

    // The auditor takes what each witness cosigned: neither history holds the other's.
    let seen_by_1 = env.dir.join("w1.checkpoint");
    let seen_by_2 = env.dir.join("w2.checkpoint");
    std::fs::write(&seen_by_1, witness_note(&w1)).unwrap();
    std::fs::write(&seen_by_2, witness_note(&w2)).unwrap();
    for (dir, other) in [(&history_a, &seen_by_2), (&history_b, &seen_by_1)] {
        let out = verify(dir, &log, &["--checkpoint", other.to_str().unwrap()]);
        assert!(!out.status.success(), "{out:?}");
        assert!(
            out.stderr.contains("the log was rewritten or replaced")
                || out.stderr.contains("records at the end were removed"),
            "{}",
            out.stderr
        );
    }
    // And no consistency proof links the two checkpoints in either history.
    let out = Command::new(SIGNERCTL)
        .args(["audit", "consistency", "--dir"])
        .arg(&history_b)
        .arg(&seen_by_1)
        .arg(&seen_by_2)
        .args(["--pubkey", &log])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}
