//! Start-up reconciliation of the spend ledger from the audit log, the source of truth.
//!
//! After a crash the state store may hold reservations of requests that never got a result
//! (they died with the process and must not count), and, if it lost writes, may lack spend that
//! was signed. Before serving, the ledger is rebuilt to exactly the charges of requests whose
//! `sign.result` says `signed`, taken from their last `sign.decision` records inside the longest
//! window a limit may have, plus the charges of requests still waiting for approval (a
//! `require_approval` decision and no result yet): they hold their spend across restarts.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use alloy_primitives::U256;

use super::spend::{Entry, MAX_WINDOW_SECS};

/// A request's final answer as the audit log holds it: the `sign.result` record that ended it
/// `signed` or `denied`, with its last `sign.request` record's method and fingerprint.
#[derive(Debug)]
pub struct LoggedAnswer<'a> {
    /// The requesting client.
    pub client: &'a str,
    /// The client's request id.
    pub req_id: &'a str,
    /// The gRPC method of the request.
    pub method: &'a str,
    /// The request's fingerprint.
    pub fingerprint: &'a str,
    /// The `sign.result` record.
    pub result: &'a serde_json::Value,
    /// The exact line of the `sign.result` record (without its newline): its leaf hash is
    /// part of the answer.
    pub line: &'a str,
}

/// The charges of signed requests (and of requests still waiting for approval) recorded in the
/// audit log in `dir` since
/// `now - MAX_WINDOW_SECS`, as ledger entries. A request is its (`client`, `req_id`).
pub fn signed_spend(dir: &Path, now: i64) -> Result<Vec<Entry>, String> {
    scan(dir, now, &mut |_| Ok(()))
}

/// [`signed_spend`], also handing every final answer in the log to `on_answer`, in log order
/// (a later answer for the same request comes later).
pub fn scan(
    dir: &Path,
    now: i64,
    on_answer: &mut dyn FnMut(LoggedAnswer<'_>) -> Result<(), String>,
) -> Result<Vec<Entry>, String> {
    let since = now.saturating_sub(MAX_WINDOW_SECS as i64);
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
        })
        .collect();
    // Fixed-width numbers: name order is segment order.
    segments.sort();
    let mut client_of: HashMap<String, String> = HashMap::new();
    // (method, fingerprint) of the last `sign.request` of each request without a result yet.
    let mut requested: HashMap<String, (String, String)> = HashMap::new();
    let mut charged: HashMap<String, Vec<Entry>> = HashMap::new();
    let mut signed: HashSet<String> = HashSet::new();
    // Requests whose last decision was `require_approval`, until a result ends them.
    let mut waiting: HashSet<String> = HashSet::new();
    for path in segments {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (no, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), no + 1))?;
            let at = || format!("{}:{}", path.display(), no + 1);
            // Recovery has already refused or cut anything that is not a record.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let (Some(kind), Some(req_id)) = (v["type"].as_str(), v["req_id"].as_str()) else {
                continue;
            };
            if kind == "sign.request" {
                if let Some(client) = v["client"].as_str() {
                    client_of.insert(req_id.to_owned(), client.to_owned());
                    if let (Some(method), Some(fingerprint)) =
                        (v["method"].as_str(), v["fingerprint"].as_str())
                    {
                        requested.insert(
                            format!("{client}\0{req_id}"),
                            (method.to_owned(), fingerprint.to_owned()),
                        );
                    }
                }
                continue;
            }
            // Decision and result records name their client; pairing through the request
            // record is the fallback for records that do not.
            let Some(client) = v["client"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| client_of.get(req_id).cloned())
            else {
                continue;
            };
            let owner = format!("{client}\0{req_id}");
            match kind {
                "sign.decision"
                    if v["decision"] == "allow" || v["decision"] == "require_approval" =>
                {
                    if v["decision"] == "require_approval" {
                        waiting.insert(owner.clone());
                    } else {
                        waiting.remove(&owner);
                    }
                    let ts = v["ts"]
                        .as_str()
                        .and_then(signerd_auditor::rfc3339::parse_unix)
                        .ok_or_else(|| format!("{}: `ts` is not an RFC 3339 time", at()))?;
                    if ts <= since {
                        continue;
                    }
                    let mut entries = Vec::new();
                    for c in v["charges"].as_array().into_iter().flatten() {
                        let (Some(bucket), Some(amount)) =
                            (c["bucket"].as_str(), c["amount"].as_str())
                        else {
                            return Err(format!("{}: a charge without bucket or amount", at()));
                        };
                        let amount: U256 = amount
                            .parse()
                            .map_err(|e| format!("{}: charge amount: {e}", at()))?;
                        entries.push(Entry {
                            owner: owner.clone(),
                            bucket: bucket.to_owned(),
                            ts,
                            amount,
                        });
                    }
                    // The decision at quorum replaces the one that sent the request to wait.
                    charged.insert(owner, entries);
                }
                "sign.decision" => {
                    waiting.remove(&owner);
                    charged.remove(&owner);
                }
                "sign.result" => {
                    waiting.remove(&owner);
                    let request = requested.remove(&owner);
                    if (v["status"] == "signed" || v["status"] == "denied")
                        && let Some((method, fingerprint)) = &request
                    {
                        on_answer(LoggedAnswer {
                            client: &client,
                            req_id,
                            method,
                            fingerprint,
                            result: &v,
                            line: &line,
                        })
                        .map_err(|e| format!("{}: {e}", at()))?;
                    }
                    if v["status"] == "signed" {
                        signed.insert(owner);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(charged
        .into_iter()
        .filter(|(owner, _)| signed.contains(owner) || waiting.contains(owner))
        .flat_map(|(_, e)| e)
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn decision(req: &str, decision: &str, amount: u64) -> String {
        format!(
            r#"{{"v":1,"seq":0,"ts":"2026-01-01T00:00:00.000000Z","type":"sign.decision","req_id":"{req}","client":"app","decision":"{decision}","charges":[{{"limit":"l","bucket":"limit=l","window_secs":86400,"amount":"{amount}"}}],"prev":""}}"#
        )
    }

    fn result(req: &str, status: &str) -> String {
        format!(
            r#"{{"v":1,"seq":0,"ts":"2026-01-01T00:00:01.000000Z","type":"sign.result","req_id":"{req}","client":"app","status":"{status}","prev":""}}"#
        )
    }

    #[test]
    fn waiting_requests_keep_their_charges_until_a_result_ends_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let lines = [
            decision("signed", "allow", 1),
            result("signed", "signed"),
            decision("waiting", "require_approval", 10),
            decision("approved", "require_approval", 100),
            decision("approved", "allow", 200),
            result("approved", "signed"),
            decision("vetoed", "require_approval", 1000),
            result("vetoed", "rejected"),
            decision("denied-at-quorum", "require_approval", 10000),
            decision("denied-at-quorum", "deny", 0),
            decision("allowed-then-crashed", "allow", 100000),
        ];
        std::fs::write(dir.join("segment-00000001.jsonl"), lines.join("\n") + "\n").unwrap();
        let now = 1_767_225_600 + 10; // 2026-01-01T00:00:10Z
        let mut amounts: Vec<u64> = signed_spend(&dir, now)
            .unwrap()
            .iter()
            .map(|e| e.amount.to::<u64>())
            .collect();
        amounts.sort_unstable();
        // Signed (1), still waiting (10), approved at its final charge (200).
        assert_eq!(amounts, vec![1, 10, 200]);
    }
}
