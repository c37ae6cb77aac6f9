//! Reading the log for people: `signerctl audit query` (filter records by key, client,
//! request id, type and time) and `signerctl audit tail` (the last records, and new ones as
//! they are written, across segment rotation).
//!
//! Decisions and results carry only `req_id`; the query joins them to their request to know
//! the client and key (see [`crate::check`] for how). This module only reads; it must never
//! print a line other than as its exact bytes in JSON output, and never print a partial line.

use std::path::{Path, PathBuf};

use crate::check::Pairing;
use crate::envelope;
use crate::events::{
    self, AuditCheckpoint, AuditRecover, AuditSegmentOpen, AuthFailure, Kind, SignDecision,
    SignRequest,
};
use crate::segments::{self, LineReader, Next};

/// Which records to print. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The key of the request the record belongs to.
    pub key: Option<String>,
    /// The client of the request the record belongs to.
    pub client: Option<String>,
    /// The record's `req_id`.
    pub req_id: Option<String>,
    /// The record type, exactly, or a prefix ending in `*` (`sign.*`).
    pub kind: Option<String>,
    /// Records written at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Records written before this time (RFC 3339).
    pub until: Option<String>,
}

/// A time filter normalized to the log's own `ts` format, so that comparing strings compares
/// times.
fn normalize_time(what: &str, s: &str) -> Result<String, String> {
    let t = crate::rfc3339::parse_lenient(s)
        .map_err(|e| format!("{what} {s:?} is not an RFC 3339 time: {e}"))?;
    Ok(humantime::format_rfc3339_micros(t).to_string())
}

/// One matching record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// `seq`.
    pub seq: u64,
    /// `ts`.
    pub ts: String,
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `req_id`, if any.
    pub req_id: Option<String>,
    /// The client of its request, if known.
    pub client: Option<String>,
    /// The key of its request, if known.
    pub key: Option<String>,
    /// The line, exactly as on disk.
    pub line: String,
}

/// Reads every record of `dir` in order and calls `out` with the ones matching `filter`.
/// Returns how many matched.
pub fn query(
    dir: &Path,
    filter: &Filter,
    mut out: impl FnMut(&Row) -> Result<(), String>,
) -> Result<u64, String> {
    let since = filter
        .since
        .as_deref()
        .map(|s| normalize_time("--since", s))
        .transpose()?;
    let until = filter
        .until
        .as_deref()
        .map(|s| normalize_time("--until", s))
        .transpose()?;
    let kind_prefix = filter
        .kind
        .as_deref()
        .and_then(|k| k.strip_suffix('*'))
        .map(str::to_owned);
    let mut pairing = Pairing::default();
    let mut matched = 0u64;
    for seg in segments::list(dir)? {
        let mut reader = LineReader::open(&seg.path)?;
        loop {
            let next = reader
                .next_line()
                .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?;
            let (bytes, lineno) = match next {
                Next::Eof => break,
                Next::TooLong { lineno, .. } => {
                    return Err(format!("{}:{lineno} is not a record (too long)", seg.name));
                }
                Next::Line { terminated, .. } if !terminated => break,
                Next::Line { bytes, lineno, .. } => (bytes, lineno),
            };
            let env = envelope::parse(bytes).map_err(|e| {
                format!(
                    "{}:{lineno} is not a valid record ({e}); run `signerctl audit verify`",
                    seg.name
                )
            })?;
            // Pairing errors are verification failures, not query failures: keep going.
            let context = match env.kind {
                Some(Kind::SignRequest) => {
                    let _ = pairing.request(env.seq, &env);
                    None
                }
                Some(Kind::SignDecision) => pairing.decision(env.seq, &env).ok(),
                Some(Kind::SignResult) => pairing.result(&env).ok(),
                Some(Kind::AuditStart) => {
                    pairing.restart();
                    None
                }
                _ => pairing.peek(&env).cloned(),
            };
            let client = env
                .client
                .as_str()
                .map(str::to_owned)
                .or_else(|| context.as_ref().and_then(|c| c.client.clone()));
            let key = env
                .key
                .as_str()
                .map(str::to_owned)
                .or_else(|| context.as_ref().and_then(|c| c.key.clone()));
            let req_id = env.req_id.as_str().map(str::to_owned);
            let keep = filter.key.as_ref().is_none_or(|k| key.as_ref() == Some(k))
                && filter
                    .client
                    .as_ref()
                    .is_none_or(|c| client.as_ref() == Some(c))
                && filter
                    .req_id
                    .as_ref()
                    .is_none_or(|r| req_id.as_ref() == Some(r))
                && match (&kind_prefix, &filter.kind) {
                    (Some(p), _) => env.type_name.starts_with(p.as_str()),
                    (None, Some(k)) => env.type_name == k,
                    (None, None) => true,
                }
                && since.as_ref().is_none_or(|s| env.ts >= s.as_str())
                && until.as_ref().is_none_or(|u| env.ts < u.as_str());
            if keep {
                matched += 1;
                out(&Row {
                    seq: env.seq,
                    ts: env.ts.to_owned(),
                    kind: env.type_name.to_owned(),
                    req_id,
                    client,
                    key,
                    line: String::from_utf8_lossy(bytes).into_owned(),
                })?;
            }
        }
    }
    Ok(matched)
}

/// A short description of a record for table output: the decision, status or reason.
pub fn summary(line: &str) -> String {
    let bytes = line.as_bytes();
    let Ok(env) = envelope::parse(bytes) else {
        return String::new();
    };
    let summary = match env.kind {
        Some(Kind::SignRequest) => events::read::<SignRequest>(bytes).map(|r| r.method.to_string()),
        // The decision as written, even one a later version added.
        Some(Kind::SignDecision) => Ok(format!(
            "{} [{}]",
            env.decision.as_str().unwrap_or_default(),
            events::read::<SignDecision>(bytes)
                .map(|d| d.rules.join(","))
                .unwrap_or_default()
        )),
        Some(Kind::SignResult) => Ok(env.status.as_str().unwrap_or_default().to_owned()),
        Some(Kind::AuthFailure) => events::read::<AuthFailure>(bytes).map(|a| a.reason),
        Some(Kind::AuditCheckpoint) => {
            events::read::<AuditCheckpoint>(bytes).map(|c| format!("size {}", c.size))
        }
        Some(Kind::AuditRecover) => events::read::<AuditRecover>(bytes)
            .map(|r| format!("cut {} bytes, saved as {}", r.bytes, r.saved_as)),
        Some(Kind::AuditSegmentOpen) => {
            events::read::<AuditSegmentOpen>(bytes).map(|o| format!("after {}", o.previous))
        }
        _ => return String::new(),
    };
    summary.unwrap_or_default()
}

/// Follows a log: the last complete lines, then new ones as they are written, moving to the
/// next segment when one appears.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    segment: u64,
    offset: u64,
}

impl Follower {
    /// The last `n` complete lines of the log in `dir`, and a follower positioned after them.
    pub fn start(dir: &Path, n: usize) -> Result<(Vec<String>, Follower), String> {
        let segs = segments::list(dir)?;
        let mut last: std::collections::VecDeque<String> =
            std::collections::VecDeque::with_capacity(n.min(4096) + 1);
        let mut follower = Follower {
            dir: dir.to_owned(),
            segment: 1,
            offset: 0,
        };
        for seg in &segs {
            let mut reader = LineReader::open(&seg.path)?;
            let mut complete = 0u64;
            loop {
                let next = reader
                    .next_line()
                    .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?;
                match next {
                    Next::Line {
                        bytes,
                        terminated: true,
                        offset,
                        ..
                    } => {
                        complete = offset + bytes.len() as u64 + 1;
                        if n > 0 {
                            if last.len() == n {
                                last.pop_front();
                            }
                            last.push_back(String::from_utf8_lossy(bytes).into_owned());
                        }
                    }
                    Next::TooLong { lineno, .. } => {
                        return Err(format!("{}:{lineno} is not a record (too long)", seg.name));
                    }
                    _ => break,
                }
            }
            follower.segment = seg.no;
            follower.offset = complete;
        }
        Ok((last.into_iter().collect(), follower))
    }

    /// Complete lines written since the last call.
    pub fn poll(&mut self) -> Result<Vec<String>, String> {
        use std::io::{Read, Seek};
        let mut out = Vec::new();
        loop {
            let path = self.dir.join(segments::segment_name(self.segment));
            // Checked before reading: the seal is written before the next segment exists, so
            // if the next one exists now, this read sees the sealed segment's last bytes.
            let has_next = self
                .dir
                .join(segments::segment_name(self.segment + 1))
                .exists();
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            let mut new = Vec::new();
            file.seek(std::io::SeekFrom::Start(self.offset))
                .and_then(|_| file.read_to_end(&mut new))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let complete = new.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            for line in new[..complete]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                out.push(String::from_utf8_lossy(line).into_owned());
            }
            self.offset += complete as u64;
            if has_next && complete == new.len() {
                self.segment += 1;
                self.offset = 0;
                continue;
            }
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Record;
    use crate::events::AuditStop;
    use crate::testlog::TestLog;
    use crate::verify::{VerifyOptions, verify_dir};

    fn run(dir: &Path, f: Filter) -> Vec<Row> {
        let mut rows = Vec::new();
        query(dir, &f, |r| {
            rows.push(r.clone());
            Ok(())
        })
        .unwrap();
        rows
    }

    /// Lines: start, two requests (`ok` signed, `no` denied) with decision and result, stop,
    /// checkpoint. Decisions and results carry no client or key: the query joins them to their
    /// request.
    fn two_requests(dir: &Path) -> TestLog {
        let mut log = TestLog::new(dir);
        for (req, decision, status) in [("ok", "allow", "signed"), ("no", "deny", "denied")] {
            log.append(
                Record::new("sign.request")
                    .field("req_id", req)
                    .field("client", "app")
                    .field("key", "hot"),
            );
            log.append(
                Record::new("sign.decision")
                    .field("req_id", req)
                    .field("decision", decision),
            );
            log.append(
                Record::new("sign.result")
                    .field("req_id", req)
                    .field("status", status),
            );
        }
        log.append(AuditStop {});
        log.checkpoint();
        log
    }

    fn all_lines(log: &TestLog, segments: u64) -> Vec<String> {
        (1..=segments)
            .flat_map(|n| {
                let text = std::fs::read_to_string(log.segment(n)).unwrap();
                text.lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn query_filters_and_tail_follows_across_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut log = two_requests(dir);
        let rows = run(
            dir,
            Filter {
                key: Some("hot".into()),
                ..Default::default()
            },
        );
        assert_eq!(rows.len(), 6, "{rows:?}");
        assert!(rows.iter().all(|r| r.client.as_deref() == Some("app")));
        let rows = run(
            dir,
            Filter {
                req_id: Some("no".into()),
                kind: Some("sign.d*".into()),
                ..Default::default()
            },
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "sign.decision");
        assert_eq!(summary(&rows[0].line), "deny []");
        assert_eq!(all_lines(&log, 1)[rows[0].seq as usize], rows[0].line);
        let until = Filter {
            until: Some("2000-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(run(dir, until).is_empty());
        let since = Filter {
            since: Some("2000-01-01 00:00:00".into()),
            kind: Some("audit.start".into()),
            ..Default::default()
        };
        assert_eq!(run(dir, since).len(), 1);

        let (last, mut follower) = Follower::start(dir, 2).unwrap();
        assert_eq!(last.len(), 2);
        assert!(last[1].contains("audit.checkpoint"));
        assert!(follower.poll().unwrap().is_empty());
        // A restart that rotates.
        log.append(Record::new("audit.start"));
        log.rotate();
        log.append(Record::new("x.after"));
        log.append(AuditStop {});
        log.checkpoint();
        let all = all_lines(&log, 2);
        let new = follower.poll().unwrap();
        assert_eq!(new, all[9..]);
        let kinds: Vec<String> = new
            .iter()
            .map(|l| {
                crate::envelope::parse(l.as_bytes())
                    .unwrap()
                    .type_name
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds[0], "audit.start");
        assert!(
            kinds.contains(&"audit.segment_open".to_owned()),
            "{kinds:?}"
        );
        assert_eq!(kinds.last().unwrap(), "audit.checkpoint");
        assert!(follower.poll().unwrap().is_empty());
    }

    #[test]
    fn decisions_and_results_pair_by_client_and_req_id() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = TestLog::new(tmp.path());
        // Two clients use the same req_id; the second one's request is decided and finished
        // first.
        for (client, key) in [("a", "k-a"), ("b", "k-b")] {
            log.append(
                Record::new("sign.request")
                    .field("req_id", "r")
                    .field("client", client)
                    .field("key", key),
            );
        }
        for (client, decision, status) in [("b", "deny", "denied"), ("a", "allow", "signed")] {
            log.append(
                Record::new("sign.decision")
                    .field("req_id", "r")
                    .field("client", client)
                    .field("decision", decision),
            );
            log.append(
                Record::new("sign.result")
                    .field("req_id", "r")
                    .field("client", client)
                    .field("status", status),
            );
        }
        log.checkpoint();
        let opts = VerifyOptions {
            key: Some(crate::testlog::vkey()),
            checkpoints: Vec::new(),
            live: false,
            since: None,
        };
        let r = verify_dir(tmp.path(), &opts).unwrap();
        assert!(r.pending.is_empty());
        assert_eq!(r.stats.allowed, 1);
        assert_eq!(r.stats.denied, 1);
        let rows = run(
            tmp.path(),
            Filter {
                key: Some("k-b".into()),
                kind: Some("sign.*".into()),
                ..Default::default()
            },
        );
        let summaries: Vec<String> = rows.iter().map(|r| summary(&r.line)).collect();
        assert_eq!(rows.len(), 3, "{summaries:?}");
        assert!(rows.iter().all(|r| r.client.as_deref() == Some("b")));
        assert!(summaries[1].starts_with("deny"), "{summaries:?}");
    }
}
