//! Start-up recovery with the real daemon: a torn tail is cut, saved and recorded, then the log
//! verifies; a log shorter than its checkpoint, corruption followed by records, and too little
//! free space each stop start-up with a message naming the problem. (Every byte offset is
//! covered by the library tests; these are real restarts at a few of them.)

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::audit_support::*;
use crate::util::{Daemon, TestEnv, eip1559, run_to_exit};

const SEG: &str = "segment-00000001.jsonl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tails_are_cut_and_recorded_on_restart() {
    let env = TestEnv::new("audit-torn");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    for i in 0..3 {
        c.sign_evm_transaction(eip1559(&format!("torn-{i}")))
            .await
            .unwrap();
    }
    assert!(d.stop().success());
    let vkey = vkey(&env);
    let pristine = env.dir.join("pristine-audit");
    copy_tree(&env.audit_dir(), &pristine);
    // The state store is bound to the log it has seen: each round restores both, as a restore
    // from backup would (a log shorter than its store remembers is refused).
    let pristine_state = env.dir.join("pristine-state");
    copy_tree(&env.dir.join("state"), &pristine_state);
    let full = std::fs::read(pristine.join(SEG)).unwrap();
    let lines = read_lines(&pristine.join(SEG));
    let last = full.len() - lines.last().unwrap().len() - 1;
    assert_eq!(record(lines.last().unwrap())["type"], "audit.checkpoint");
    // What a crash leaves: a write after the last checkpoint that stopped part-way (here the
    // bytes of a record line with the next seq).
    let next = format!(
        "{{\"v\":1,\"seq\":{},\"ts\":\"2026-01-01T00:00:00.000000Z\",\"type\":\"auth.failure\"}}\n",
        lines.len()
    );
    let torn_full = [full.as_slice(), next.as_bytes()].concat();
    let end = full.len();

    // Cuts inside that write: one byte in, half-way, and just the newline missing.
    for cut in [end + 1, end + next.len() / 2, torn_full.len() - 1] {
        copy_tree(&pristine, &env.audit_dir());
        copy_tree(&pristine_state, &env.dir.join("state"));
        std::fs::write(env.audit_dir().join(SEG), &torn_full[..cut]).unwrap();
        let d = env.start();
        // A call first: it also makes sure the daemon serves (and handles SIGTERM) before
        // it is stopped.
        let mut c = env.client(&d, "app").await;
        c.sign_evm_transaction(eip1559(&format!("after-cut-{cut}")))
            .await
            .unwrap();
        assert!(d.stop().success(), "cut {cut}");
        let now = read_lines(&env.audit_dir().join(SEG));
        assert_eq!(&now[..lines.len()], &lines[..], "cut {cut}");
        let rec = record(&now[lines.len()]);
        assert_eq!(rec["type"], "audit.recover", "cut {cut}");
        assert_eq!(rec["offset"], end as u64);
        assert_eq!(rec["bytes"], (cut - end) as u64);
        assert!(rec.get("unattested_records").is_none(), "{rec}");
        assert_eq!(
            rec["sha256"],
            hex::encode(Sha256::digest(&torn_full[end..cut]))
        );
        let saved = env.audit_dir().join(rec["saved_as"].as_str().unwrap());
        assert!(
            rec["saved_as"]
                .as_str()
                .unwrap()
                .starts_with("recovered/torn-")
        );
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            &torn_full[end..cut],
            "cut {cut}"
        );
        assert_eq!(record(&now[lines.len() + 1])["type"], "audit.start");
        let report = assert_verifies(&env.audit_dir(), &vkey);
        assert!(report.contains("1 crash recovery record(s)"), "{report}");
    }

    // A cut inside the closing checkpoint, which the checkpoint file was published from:
    // refused, as is a cut into audit.stop, which leaves fewer records than the file covers.
    copy_tree(&pristine, &env.audit_dir());
    copy_tree(&pristine_state, &env.dir.join("state"));
    std::fs::write(env.audit_dir().join(SEG), &full[..last + 7]).unwrap();
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started on a cut log: {out:?}");
    assert!(
        out.stderr
            .contains("right before the audit.checkpoint record"),
        "{}",
        out.stderr
    );

    // A cut into audit.stop leaves fewer records than the checkpoint file covers: refused.
    copy_tree(&pristine, &env.audit_dir());
    copy_tree(&pristine_state, &env.dir.join("state"));
    let stop = last - lines[lines.len() - 2].len() - 1;
    std::fs::write(env.audit_dir().join(SEG), &full[..stop + 5]).unwrap();
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started on a truncated log: {out:?}");
    assert!(
        out.stderr.contains("records at the end were removed"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(env.audit_dir().join(SEG)).unwrap(),
        &full[..stop + 5],
        "a refused start must not touch the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_and_low_disk_space_stop_startup() {
    let env = TestEnv::new("audit-corrupt");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("before")).await.unwrap();
    assert!(d.stop().success());

    // Corruption followed by valid records: not a torn write.
    let seg = env.audit_dir().join(SEG);
    let good = std::fs::read(&seg).unwrap();
    let mut lines = read_lines(&seg);
    lines[2] = vec![0; lines[2].len()];
    write_lines(&seg, &lines);
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started on a corrupt log: {out:?}");
    assert!(
        out.stderr
            .contains(&format!("{SEG}:3 (seq 2): not a valid record")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("so this is corruption, not a torn write"),
        "{}",
        out.stderr
    );
    assert!(!env.audit_dir().join("recovered").exists());

    // Below the free-space floor: refused before anything is written.
    std::fs::write(&seg, &good).unwrap();
    configure_audit(&env, "min_free_bytes = 1099511627776");
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started without free space: {out:?}");
    assert!(
        out.stderr
            .contains("less than audit.min_free_bytes = 1099511627776"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&seg).unwrap(), good);
}

/// The state store remembers the log it belongs to: a daemon whose audit directory was moved
/// aside (a new, empty log) or replaced by a shorter copy refuses to start, rather than sign a
/// fresh set of limits against answers and spend the store still holds. The documented
/// override binds the store to the log and says so in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_refuses_an_audit_log_that_is_not_its_own() {
    let env = TestEnv::new("state-bound");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("bound-1")).await.unwrap();
    assert!(d.stop().success());
    let shorter = env.dir.join("shorter-audit");
    copy_tree(&env.audit_dir(), &shorter);
    // One more run: the store has now seen more records than the copy holds.
    let d = env.start();
    assert!(d.stop().success());

    // The audit directory moved aside: signerd would start a new log.
    std::fs::rename(env.audit_dir(), env.dir.join("moved-audit")).unwrap();
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started on a new log: {out:?}");
    assert!(
        out.stderr.contains("belongs to the audit log")
            && out.stderr.contains("--rebind-state-to-log"),
        "{}",
        out.stderr
    );
    // Refused before the log was opened: no new log was started in its place.
    assert!(
        !env.audit_dir().exists(),
        "a new audit directory was created"
    );

    // A shorter copy of its own log.
    copy_tree(&shorter, &env.audit_dir());
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started on a shorter log: {out:?}");
    assert!(
        out.stderr.contains("records in this log, which now holds"),
        "{}",
        out.stderr
    );

    // The override binds the store to this log, on the record.
    let mut cmd = env.run_command();
    cmd.arg("--rebind-state-to-log");
    let d = Daemon::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    let audit = env.wait_audit(|a| a.of_type("state.rebind").len() == 1);
    let rebind = audit.of_type("state.rebind")[0];
    assert!(
        rebind["previous_records"].as_u64() > rebind["records"].as_u64(),
        "{rebind}"
    );
    assert!(d.stop().success());
    // Bound now: a plain start works.
    let d = env.start();
    assert!(d.stop().success());
}
