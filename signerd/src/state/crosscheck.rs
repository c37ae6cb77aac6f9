//! Replicas' audit logs against the database they share: every signed result in the logs has
//! its committed answer in the database, and every committed signed answer has its signed
//! result in some log (`signerctl state cross-check`).
//!
//! An answer is the same when its response is the same bytes: the response the database holds
//! was built from one log's `sign.result` record (its signature, and that record's leaf hash),
//! so exactly one log line produces it again.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{PostgresStore, StateStore, StoredOutcome, StoredRequest};

/// Most problems listed one by one (the count is always exact).
const MAX_LISTED: usize = 50;

/// What a cross-check found.
#[derive(Debug, Default)]
pub struct CrossCheck {
    /// Logs read.
    pub logs: usize,
    /// Signed results in the logs, all logs together.
    pub signed_in_logs: usize,
    /// Signed answers committed in the database.
    pub signed_rows: usize,
    /// Signed results whose answer expired under the idempotency retention (the database
    /// keeps a marker that they were answered).
    pub expired: usize,
    /// Requests signed in more than one log (a replica stopped after signing, before its
    /// answer was committed, and another completed the request): the same request, signed
    /// again; the database holds one of the answers.
    pub signed_again: Vec<String>,
    /// How many problems there are.
    pub problems: usize,
    /// The first [`MAX_LISTED`] problems.
    pub listed: Vec<String>,
}

impl CrossCheck {
    fn problem(&mut self, what: String) {
        self.problems += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(what);
        }
    }
}

/// One signed result of a log.
struct Logged {
    log: usize,
    seq: u64,
    fingerprint: String,
    response: String,
}

/// Cross-checks the logs in `dirs` against `store`.
pub async fn cross_check(store: &PostgresStore, dirs: &[PathBuf]) -> Result<CrossCheck, String> {
    let mut found = CrossCheck {
        logs: dirs.len(),
        ..CrossCheck::default()
    };
    let mut logged: HashMap<(String, String), Vec<Logged>> = HashMap::new();
    for (log, dir) in dirs.iter().enumerate() {
        let dir = dir.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            super::reconcile::scan(&dir, 0, &mut |a| {
                let rec = crate::service::answer_from_log(&a)?;
                if let StoredOutcome::Signed { response } = rec.outcome {
                    out.push((
                        a.client.to_owned(),
                        a.req_id.to_owned(),
                        a.seq,
                        rec.fingerprint,
                        response,
                    ));
                }
                Ok(())
            })
            .map(|_| out)
            .map_err(|e| format!("{}: {e}", dir.display()))
        })
        .await
        .map_err(|e| e.to_string())??;
        for (client, req_id, seq, fingerprint, response) in answers {
            found.signed_in_logs += 1;
            logged.entry((client, req_id)).or_default().push(Logged {
                log,
                seq,
                fingerprint,
                response,
            });
        }
    }
    let rows = store.signed_answers().await.map_err(|e| e.to_string())?;
    found.signed_rows = rows.len();
    let mut committed: HashMap<(String, String), StoredRequest> =
        HashMap::with_capacity(rows.len());
    for (client, req_id, rec) in rows {
        committed.insert((client, req_id), rec);
    }
    let name = |i: usize| dirs[i].display().to_string();
    for ((client, req_id), rec) in &committed {
        let StoredOutcome::Signed { response } = &rec.outcome else {
            continue;
        };
        let matches = logged
            .get(&(client.clone(), req_id.clone()))
            .is_some_and(|l| l.iter().any(|x| &x.response == response));
        if !matches {
            found.problem(format!(
                "the database holds a signed answer to `{req_id}` of `{client}` that no log's \
                 signed result produces"
            ));
        }
    }
    let mut keys: Vec<_> = logged.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let (client, req_id) = &key;
        let results = &logged[&key];
        match committed.get(&key) {
            Some(rec) => {
                for r in results {
                    if r.fingerprint != rec.fingerprint {
                        found.problem(format!(
                            "{} seq {}: `{req_id}` of `{client}` was signed for another request \
                             (fingerprint {}) than the database's answer ({})",
                            name(r.log),
                            r.seq,
                            r.fingerprint,
                            rec.fingerprint
                        ));
                    }
                }
                if results.len() > 1 {
                    found.signed_again.push(format!(
                        "`{req_id}` of `{client}`: signed {} times ({})",
                        results.len(),
                        results
                            .iter()
                            .map(|r| format!("{} seq {}", name(r.log), r.seq))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            None => {
                let expired = StateStore::expired(store, client, req_id)
                    .await
                    .map_err(|e| e.to_string())?;
                if expired.is_some() {
                    found.expired += 1;
                    continue;
                }
                for r in results {
                    found.problem(format!(
                        "{} seq {}: the signed result of `{req_id}` of `{client}` has no \
                         committed answer in the database",
                        name(r.log),
                        r.seq
                    ));
                }
            }
        }
    }
    Ok(found)
}
