//! Fail closed on the audit log: if it cannot be opened the daemon does not start; if it
//! cannot be written (full disk, deleted segment) signing stops with UNAVAILABLE, health says
//! NOT_SERVING, and every signature that was returned has its record in the log. The same for
//! the state store: when it cannot write, signing stops before anything more is signed, and the
//! answers it could not keep come back from the audit log after a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
use signerd_proto::v1;
use signerd_proto::v1::signer_client::SignerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_audit_dir_stops_startup() {
    let env = TestEnv::new("audit-file");
    // The configured audit directory is a regular file.
    write_file(&env.audit_dir(), b"not a directory\n", 0o600);
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "signerd started with an unusable audit dir: {out:?}"
    );
    assert!(
        !out.stdout.contains("listening"),
        "signerd listened: {out:?}"
    );
    let dir = env.audit_dir().display().to_string();
    assert!(
        out.stderr.contains("audit") && out.stderr.contains(&dir),
        "the error does not name the audit log {dir}: {:?}",
        out.stderr
    );
}

/// Signing calls of every kind after the log failed: all UNAVAILABLE, nothing signed, and each
/// says why, as the first refusal (`first`) did.
async fn assert_signing_stopped(c: &mut SignerClient<Channel>, replay_id: &str, first: &str) {
    assert!(
        first.starts_with("audit log unavailable: ")
            && first.len() > "audit log unavailable: ".len() + 10,
        "the first refusal does not say why: {first:?}"
    );
    let calls = [
        (
            "new transaction",
            c.sign_evm_transaction(eip1559("after-failure-tx"))
                .await
                .map(|_| ()),
        ),
        (
            "replayed transaction",
            c.sign_evm_transaction(eip1559(replay_id)).await.map(|_| ()),
        ),
        (
            "message",
            c.sign_evm_message(v1::SignEvmMessageRequest {
                dry_run: false,
                request_id: "after-failure-msg".into(),
                key_id: HOT.into(),
                message: b"hello".to_vec(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "digest",
            c.sign_digest(v1::SignDigestRequest {
                dry_run: false,
                request_id: "after-failure-digest".into(),
                key_id: ED.into(),
                digest: vec![1; 32],
            })
            .await
            .map(|_| ()),
        ),
    ];
    for (what, r) in calls {
        match r {
            Ok(()) => panic!("{what}: signed after the audit log failed"),
            Err(st) => {
                assert_eq!(st.code(), Code::Unavailable, "{what}: {st:?}");
                assert_eq!(st.message(), first, "{what}: every refusal says why");
            }
        }
    }
}

/// Polls the health service until it reports NOT_SERVING (bounded).
async fn assert_not_serving(channel: Channel) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let signer = health(channel.clone(), SIGNER_SERVICE).await;
        let all = health(channel.clone(), "").await;
        if matches!(signer, Ok(NOT_SERVING)) && matches!(all, Ok(NOT_SERVING)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health still {signer:?} (signer) / {all:?} (server) after the audit log failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_audit_disk_stops_signing() {
    let env = TestEnv::new("audit-full");
    let audit_dir = env.audit_dir();
    std::fs::create_dir_all(&audit_dir).unwrap();
    // A private mount namespace with a 64 KiB tmpfs over the audit directory. Neither unshare
    // nor sh forks, so the child's pid is the daemon's.
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@""#)
        .arg(&audit_dir)
        .arg(SIGNERD)
        .arg("run")
        .arg("--config")
        .arg(env.config_path());
    let mut d = Daemon::spawn(cmd).unwrap_or_else(|e| {
        panic!(
            "cannot run signerd over a 64 KiB tmpfs in a private mount namespace \
             (needs `unshare --user --map-root-user --mount` and `mount -t tmpfs`; CI runs as root \
             where this works): {e}"
        )
    });
    // The tmpfs is only visible inside the daemon's namespace.
    let seen: PathBuf = Path::new("/proc")
        .join(d.pid().to_string())
        .join("root")
        .join(audit_dir.strip_prefix("/").unwrap());
    assert!(
        Audit::read(&audit_dir).lines.is_empty(),
        "the audit log is not on the private tmpfs"
    );

    let mut c = env.client(&d, "app").await;
    let mut signed = Vec::new();
    let mut failure = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..5000 {
        assert!(
            Instant::now() < deadline,
            "the 64 KiB audit log never filled up"
        );
        let id = format!("fill-{i}");
        match c.sign_evm_transaction(eip1559(&id)).await {
            Ok(resp) => signed.push((id, resp.into_inner().receipt)),
            Err(st) => {
                failure = Some(st);
                break;
            }
        }
    }
    let st = failure.expect("signing never failed although the audit disk is full");
    assert_eq!(st.code(), Code::Unavailable, "first failure: {st:?}");
    assert!(
        !signed.is_empty(),
        "nothing was signed before the disk filled up"
    );

    assert_signing_stopped(&mut c, &signed[0].0, st.message()).await;
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    assert_not_serving(channel).await;
    assert!(d.is_running(), "signerd exited instead of refusing to sign");

    // Every signature that left the daemon has its record in the log.
    let audit = Audit::read(&seen);
    assert!(
        !audit.lines.is_empty(),
        "cannot read the audit log at {}",
        seen.display()
    );
    for (id, receipt) in &signed {
        check_receipt(&audit, receipt.as_ref(), id);
    }
    assert!(
        Audit::read(&audit_dir).lines.is_empty(),
        "the audit log was written outside the private tmpfs"
    );
    for id in [
        "after-failure-tx",
        "after-failure-msg",
        "after-failure-digest",
    ] {
        audit.assert_not_signed(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_state_disk_stops_signing_and_keeps_every_answer() {
    let env = TestEnv::new("state-full");
    let state_dir = env.dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    // A 1 MiB tmpfs over the state directory, in a private mount namespace.
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@""#)
        .arg(&state_dir)
        .arg(SIGNERD)
        .arg("run")
        .arg("--config")
        .arg(env.config_path());
    let d = Daemon::spawn(cmd).unwrap_or_else(|e| {
        panic!(
            "cannot run signerd over a 1 MiB tmpfs in a private mount namespace (needs \
             `unshare --user --map-root-user --mount`; CI runs as root where this works): {e}"
        )
    });
    let mut c = env.client(&d, "app").await;
    let mut answers = Vec::new();
    let mut failed = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..20_000 {
        assert!(
            Instant::now() < deadline,
            "the 1 MiB state store never filled up"
        );
        let id = format!("fill-{i}");
        match c.sign_evm_transaction(eip1559(&id)).await {
            Ok(resp) => answers.push((id, resp.into_inner())),
            Err(st) => {
                failed = Some((id, st));
                break;
            }
        }
    }
    let (failed_id, st) = failed.expect("signing never failed although the state disk is full");
    // Only the state store fails here: the audit log is on the real disk.
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(st.message().contains("state store"), "{st:?}");
    assert!(
        answers.len() > 10,
        "only {} answers before the disk filled",
        answers.len()
    );

    // From now on nothing is signed: refused before signing, with nothing in the audit log.
    let st = refused(
        "after the state store failed",
        c.sign_evm_transaction(eip1559("after-full")).await,
    );
    assert_status(
        "after the state store failed",
        &st,
        Code::Unavailable,
        "state store unavailable; nothing was signed",
    );
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    assert_not_serving(channel).await;
    let audit = env.audit();
    audit.assert_not_signed("after-full");
    // The request that met the failure was either refused before signing (its read failed) or
    // signed and recorded (its answer's write failed): never anything in between.
    let first = audit.results(&failed_id);
    assert!(
        first.is_empty() || first == ["signed"],
        "{failed_id}: {first:?}"
    );
    drop(c);
    let _ = d.stop();

    // Restarted on a working (empty) state store: the audit log gives every answer back.
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let again = c
        .sign_evm_transaction(eip1559(&failed_id))
        .await
        .unwrap_or_else(|e| panic!("retry of {failed_id}: {e:?}"))
        .into_inner();
    for (id, first) in answers.iter().take(3) {
        let replay = c
            .sign_evm_transaction(eip1559(id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(replay.encode_to_vec(), first.encode_to_vec(), "{id}");
    }
    let audit = env.audit();
    assert_eq!(
        audit.results(&failed_id),
        ["signed"],
        "{failed_id} must be signed exactly once (a recorded signature is answered from the log)"
    );
    check_receipt(&audit, again.receipt.as_ref(), &failed_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_audit_segment_stops_signing() {
    let env = TestEnv::new("audit-deleted");
    let mut d = env.start();
    let mut c = env.client(&d, "app").await;
    let resp = c
        .sign_evm_transaction(eip1559("before-delete"))
        .await
        .unwrap()
        .into_inner();
    check_receipt(&env.audit(), resp.receipt.as_ref(), "before-delete");

    let segment = env.audit_dir().join("segment-00000001.jsonl");
    std::fs::remove_file(&segment).unwrap_or_else(|e| panic!("{}: {e}", segment.display()));

    // A record written to an unlinked file is lost: the next signature must not be returned.
    let st = refused(
        "first call after deletion",
        c.sign_evm_transaction(eip1559("after-delete")).await,
    );
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_signing_stopped(&mut c, "before-delete", st.message()).await;
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    assert_not_serving(channel).await;
    assert!(d.is_running(), "signerd exited instead of refusing to sign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_cannot_dump_core() {
    let env = TestEnv::new("hardening");
    let d = env.start();
    // RLIMIT_CORE is 0, soft and hard, so no core file can ever hold a key.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("{limits}"));
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    // Non-dumpable: read back with prctl by the daemon itself and logged.
    assert!(
        d.stderr().contains("process hardened")
            && d.stderr().contains("core_limit=0")
            && d.stderr().contains("dumpable=false"),
        "{}",
        d.stderr()
    );
}
