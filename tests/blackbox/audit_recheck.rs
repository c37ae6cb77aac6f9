//! The policy archive and `signerctl audit recheck` against logs the real daemon wrote: every
//! installed policy is archived read-only under its hash; an honest log with limits,
//! approvals, denials, a reload and a restart rechecks clean; a decision edited by someone who
//! holds the audit key, with the chain, tree and checkpoints rebuilt so that `audit verify`
//! passes, is found; a missing or altered archived policy is an error.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use signerd_auditor::Record;
use signerd_auditor::events::AuditCheckpoint;
use signerd_auditor::merkle;
use signerd_auditor::note::Checkpoint;
use signerd_proto::v1::{self, SignStatus, admin_client::AdminClient};
use tonic::Code;

use crate::approvals::{approval, approver, final_state, pending, public, tx};
use crate::audit_support::*;
use crate::util::*;

/// Requesters sign with `hot`; 5,000 wei or more needs 2 of treasury; contract creation is
/// denied; at most `max` wei a day.
fn policy(serial: u32, max: u64) -> String {
    format!(
        r#"version = 1
serial = {serial}

[groups]
treasury = ["bob", "carol", "dave"]

[approvers]
bob = "{}"
carol = "{}"
dave = "{}"

[[rule]]
id = "requesters-hot"
effect = "allow"
roles = ["requester"]
keys = ["hot"]

[[rule]]
id = "large"
effect = "require_approval"
keys = ["hot"]
value_min = "5000 wei"
approvals = [{{ group = "treasury", min = 2 }}]
ttl = "1h"

[[rule]]
id = "no-contract-creation"
effect = "deny"
keys = ["hot"]
kinds = ["contract_creation"]

[[limit]]
id = "daily-eth"
asset = "native"
chain_ids = [1]
window = "24h"
max_amount = "{max} wei"
"#,
        public("bob"),
        public("carol"),
        public("dave"),
    )
}

fn recheck(dir: &Path, extra: &[&str]) -> Exited {
    let mut args = vec!["audit", "recheck", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ctl(&args)
}

fn deploy(id: &str) -> v1::SignEvmTransactionRequest {
    v1::SignEvmTransactionRequest {
        to: String::new(),
        value: String::new(),
        data: INIT_CODE.to_vec(),
        gas_limit: 100_000,
        ..eip1559(id)
    }
}

/// The position of the `sign.decision` of `req_id` in `lines`.
fn decision_of(lines: &[Vec<u8>], req_id: &str) -> usize {
    lines
        .iter()
        .position(|l| {
            let r = record(l);
            r["type"] == "sign.decision" && r["req_id"] == req_id
        })
        .unwrap_or_else(|| panic!("no sign.decision for {req_id}"))
}

/// Replaces the text between `from` (included) and `to` (excluded) in `line`.
fn splice(line: &mut Vec<u8>, from: &str, to: &str, with: &str) {
    let text = String::from_utf8(line.clone()).unwrap();
    let a = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} in {text}"));
    let b = a + text[a..]
        .find(to)
        .unwrap_or_else(|| panic!("{to} in {text}"));
    *line = format!("{}{with}{}", &text[..a], &text[b..]).into_bytes();
}

/// What a holder of the soft audit key can do: edit records of the log in `dir` with `edit`,
/// then rebuild the hash chain, every `audit.checkpoint` record (root and a note signed with
/// the audit key) and the `checkpoint` file, so that the log verifies again.
fn rewrite_and_resign(env: &TestEnv, dir: &Path, edit: &dyn Fn(&mut Vec<Vec<u8>>)) {
    let segs = segments(dir);
    assert_eq!(segs.len(), 1, "one segment expected");
    let mut lines = read_lines(&segs[0]);
    edit(&mut lines);
    let first_note = lines
        .iter()
        .map(|l| record(l))
        .find(|r| r["type"] == "audit.checkpoint")
        .unwrap()["note"]
        .as_str()
        .unwrap()
        .to_owned();
    let origin = first_note.lines().next().unwrap().to_owned();
    let pass = std::fs::read_to_string(env.dir.join("keystore.pass")).unwrap();
    let key = signerd::audit::key::SoftCheckpointKey::open(
        &env.dir.join("audit-key"),
        &origin,
        &secrecy::SecretString::from(pass.trim_end().to_owned()),
    )
    .unwrap();
    let mut leaves: Vec<[u8; 32]> = Vec::new();
    let mut prev = [0u8; 32];
    let mut last_note = None;
    for (i, line) in lines.iter_mut().enumerate() {
        let r = record(line);
        assert_eq!(r["seq"].as_u64(), Some(i as u64));
        if r["type"] == "audit.checkpoint" {
            let root = merkle::root(&leaves);
            let note = Checkpoint {
                origin: origin.clone(),
                size: i as u64,
                root,
            }
            .sign(&key)
            .unwrap();
            let body = Record::from_event(&AuditCheckpoint {
                size: i as u64,
                root: hex::encode(root),
                note: note.clone(),
            })
            .encode()
            .unwrap();
            *line = format!(
                r#"{{"v":1,"seq":{i},"ts":"{}","type":"audit.checkpoint"{},"prev":"{}"}}"#,
                r["ts"].as_str().unwrap(),
                String::from_utf8(body).unwrap(),
                hex::encode(prev)
            )
            .into_bytes();
            last_note = Some(note);
        } else {
            let keep = line.len() - 66;
            line.truncate(keep);
            line.extend_from_slice(format!("{}\"}}", hex::encode(prev)).as_bytes());
        }
        prev = merkle::leaf_hash(line);
        leaves.push(prev);
    }
    write_lines(&segs[0], &lines);
    std::fs::write(dir.join("checkpoint"), last_note.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recheck_finds_a_decision_edited_and_resigned_with_the_audit_key() {
    let env = TestEnv::with(
        "recheck",
        Opts {
            policy: policy(1, 10_000),
            ..Opts::default()
        },
    );
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    for id in ["s-1", "s-2"] {
        app.sign_evm_transaction(tx(id, 1000)).await.unwrap();
    }
    let st = refused("deploy", app.sign_evm_transaction(deploy("c-1")).await);
    assert_status(
        "deploy",
        &st,
        Code::PermissionDenied,
        "no-contract-creation",
    );
    // 6,000 wei waits for two of treasury, then is signed (8,000 used).
    let p = pending(&mut app, "big-1", 6000).await;
    let mut bob = approver(&env, &d, "bob").await;
    let mut carol = approver(&env, &d, "carol").await;
    bob.approve(approval("bob", "app", &p)).await.unwrap();
    carol.approve(approval("carol", "app", &p)).await.unwrap();
    assert_eq!(
        final_state(&mut app, "big-1").await.status(),
        SignStatus::Signed
    );
    // 8,000 + 3,000 > 10,000.
    let st = refused("over", app.sign_evm_transaction(tx("over-1", 3000)).await);
    assert_status("over", &st, Code::PermissionDenied, "daily-eth");

    // A reload raises the limit: the new policy is archived before it is recorded.
    env.write_policy(&policy(2, 18_000));
    let settings = env.settings(&d, "admin");
    let mut admin = AdminClient::new(signerd::client::channel(&settings).await.unwrap());
    let r = admin
        .reload_policy(v1::ReloadPolicyRequest { force: false })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed && r.serial == 2, "{r:?}");
    app.sign_evm_transaction(tx("s-3", 3000)).await.unwrap();
    drop((app, bob, carol, admin));
    assert!(d.stop().success());

    // A restart: spend is rebuilt from the log (11,000 used).
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    app.sign_evm_transaction(tx("s-4", 4000)).await.unwrap();
    let st = refused("over", app.sign_evm_transaction(tx("over-2", 4500)).await);
    assert_status("over", &st, Code::PermissionDenied, "daily-eth");
    drop(app);
    assert!(d.stop().success());

    // Both policies are archived, read-only, under their hashes.
    let good = env.audit_dir();
    let archive = good.join("policies");
    let audit = Audit::read(&good);
    let loads = audit.of_type("policy.load");
    assert_eq!(loads.len(), 3, "{loads:?}");
    for (serial, max) in [(1, 10_000), (2, 18_000)] {
        let text = env.governed(&policy(serial, max));
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        let path = archive.join(format!("{hash}.toml"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(mode_of(&path) & 0o777, 0o444, "{}", path.display());
        assert!(loads.iter().any(|l| l["new_hash"] == hash.as_str()));
    }
    assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 2);
    // Every decision names the caller's roles.
    for dec in audit.of_type("sign.decision") {
        assert_eq!(dec["roles"], serde_json::json!(["requester"]), "{dec}");
    }

    // The honest log: no difference.
    let vkey = vkey(&env);
    assert_verifies(&good, &vkey);
    let out = recheck(&good, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("9 decisions rechecked (1 at quorum), 2 votes, 2 policies"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.trim_end().ends_with("OK"), "{}", out.stdout);

    // Someone with the audit key turns the limit denial `over-1` into an allow (charging
    // it like the allowed requests) and the rule denial `c-1` into an allow, and re-signs.
    let forged = env.dir.join("forged");
    copy_tree(&good, &forged);
    let lines = read_lines(&segments(&good)[0]);
    let (over, deploy_at) = (decision_of(&lines, "over-1"), decision_of(&lines, "c-1"));
    let bucket = record(&lines[decision_of(&lines, "s-1")])["charges"][0]["bucket"]
        .as_str()
        .unwrap()
        .to_owned();
    rewrite_and_resign(&env, &forged, &|l| {
        splice(
            &mut l[over],
            "\"decision\":",
            ",\"policy_serial\"",
            "\"decision\":\"allow\",\"rules\":[\"requesters-hot\"],\"reason\":null",
        );
        splice(
            &mut l[over],
            "\"charges\":",
            ",\"prev\"",
            &format!(
                "\"charges\":[{{\"amount\":\"3000\",\"bucket\":\"{bucket}\",\"limit\":\"daily-eth\",\"window_secs\":86400}}]"
            ),
        );
        splice(
            &mut l[deploy_at],
            "\"decision\":",
            ",\"policy_serial\"",
            "\"decision\":\"allow\",\"rules\":[\"requesters-hot\"],\"reason\":null",
        );
    });
    // The rewritten log verifies with the real verifier key...
    assert_verifies(&forged, &vkey);
    // ... and recheck names both decisions.
    let out = recheck(&forged, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "seq {over} sign.decision req_id over-1 (client app): recorded allow [\"requesters-hot\"], recomputed deny [\"daily-eth\"]"
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("over a limit"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "seq {deploy_at} sign.decision req_id c-1 (client app): recorded allow [\"requesters-hot\"], recomputed deny [\"no-contract-creation\"]"
        )),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("2 records differ"), "{}", out.stderr);
    let out = recheck(&forged, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let seqs: Vec<u64> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    let mut want = vec![deploy_at as u64, over as u64];
    want.sort_unstable();
    assert_eq!(seqs, want, "{report}");

    // An archived policy missing, or altered: an error, not a clean recheck.
    let first = loads[0]["new_hash"].as_str().unwrap().to_owned();
    let second = loads[1]["new_hash"].as_str().unwrap().to_owned();
    let missing = env.dir.join("missing");
    copy_tree(&good, &missing);
    std::fs::remove_file(missing.join("policies").join(format!("{second}.toml"))).unwrap();
    let out = recheck(&missing, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!("{second}.toml is missing")),
        "{}",
        out.stderr
    );
    // The file kept elsewhere can be given by hand.
    let kept = env.dir.join("kept.toml");
    std::fs::write(&kept, env.governed(&policy(2, 18_000))).unwrap();
    let out = recheck(&missing, &["--policy", kept.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let altered = env.dir.join("altered");
    copy_tree(&good, &altered);
    let path = altered.join("policies").join(format!("{first}.toml"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, policy(1, 1_000_000)).unwrap();
    let out = recheck(&altered, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("was altered"), "{}", out.stderr);
}

/// A policy that cannot be archived is never installed: a reload whose archive cannot be
/// written is refused and recorded, and a start whose policy's archived copy was altered is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_cannot_be_archived_is_not_installed() {
    let env = TestEnv::new("archive-refused");
    let d = env.start();
    let first = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        env.governed(DEFAULT_POLICY).as_bytes(),
    ));
    let archive = env.audit_dir().join("policies");
    let archived = archive.join(format!("{first}.toml"));
    assert_eq!(
        std::fs::read_to_string(&archived).unwrap(),
        env.governed(DEFAULT_POLICY)
    );

    // The archive's directory is replaced by a file: the reload cannot archive its policy.
    let aside = env.dir.join("policies-aside");
    std::fs::rename(&archive, &aside).unwrap();
    std::fs::write(&archive, b"not a directory").unwrap();
    env.write_policy(&DEFAULT_POLICY.replace("serial = 1", "serial = 2"));
    let settings = env.settings(&d, "admin");
    let mut admin = AdminClient::new(signerd::client::channel(&settings).await.unwrap());
    let st = refused(
        "reload",
        admin
            .reload_policy(v1::ReloadPolicyRequest { force: false })
            .await,
    );
    assert_status("reload", &st, Code::FailedPrecondition, "policy archive");
    let audit = env.wait_audit(|a| !a.of_type("policy.refused").is_empty());
    let refusal = audit.of_type("policy.refused")[0];
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("policy archive"),
        "{refusal}"
    );
    assert_eq!(audit.of_type("policy.load").len(), 1);
    drop(admin);
    assert!(d.stop().success());

    // The directory comes back with the running policy's copy altered: no start.
    std::fs::remove_file(&archive).unwrap();
    std::fs::rename(&aside, &archive).unwrap();
    env.write_policy(DEFAULT_POLICY);
    std::fs::set_permissions(&archived, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&archived, "version = 1\nserial = 1\n").unwrap();
    let Err(err) = Daemon::spawn(env.run_command()) else {
        panic!("signerd started although its policy's archived copy was altered");
    };
    assert!(err.contains("was altered"), "{err}");
}
