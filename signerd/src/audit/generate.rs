//! Realistic audit logs of any size, written by the real writer, for start-up benchmarks
//! (`signerctl audit generate`) and for tests of what start-up derives from a log.
//!
//! The records are what a busy signer writes: for each request a `sign.request`, a
//! `sign.decision` and a `sign.result`, from a few clients and keys, with limit charges; every
//! 25th request is denied by a limit, every 50th waits for approval before it is allowed, and
//! a few of those are still waiting when the generator stops. It writes no `policy.load` and no
//! `key.pin` (a daemon started on the log records its own). It must never be reachable from a
//! running daemon: it writes records no request caused.

use super::events::{
    Charge, Decision, Method, Outcome, SignDecision, SignRequest, SignResult, Signature,
};
use super::{AuditError, AuditLog};

/// How many records are queued between two waits for the log to catch up.
const WINDOW: u64 = 8192;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Generate {
    /// At least this many records are appended (a request's records are never split).
    pub records: u64,
    /// Distinct request ids start after this one (so that two runs on one log do not
    /// collide).
    pub first_request: u64,
}

fn hex_of(n: u64, len: usize) -> String {
    let digits = format!("{n:016x}");
    digits.repeat(len.div_ceil(16))[..len].to_owned()
}

/// The records of request `i` (`client`, `req_id`), as the daemon writes them.
fn request(i: u64) -> (SignRequest, String, String) {
    let client = format!("app-{}", i % 8);
    let req_id = format!("r-{i:012}");
    (
        SignRequest {
            req_id: Some(req_id.clone()),
            method: Method::SignEvmTransaction,
            client: client.clone(),
            cert_sha256: hex_of(i % 8 + 1, 64),
            key: Some(format!("hot-{}", i % 4)),
            fingerprint: Some(hex_of(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 64)),
        },
        client,
        req_id,
    )
}

fn decision(client: &str, req_id: &str, i: u64, decision: Decision) -> SignDecision {
    let charges = if decision == Decision::Deny {
        Vec::new()
    } else {
        vec![Charge {
            amount: format!("{}", 1_000_000_000_000_000u64 + i % 1000),
            bucket: format!("limit=hot-daily;key=hot-{}", i % 4),
            limit: "hot-daily".to_owned(),
            window_secs: 86_400,
        }]
    };
    SignDecision {
        req_id: req_id.to_owned(),
        client: Some(client.to_owned()),
        roles: None,
        decision,
        rules: vec!["hot-transfers".to_owned()],
        reason: (decision == Decision::Deny)
            .then(|| "limit hot-daily would be exceeded".to_owned()),
        policy_serial: 1,
        policy_hash: hex_of(7, 64),
        action: serde_json::json!({
            "kind": "native_transfer",
            "chain_id": 1,
            "to": format!("0x{}", hex_of(i % 97, 40)),
            "value": "1000000000000000",
        }),
        charges,
        approved_by: None,
    }
}

fn signed(client: &str, req_id: &str, i: u64) -> SignResult {
    SignResult {
        req_id: Some(req_id.to_owned()),
        client: Some(client.to_owned()),
        outcome: Outcome::Signed {
            signing_hash: format!("0x{}", hex_of(i ^ 0x5555, 64)),
            tx_hash: Some(format!("0x{}", hex_of(i ^ 0xaaaa, 64))),
            raw_tx: Some(format!("0x02f870{}", hex_of(i, 220))),
            signature: Signature {
                bytes: format!("0x{}", hex_of(i ^ 0x1234, 130)),
                r: format!("0x{}", hex_of(i ^ 0x1111, 64)),
                s: format!("0x{}", hex_of(i ^ 0x2222, 64)),
                v: 27 + i % 2,
            },
            key_version: None,
            pin: None,
        },
    }
}

fn denied(client: &str, req_id: &str) -> SignResult {
    SignResult {
        req_id: Some(req_id.to_owned()),
        client: Some(client.to_owned()),
        outcome: Outcome::Denied {
            rule: Some("hot-daily".to_owned()),
            message: "limit hot-daily would be exceeded".to_owned(),
        },
    }
}

/// Appends at least `g.records` records to `log`; returns how many requests were written.
/// Every [`WINDOW`] records it waits for the log to make them durable, so that the writer's
/// queue never overflows.
pub async fn generate(log: &AuditLog, g: &Generate) -> Result<u64, AuditError> {
    let mut written = 0u64;
    let mut since_wait = 0u64;
    let mut i = g.first_request;
    while written < g.records {
        let (req, client, req_id) = request(i);
        log.append(req)?;
        written += 3;
        if i.is_multiple_of(25) {
            log.append(decision(&client, &req_id, i, Decision::Deny))?;
            log.append(denied(&client, &req_id))?;
        } else if i % 50 == 1 {
            log.append(decision(&client, &req_id, i, Decision::RequireApproval))?;
            // A few stay waiting: their charges hold across restarts.
            if i % 1000 == 1 {
                written -= 1;
            } else {
                log.append(decision(&client, &req_id, i, Decision::Allow))?;
                log.append(signed(&client, &req_id, i))?;
                written += 1;
            }
        } else {
            log.append(decision(&client, &req_id, i, Decision::Allow))?;
            if since_wait >= WINDOW {
                // Durable with everything before it: the writer's queue drains.
                since_wait = 0;
                log.append_durable(signed(&client, &req_id, i)).await?;
            } else {
                log.append(signed(&client, &req_id, i))?;
            }
        }
        i += 1;
        since_wait += 3;
    }
    Ok(i - g.first_request)
}
