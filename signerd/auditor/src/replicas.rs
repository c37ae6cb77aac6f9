//! `verify DIR1 DIR2 ...`: the logs of several replicas (signerd instances that share one
//! state store, each writing its own log under its own origin), verified as one system.
//!
//! Each log is first verified on its own, exactly as `verify DIR` does, with the verifier key
//! whose name is its origin. Then the logs must fit together: no two logs have the same origin
//! (two copies of one log, or two replicas signing under one name, could otherwise stand in for
//! each other), and no request id of a client was signed as two different requests (a request
//! retried on another replica may be signed in two logs, but only ever with one request
//! fingerprint). It must never pass logs it could not tell apart, and never pick a key for a
//! log by anything but the log's own origin.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::check::{Checker, Failure, Position};
use crate::commands::{CommandError, render};
use crate::envelope;
use crate::events::{self, AuditCheckpoint, Kind, SignRequest, Status};
use crate::note::{self, VerifierKey};
use crate::segments::{self, LineReader, Next};
use crate::verify::{self, Report, VerifyOptions};

/// Most logs verified together.
pub const MAX_LOGS: usize = 1024;

/// Most signed (client, request id) pairs remembered across all logs (about 100 bytes each):
/// beyond this the verification fails rather than exhaust memory.
pub const MAX_SIGNED: usize = 50_000_000;

/// Most requests of one log waiting for their result at once.
const MAX_WAITING: usize = 10_000_000;

/// Most records read to find a log's origin when it has no `checkpoint` file (the daemon
/// writes a checkpoint among its first records).
const ORIGIN_SCAN_RECORDS: u64 = 1_000_000;

/// One log verified, with where it is.
struct Verified {
    dir: PathBuf,
    report: Report,
}

/// A request signed in one of the logs: (client, request id) is the key, by its digest.
struct Signed {
    /// Index of the first log that signed it.
    log: u32,
    /// `seq` of that `sign.result`.
    result_seq: u64,
    /// SHA-256 of its request fingerprint.
    fingerprint: [u8; 32],
    /// Also signed in another log (with the same fingerprint).
    several: bool,
}

/// What is learned across the logs.
#[derive(Default)]
struct System {
    signed: HashMap<[u8; 16], Signed>,
    in_several: u64,
}

/// The (client, request id) pair's key: the first 16 bytes of SHA-256 over both, each with
/// its length. Two pairs with one key would be compared and reported as a conflict, never
/// let through.
fn pair_key(client: &str, req_id: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update((client.len() as u64).to_be_bytes());
    h.update(client.as_bytes());
    h.update((req_id.len() as u64).to_be_bytes());
    h.update(req_id.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// A failure in log `dir`, with the log named in its location.
fn in_log(dir: &Path, mut f: Failure) -> Failure {
    f.location = Some(match f.location {
        Some(l) => format!("{}/{l}", dir.display()),
        None => dir.display().to_string(),
    });
    f
}

fn failure_at(pos: &Position, seq: u64, message: String) -> Failure {
    Failure {
        location: Some(format!("{}:{}", pos.segment, pos.lineno)),
        seq: Some(seq),
        message,
        syntax: false,
    }
}

/// The origin a log names: in its `checkpoint` file, else in its first `audit.checkpoint`
/// record. Only used to choose the key; the verification then checks every checkpoint of the
/// log against that key, whose name must be the origin.
fn peek_origin(dir: &Path) -> Result<Option<String>, String> {
    if let Some((_, cp)) = crate::layout::read_checkpoint_file(dir, None)? {
        return Ok(Some(cp.origin));
    }
    let mut read = 0u64;
    for seg in segments::list(dir)? {
        let mut reader = LineReader::open(&seg.path)?;
        loop {
            let next = reader
                .next_line()
                .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?;
            let Next::Line { bytes, .. } = next else {
                // The verification reports what is wrong with the rest.
                break;
            };
            read += 1;
            if read > ORIGIN_SCAN_RECORDS {
                return Ok(None);
            }
            let Ok(env) = envelope::parse(bytes) else {
                return Ok(None);
            };
            if env.kind == Some(Kind::AuditCheckpoint) {
                let Ok(b) = events::read::<AuditCheckpoint>(bytes) else {
                    return Ok(None);
                };
                return Ok(note::parse_note(&b.note).ok().map(|(c, _)| c.origin));
            }
        }
    }
    Ok(None)
}

/// The key of each log: with no key, none (signatures are not checked, and the report says
/// so); otherwise the one named by the log's origin. Every log must have one and every key
/// must be some log's.
fn keys_for(
    dirs: &[PathBuf],
    keys: Vec<VerifierKey>,
) -> Result<Vec<Option<VerifierKey>>, CommandError> {
    if keys.is_empty() {
        return Ok(vec![None; dirs.len()]);
    }
    let mut by_name: HashMap<String, (VerifierKey, bool)> = HashMap::new();
    for k in keys {
        let name = k.name().to_owned();
        if by_name.insert(name.clone(), (k, false)).is_some() {
            return Err(CommandError::Input(format!(
                "two --pubkey keys are named {name:?}: a log's key is the one named by its origin, so each name may be given once"
            )));
        }
    }
    let mut out = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let origin = peek_origin(dir)
            .map_err(|e| CommandError::Input(format!("{}: {e}", dir.display())))?
            .ok_or_else(|| {
                CommandError::Input(format!(
                    "{}: no checkpoint names the log's origin, so no --pubkey can be chosen for it",
                    dir.display()
                ))
            })?;
        let (key, used) = by_name.get_mut(&origin).ok_or_else(|| {
            CommandError::Input(format!(
                "{}: its origin is {origin:?}, and no --pubkey is named so",
                dir.display()
            ))
        })?;
        *used = true;
        out.push(Some(key.clone()));
    }
    let mut unused: Vec<&String> = by_name
        .iter()
        .filter(|(_, (_, used))| !used)
        .map(|(n, _)| n)
        .collect();
    unused.sort();
    if let Some(name) = unused.first() {
        return Err(CommandError::Input(format!(
            "--pubkey {name:?} is the key of no log given (no log has that origin)"
        )));
    }
    Ok(out)
}

/// Follows one log's requests to their results, and records what it signed in `system`.
struct Tracker<'a> {
    log: usize,
    dirs: &'a [PathBuf],
    system: &'a mut System,
    /// SHA-256 of the fingerprint of each request waiting for its result, by the `seq` of its
    /// `sign.request`.
    waiting: HashMap<u64, [u8; 32]>,
}

impl Tracker<'_> {
    fn observe(&mut self, checker: &Checker, pos: &Position, line: &[u8]) -> Result<(), Failure> {
        // The checker accepted the line, and counted it.
        let seq = checker.next_seq().saturating_sub(1);
        match checker.last_kind().and_then(Kind::parse) {
            Some(Kind::SignRequest) => {
                let r: SignRequest = events::read(line).map_err(|e| {
                    failure_at(pos, seq, format!("malformed sign.request record: {e}"))
                })?;
                if let Some(fp) = r.fingerprint {
                    if self.waiting.len() >= MAX_WAITING {
                        return Err(failure_at(
                            pos,
                            seq,
                            format!("more than {MAX_WAITING} requests wait for a result at once"),
                        ));
                    }
                    self.waiting
                        .insert(seq, Sha256::digest(fp.as_bytes()).into());
                }
            }
            Some(Kind::AuditStart) => {
                // A restart forgets the requests that can no longer get a result.
                let open: std::collections::HashSet<u64> = checker.open_request_seqs().collect();
                self.waiting.retain(|s, _| open.contains(s));
            }
            Some(Kind::SignResult) => {
                let Some(closed) = checker.closed() else {
                    return Ok(());
                };
                let fingerprint = self.waiting.remove(&closed.seq);
                let env = envelope::parse(line).map_err(|e| failure_at(pos, seq, e.to_string()))?;
                if env.status() != Some(Status::Signed) {
                    return Ok(());
                }
                let (Some(client), Some(req_id)) = (&closed.client, &closed.req_id) else {
                    return Err(failure_at(
                        pos,
                        seq,
                        "a signed result whose request names no client or request id cannot be compared across logs".to_owned(),
                    ));
                };
                let Some(fingerprint) = fingerprint else {
                    return Err(failure_at(
                        pos,
                        seq,
                        format!(
                            "request `{req_id}` of client `{client}` was signed, but its sign.request (seq {}) has no fingerprint: it cannot be compared across logs",
                            closed.seq
                        ),
                    ));
                };
                self.signed(client, req_id, fingerprint, pos, seq)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn log_index(&self) -> u32 {
        // At most MAX_LOGS logs.
        u32::try_from(self.log).unwrap_or(u32::MAX)
    }

    fn signed(
        &mut self,
        client: &str,
        req_id: &str,
        fingerprint: [u8; 32],
        pos: &Position,
        seq: u64,
    ) -> Result<(), Failure> {
        let full = self.system.signed.len() >= MAX_SIGNED;
        let this = self.log_index();
        match self.system.signed.entry(pair_key(client, req_id)) {
            Entry::Vacant(v) => {
                if full {
                    return Err(failure_at(
                        pos,
                        seq,
                        format!(
                            "more than {MAX_SIGNED} signed requests in the logs: too many to compare in memory"
                        ),
                    ));
                }
                v.insert(Signed {
                    log: this,
                    result_seq: seq,
                    fingerprint,
                    several: false,
                });
            }
            Entry::Occupied(mut o) => {
                let first = o.get_mut();
                if first.fingerprint != fingerprint {
                    let there = if first.log == this {
                        "this log".to_owned()
                    } else {
                        self.dirs
                            .get(first.log as usize)
                            .map_or_else(|| "another log".to_owned(), |d| d.display().to_string())
                    };
                    return Err(failure_at(
                        pos,
                        seq,
                        format!(
                            "request `{req_id}` of client `{client}` is signed here with another request fingerprint than in {there} (sign.result at seq {}): one request id was signed as two different requests",
                            first.result_seq
                        ),
                    ));
                }
                if first.log != this && !first.several {
                    first.several = true;
                    self.system.in_several += 1;
                }
            }
        }
        Ok(())
    }
}

/// `verify DIR1 DIR2 ...`: verifies each log with the key named by its origin (`keys`; none:
/// signatures are not checked), then that the logs form one system. Prints each log's report
/// as `verify DIR` does, headed by the log's directory, then one summary line; stops at the
/// first failure, which names the log and the record.
pub fn verify_logs(
    dirs: &[PathBuf],
    keys: Vec<VerifierKey>,
    live: bool,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    if dirs.len() < 2 || dirs.len() > MAX_LOGS {
        return Err(CommandError::Input(format!(
            "verifying several logs takes 2 to {MAX_LOGS} directories, not {}",
            dirs.len()
        )));
    }
    let keys = keys_for(dirs, keys)?;
    let mut system = System::default();
    let mut verified: Vec<Verified> = Vec::with_capacity(dirs.len());
    for (log, (dir, key)) in dirs.iter().zip(keys).enumerate() {
        let opts = VerifyOptions {
            key,
            checkpoints: Vec::new(),
            live,
            since: None,
        };
        let mut tracker = Tracker {
            log,
            dirs,
            system: &mut system,
            waiting: HashMap::new(),
        };
        let checked = verify::verify_dir_observed(dir, &opts, &mut |c, p, l| {
            tracker.observe(c, p, l)
        })
        .and_then(|report| {
            let Some(origin) = report.origin.as_deref() else {
                return Err(Failure::general(
                    "the log has no checkpoint, so its origin is unknown: it cannot be told apart from the other logs",
                ));
            };
            if let Some(other) = verified
                .iter()
                .find(|v| v.report.origin.as_deref() == Some(origin))
            {
                return Err(Failure::general(format!(
                    "its origin {origin:?} is also the origin of {}: two logs with one origin are copies of one log, or replicas that sign under one name, and cannot be told apart",
                    other.dir.display()
                )));
            }
            Ok(report)
        });
        let report = match checked {
            Ok(r) => r,
            Err(f) => {
                let f = in_log(dir, f);
                if json_out {
                    writeln!(
                        out,
                        "{}",
                        json!({"ok": false, "logs": logs_json(&verified)?, "failure": {
                            "location": f.location, "seq": f.seq, "message": f.message}})
                    )?;
                }
                return Err(CommandError::Verification(f));
            }
        };
        if !json_out {
            writeln!(out, "log:          {}", dir.display())?;
            out.write_all(render(&report).as_bytes())?;
        }
        verified.push(Verified {
            dir: dir.clone(),
            report,
        });
    }
    let origins: Vec<&str> = verified
        .iter()
        .filter_map(|v| v.report.origin.as_deref())
        .collect();
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"ok": true, "logs": logs_json(&verified)?,
                   "signed_requests": system.signed.len(),
                   "signed_in_several_logs": system.in_several})
        )?;
    } else {
        writeln!(
            out,
            "all logs:     {} logs with distinct origins ({}); {} request id(s) signed, {} of them in more than one log, each as one request: OK",
            verified.len(),
            origins.join(", "),
            system.signed.len(),
            system.in_several
        )?;
    }
    Ok(())
}

fn logs_json(verified: &[Verified]) -> Result<Vec<serde_json::Value>, CommandError> {
    verified
        .iter()
        .map(|v| {
            let mut r =
                serde_json::to_value(&v.report).map_err(|e| CommandError::Input(e.to_string()))?;
            if let Some(o) = r.as_object_mut() {
                o.insert("dir".to_owned(), json!(v.dir.display().to_string()));
                o.insert("ok".to_owned(), json!(true));
            }
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::events::{
        AuditStart, AuditStop, Decision, Method, Outcome, SignDecision, SignResult, Signature,
    };
    use crate::note::{CheckpointSigner, MemorySigner};
    use crate::testlog::TestLog;

    fn signer(origin: &str) -> MemorySigner {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&Sha256::digest(origin.as_bytes()));
        MemorySigner::from_seed(origin, seed)
    }

    fn vkey(origin: &str) -> VerifierKey {
        VerifierKey::new(origin, &signer(origin).public_key()).unwrap()
    }

    /// One request of a test log: (client, req_id, fingerprint, signed or denied).
    type Req<'a> = (&'a str, &'a str, &'a str, bool);

    fn request(log: &mut TestLog, (client, req_id, fp, signed): Req<'_>) {
        log.append(SignRequest {
            req_id: Some(req_id.to_owned()),
            method: Method::SignDigest,
            client: client.to_owned(),
            cert_sha256: "ab".repeat(32),
            key: Some("hot".to_owned()),
            fingerprint: Some(fp.to_owned()),
        });
        log.append(SignDecision {
            req_id: req_id.to_owned(),
            client: Some(client.to_owned()),
            decision: if signed {
                Decision::Allow
            } else {
                Decision::Deny
            },
            rules: vec!["r".to_owned()],
            reason: None,
            policy_serial: 1,
            policy_hash: "ef".repeat(32),
            action: serde_json::json!({}),
            charges: Vec::new(),
            approved_by: None,
            roles: Some(Vec::new()),
        });
        let outcome = if signed {
            Outcome::Signed {
                signing_hash: format!("0x{}", "22".repeat(32)),
                tx_hash: None,
                raw_tx: None,
                signature: Signature {
                    bytes: format!("0x{}", "33".repeat(64)),
                    r: "0x".to_owned(),
                    s: "0x".to_owned(),
                    v: 0,
                },
                key_version: None,
                pin: None,
            }
        } else {
            Outcome::Denied {
                rule: Some("r".to_owned()),
                message: "denied".to_owned(),
            }
        };
        log.append(SignResult {
            req_id: Some(req_id.to_owned()),
            client: Some(client.to_owned()),
            outcome,
        });
    }

    /// A log under `origin` in `dir` with `requests`, closed with a checkpoint.
    fn write_log(dir: &Path, origin: &str, requests: &[Req<'_>]) {
        let signer = signer(origin);
        let mut log = TestLog::new(dir);
        for r in requests {
            request(&mut log, *r);
        }
        log.append(AuditStop {});
        log.checkpoint_by(&signer);
    }

    fn run(dirs: &[PathBuf], keys: Vec<VerifierKey>) -> (Result<(), CommandError>, String) {
        let mut out = Vec::new();
        let r = verify_logs(dirs, keys, false, false, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    fn err(dirs: &[PathBuf], keys: Vec<VerifierKey>) -> String {
        match run(dirs, keys) {
            (Ok(()), out) => panic!("verified: {out}"),
            (Err(e), _) => e.to_string(),
        }
    }

    const FP1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const FP2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn logs_of_distinct_origins_with_one_request_retried_verify_together() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        // `r1` signed on both replicas as one request; `r2` denied on one as another request
        // and signed on the other; `r3` of two clients; `r4` retried on one replica.
        write_log(
            &a,
            "replica-a",
            &[
                ("app", "r1", FP1, true),
                ("app", "r2", FP2, false),
                ("app", "r3", FP1, true),
                ("app", "r4", FP1, true),
                ("app", "r4", FP1, true),
            ],
        );
        write_log(
            &b,
            "replica-b",
            &[
                ("app", "r1", FP1, true),
                ("app", "r2", FP1, true),
                ("bob", "r3", FP2, true),
            ],
        );
        let dirs = [a.clone(), b.clone()];
        let (r, out) = run(&dirs, vec![vkey("replica-b"), vkey("replica-a")]);
        r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert!(
            out.starts_with(&format!("log:          {}\n", a.display())),
            "{out}"
        );
        assert!(
            out.contains(&format!("\nlog:          {}\n", b.display())),
            "{out}"
        );
        // Each log's report is the one `verify DIR` prints, with its own key.
        for origin in ["replica-a", "replica-b"] {
            let line = format!("every checkpoint signature verified with {}", vkey(origin));
            assert!(out.contains(&line), "{out}");
        }
        assert!(
            out.ends_with(
                "all logs:     2 logs with distinct origins (replica-a, replica-b); 5 request id(s) signed, 1 of them in more than one log, each as one request: OK\n"
            ),
            "{out}"
        );
        // Without keys the logs are compared all the same, and the reports say signatures
        // were not checked.
        let (r, out) = run(&dirs, Vec::new());
        r.unwrap();
        assert_eq!(out.matches("signatures:   NOT checked").count(), 2, "{out}");

        let mut json = Vec::new();
        verify_logs(&dirs, Vec::new(), false, true, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["logs"][1]["origin"], "replica-b");
        assert_eq!(v["logs"][1]["dir"], b.display().to_string());
        assert_eq!(v["signed_requests"], 5);
        assert_eq!(v["signed_in_several_logs"], 1);
    }

    #[test]
    fn one_request_id_signed_as_two_requests_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write_log(&a, "replica-a", &[("app", "r1", FP1, true)]);
        write_log(
            &b,
            "replica-b",
            &[("app", "r0", FP2, true), ("app", "r1", FP2, true)],
        );
        // Each log verifies on its own.
        for (dir, origin) in [(&a, "replica-a"), (&b, "replica-b")] {
            let opts = VerifyOptions {
                key: Some(vkey(origin)),
                ..VerifyOptions::default()
            };
            verify::verify_dir(dir, &opts).unwrap();
        }
        let e = err(&[a.clone(), b.clone()], Vec::new());
        // The second log's sign.result of `r1` (line 7, seq 6) is named, and the first's.
        assert!(
            e.contains(&format!("{}/segment-00000001.jsonl:7 (seq 6): request `r1` of client `app` is signed here with another request fingerprint than in {} (sign.result at seq 3)", b.display(), a.display())),
            "{e}"
        );
        // In one log too.
        let c = tmp.path().join("c");
        write_log(
            &c,
            "replica-c",
            &[("app", "r9", FP1, true), ("app", "r9", FP2, true)],
        );
        let e = err(&[a.clone(), c], Vec::new());
        assert!(
            e.contains("another request fingerprint than in this log"),
            "{e}"
        );
    }

    #[test]
    fn two_logs_of_one_origin_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write_log(&a, "replica-a", &[("app", "r1", FP1, true)]);
        write_log(&b, "replica-a", &[("app", "r2", FP1, true)]);
        for dirs in [[a.clone(), b.clone()], [a.clone(), a.clone()]] {
            let e = err(&dirs, vec![vkey("replica-a")]);
            assert!(
                e.contains(&format!(
                    "{}: its origin \"replica-a\" is also the origin of {}",
                    dirs[1].display(),
                    a.display()
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn each_log_takes_the_key_named_by_its_origin() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write_log(&a, "replica-a", &[("app", "r1", FP1, true)]);
        write_log(&b, "replica-b", &[("app", "r2", FP1, true)]);
        let dirs = [a.clone(), b.clone()];
        let e = err(&dirs, vec![vkey("replica-a")]);
        assert!(
            e.contains(&format!(
                "{}: its origin is \"replica-b\", and no --pubkey is named so",
                b.display()
            )),
            "{e}"
        );
        let e = err(
            &dirs,
            vec![vkey("replica-a"), vkey("replica-b"), vkey("replica-c")],
        );
        assert!(
            e.contains("--pubkey \"replica-c\" is the key of no log"),
            "{e}"
        );
        let e = err(&dirs, vec![vkey("replica-a"), vkey("replica-a")]);
        assert!(
            e.contains("two --pubkey keys are named \"replica-a\""),
            "{e}"
        );
        // A key of the right name but another key: the log's checkpoints do not verify.
        let wrong = VerifierKey::new("replica-b", &signer("replica-x").public_key()).unwrap();
        let e = err(&dirs, vec![vkey("replica-a"), wrong]);
        assert!(
            e.starts_with(&format!("audit log verification FAILED: {}: ", b.display())),
            "{e}"
        );
        assert!(e.contains("checkpoint"), "{e}");
        // Without a checkpoint file, the origin is read from the first checkpoint record.
        std::fs::remove_file(b.join(crate::layout::CHECKPOINT_FILE)).unwrap();
        let (r, out) = run(&dirs, vec![vkey("replica-a"), vkey("replica-b")]);
        r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(
            err(std::slice::from_ref(&a), Vec::new()),
            "verifying several logs takes 2 to 1024 directories, not 1"
        );
    }

    #[test]
    fn requests_forgotten_at_a_restart_are_not_paired_with_later_results() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write_log(&a, "replica-a", &[("app", "r1", FP1, true)]);
        // On b, `r1` as another request was never decided before a restart; after it, `r1` is
        // signed as the request a signed.
        let signer_b = signer("replica-b");
        let mut log = TestLog::new(&b);
        log.append(SignRequest {
            req_id: Some("r1".to_owned()),
            method: Method::SignDigest,
            client: "app".to_owned(),
            cert_sha256: "ab".repeat(32),
            key: Some("hot".to_owned()),
            fingerprint: Some(FP2.to_owned()),
        });
        log.checkpoint_by(&signer_b);
        log.append(AuditStart {
            pid: 2,
            version: "0.1.0".to_owned(),
            checkpoint_key: vkey("replica-b").to_string(),
        });
        request(&mut log, ("app", "r1", FP1, true));
        log.append(AuditStop {});
        log.checkpoint_by(&signer_b);
        let (r, out) = run(&[a, b], Vec::new());
        r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert!(out.contains("1 of them in more than one log"), "{out}");
    }
}
