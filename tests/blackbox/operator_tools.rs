//! The operator's and approver's tools against the real daemon: `signerctl admin
//! reload-policy` prints what the daemon answered; `signerctl approvals show` says what will be
//! signed in the asset's units with the destination's address-book label; an approval longer
//! than the request lives is refused, not cut short; an approver key file others can read is
//! refused.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use signerd_proto::v1::SignStatus;

use crate::approvals::{ctl_as, key, public};
use crate::util::*;

#[tokio::test]
async fn signerctl_admin_reload_policy_prints_the_answer() {
    let env = TestEnv::new("ctl-reload");
    let d = env.start();
    let same = ctl_as(&env, &d, "admin", &["admin", "reload-policy"]);
    assert!(same.status.success(), "{same:?}");
    assert!(
        same.stdout
            .starts_with("policy unchanged: the file is the running policy (serial 1, sha256 "),
        "{}",
        same.stdout
    );

    env.write_policy(&DEFAULT_POLICY.replace("serial = 1", "serial = 2"));
    // A client without the `admin` role is refused, and told why.
    let app = ctl_as(&env, &d, "app", &["admin", "reload-policy"]);
    assert!(!app.status.success(), "{app:?}");
    assert!(
        app.stderr.contains("policy not reloaded: PermissionDenied")
            && app.stderr.contains("`admin` role"),
        "{}",
        app.stderr
    );
    let r = ctl_as(&env, &d, "admin", &["--json", "admin", "reload-policy"]);
    assert!(r.status.success(), "{r:?}");
    let answer: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(answer["changed"], true);
    assert_eq!(answer["serial"], 2);
    assert_eq!(answer["previous_serial"], 1);
    let audit = env.wait_audit(|a| a.of_type("policy.load").len() == 2);
    let load = audit.of_type("policy.load")[1];
    assert_eq!(load["actor"], "admin");
    assert_eq!(answer["hash"], load["new_hash"]);

    // A lower serial: the daemon's refusal, as it said it.
    env.write_policy(DEFAULT_POLICY);
    let low = ctl_as(&env, &d, "admin", &["admin", "reload-policy"]);
    assert!(!low.status.success());
    assert!(
        low.stderr.contains("FailedPrecondition") && low.stderr.contains("serial 1"),
        "{}",
        low.stderr
    );
}

const ELEVEN_ETH: &str = "11000000000000000000";

fn labelled_policy() -> String {
    format!(
        r#"version = 1
serial = 1

[address_books.own]
addresses = [{{ address = "{TO}", label = "Treasury cold wallet" }}]

[[asset]]
chain_id = 1
contract = "native"
symbol = "ETH"
decimals = 18

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
to = ["book:own"]

[[rule]]
id = "large"
effect = "require_approval"
keys = ["hot"]
value_min = "1 ETH"
approvals = [{{ group = "treasury", min = 2 }}]
ttl = "1h"
"#,
        public("bob"),
        public("carol"),
        public("dave"),
    )
}

#[tokio::test]
async fn approvals_show_speaks_units_and_labels_and_careful_approvals() {
    let env = TestEnv::with(
        "ctl-show",
        Opts {
            policy: labelled_policy(),
            ..Opts::default()
        },
    );
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let mut req = eip1559("big");
    req.value = ELEVEN_ETH.to_owned();
    let r = app.sign_evm_transaction(req).await.unwrap().into_inner();
    assert_eq!(r.status(), SignStatus::PendingApproval, "{r:?}");
    let fingerprint = r.pending.unwrap().fingerprint;

    let show = ctl_as(&env, &d, "bob", &["approvals", "show", "app/big"]);
    assert!(show.status.success(), "{show:?}");
    let want =
        format!("does: send 11 ETH on chain 1 to {TO} (\"Treasury cold wallet\" in book `own`)");
    assert!(show.stdout.contains(&want), "{}", show.stdout);
    let json = ctl_as(&env, &d, "bob", &["--json", "approvals", "show", "app/big"]);
    let shown: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(shown["summary"][0], want.trim_start_matches("does: "));

    // The approver key file: a hex seed, refused while others can read it.
    let keys = unique_dir("ctl-show-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key_file = keys.join("bob.key");
    write_file(
        &key_file,
        format!("{}\n", hex::encode(key("bob").to_bytes())).as_bytes(),
        0o640,
    );
    let kf = key_file.to_str().unwrap();
    let approve = |extra: &[&str]| {
        let mut args = vec![
            "approvals",
            "approve",
            "app/big",
            "--fingerprint",
            &fingerprint,
            "--key-file",
            kf,
        ];
        args.extend_from_slice(extra);
        ctl_as(&env, &d, "bob", &args)
    };
    let open = approve(&[]);
    assert!(!open.status.success(), "{open:?}");
    assert!(
        open.stderr.contains("can be read by others (mode 640)")
            && open.stderr.contains("chmod 600"),
        "{}",
        open.stderr
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Longer than the request lives (1h): refused, with the deadline, and nothing recorded.
    let long = approve(&["--expires-in", "5h"]);
    assert!(!long.status.success(), "{long:?}");
    assert!(
        long.stderr.contains("--expires-in 5h would end at")
            && long.stderr.contains("after the request's deadline"),
        "{}",
        long.stderr
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(env.audit().of_type("approval.grant").is_empty());

    let ok = approve(&["--expires-in", "30m"]);
    assert!(ok.status.success(), "{ok:?}");
    let audit = env.wait_audit(|a| a.of_type("approval.grant").len() == 1);
    let grant = audit.of_type("approval.grant")[0];
    let until = grant["expires"].as_i64().unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(
        (now + 1700..=now + 1810).contains(&until),
        "{grant}: approval expires {until}, now {now}"
    );
    let _ = std::fs::remove_dir_all(&keys);
}
