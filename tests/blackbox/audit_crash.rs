//! Crash injection: SIGKILL a daemon under concurrent signing load at several points (with
//! frequent checkpoints and small segments, so kills land in group commits, checkpoints and
//! rotations), restart it each time, and check that the log still verifies and that every
//! signature a client received is in it, exactly as received.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit_support::*;
use crate::util::{Audit, TestEnv, eip1559, leaf_hash};

/// What a client got back: request id, receipt (seq, leaf hash), signature r and s.
type Received = (String, u64, Vec<u8>, Vec<u8>, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_received_signature() {
    let env = TestEnv::new("audit-crash");
    configure_audit(
        &env,
        "checkpoint_every_records = 16\nmax_segment_bytes = 16384\nmax_batch = 64",
    );
    let received: Arc<Mutex<Vec<Received>>> = Arc::new(Mutex::new(Vec::new()));
    let mut starts = 0;
    for (round, delay_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let d = env.start();
        starts += 1;
        let c = env.client(&d, "app").await;
        let stop_at = Instant::now() + Duration::from_millis(delay_ms);
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let mut c = c.clone();
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("r{round}-w{worker}-{i}");
                    match c.sign_evm_transaction(eip1559(&id)).await {
                        Ok(resp) => {
                            let resp = resp.into_inner();
                            let receipt = resp.receipt.unwrap();
                            let sig = resp.signature.unwrap();
                            received.lock().unwrap().push((
                                id,
                                receipt.seq,
                                receipt.leaf_hash,
                                sig.r,
                                sig.s,
                            ));
                        }
                        // The daemon is gone.
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep_until(stop_at.into()).await;
        kill_9(d);
        for t in tasks {
            t.await.unwrap();
        }
    }
    // A last start recovers from the third kill; a clean stop closes the log.
    let d = env.start();
    starts += 1;
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("after-the-crashes"))
        .await
        .unwrap();
    assert!(d.stop().success());

    let received = received.lock().unwrap().clone();
    assert!(
        received.len() >= 30,
        "only {} signatures under load",
        received.len()
    );
    let vkey = vkey(&env);
    let report = assert_verifies(&env.audit_dir(), &vkey);
    assert!(
        report.contains(&format!("restarts:     {starts} start(s)")),
        "{report}"
    );
    let segs = segments(&env.audit_dir());
    assert!(segs.len() >= 2, "no rotation under load: {segs:?}");

    let audit = Audit::read(&env.audit_dir());
    audit.assert_seq_contiguous();
    for (id, seq, leaf, r, s) in &received {
        let line = audit
            .by_seq(*seq)
            .unwrap_or_else(|| panic!("{id}: seq {seq} was returned but is not in the log"));
        assert_eq!(line.v["type"], "sign.result", "{id}: {}", line.raw);
        assert_eq!(line.v["req_id"], id.as_str(), "{id}: {}", line.raw);
        assert_eq!(line.v["status"], "signed", "{id}: {}", line.raw);
        assert_eq!(line.v["signature"]["r"], hex0x(r), "{id}");
        assert_eq!(line.v["signature"]["s"], hex0x(s), "{id}");
        assert_eq!(leaf_hash(&line.raw).to_vec(), *leaf, "{id}: leaf hash");
    }
    // Every allowed request has exactly one result (the verifier checks the pairing; this
    // checks it again from the raw records).
    for dec in audit.of_type("sign.decision") {
        let id = dec["req_id"].as_str().unwrap();
        let results = audit.results(id);
        assert_eq!(results.len(), 1, "{id}: results {results:?}");
        assert!(
            ["signed", "unknown_crash"].contains(&results[0].as_str()),
            "{id}: {results:?}"
        );
    }
}
