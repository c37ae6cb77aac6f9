//! The witness that `signerctl witness run` serves: the C2SP `tlog-witness` `add-checkpoint`
//! call over HTTP (<https://c2sp.org/tlog-witness>).
//!
//! For each log it trusts (by the log's checkpoint verifier key, hence its origin) it keeps the
//! latest size and root it cosigned, in one file per origin in its state directory, written
//! (and synced) before it answers. A checkpoint is cosigned only if it is signed by a trusted
//! key and the sender proves that it extends the stored one (an RFC 6962 consistency proof);
//! a smaller tree (a rollback) or another tree of the same size (a fork) is refused, and a
//! refused checkpoint that the log's key did sign is kept as evidence.
//!
//! Answers: 200 with the cosignature line; 400 for a malformed body or an old size above the
//! checkpoint's; 403 when no trusted key signed it; 404 for an unknown origin; 409 (body: the
//! stored size, `text/x.tlog.size`) when the old size is not the stored one, or the sizes are
//! equal and the roots are not; 422 when the consistency proof does not verify. The check and
//! the update happen under one lock, so two requests cannot roll each other back.
//!
//! This module must never cosign a checkpoint it has not verified against the stored state,
//! answer before the new state is durable, or keep serving on a state directory another
//! witness process holds.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use signerd_auditor::cosignature::{self, AddCheckpoint};
use signerd_auditor::merkle::{self, Hash};
use signerd_auditor::note::{self, VerifierKey};

use super::key::WitnessKey;

/// The `Content-Type` of a 409 answer's body.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
/// Longest time a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most evidence files kept.
const MAX_EVIDENCE: usize = 1000;

/// What one stored log state holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    origin: String,
    size: u64,
    /// Lowercase hex.
    root: String,
    /// When it was cosigned (POSIX seconds).
    cosigned_at: u64,
    /// The checkpoint note as received (the log's signature included).
    note: String,
}

/// An answer: status code, and for 200 and 409 a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` of the body, if any.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: String,
}

impl Answer {
    fn status(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            body: body.into(),
        }
    }
}

/// A witness: its key, the logs it trusts and its state.
#[derive(Debug)]
pub struct Witness {
    key: WitnessKey,
    /// Trusted checkpoint keys by origin (the key name).
    logs: BTreeMap<String, Vec<VerifierKey>>,
    dir: PathBuf,
    state: Mutex<BTreeMap<String, Stored>>,
    /// The state directory's lock, held while the witness lives.
    _lock: std::fs::File,
}

impl Witness {
    /// Opens the state directory `dir` (created with mode 0700 if missing), locks it, and
    /// reads the stored state of every log.
    pub fn open(dir: &Path, key: WitnessKey, logs: Vec<VerifierKey>) -> Result<Witness, String> {
        if logs.is_empty() {
            return Err("no log to witness: give at least one --log VKEY".to_owned());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                format!(
                    "{} is in use by another witness process; one state directory per witness",
                    dir.display()
                )
            },
        )?;
        let mut by_origin: BTreeMap<String, Vec<VerifierKey>> = BTreeMap::new();
        for k in logs {
            by_origin.entry(k.name().to_owned()).or_default().push(k);
        }
        let mut state = BTreeMap::new();
        for origin in by_origin.keys() {
            let path = state_path(dir, origin);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            let stored: Stored = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a witness state file: {e}", path.display()))?;
            if stored.origin != *origin {
                return Err(format!(
                    "{}: holds origin {:?}, expected {origin:?}",
                    path.display(),
                    stored.origin
                ));
            }
            parse_root(&stored.root).ok_or_else(|| format!("{}: bad root", path.display()))?;
            state.insert(origin.clone(), stored);
        }
        Ok(Witness {
            key,
            logs: by_origin,
            dir: dir.to_owned(),
            state: Mutex::new(state),
            _lock: lock,
        })
    }

    /// The witness's key.
    pub fn key(&self) -> &WitnessKey {
        &self.key
    }

    /// The stored size and root of `origin`, if it has cosigned one of its checkpoints.
    pub fn latest(&self, origin: &str) -> Option<(u64, Hash)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .get(origin)
            .and_then(|s| Some((s.size, parse_root(&s.root)?)))
    }

    /// Handles one `add-checkpoint` request body (blocking: it syncs files).
    pub fn add_checkpoint(&self, body: &[u8]) -> Answer {
        let req = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return Answer::status(400, format!("{e}\n")),
        };
        let (checkpoint, _) = match note::parse_note(&req.checkpoint) {
            Ok(c) => c,
            Err(e) => return Answer::status(400, format!("{e}\n")),
        };
        let origin = checkpoint.origin.clone();
        let Some(keys) = self.logs.get(&origin) else {
            tracing::warn!(origin, "add-checkpoint for an unknown log: 404");
            return Answer::status(404, "unknown log origin\n");
        };
        if !keys
            .iter()
            .any(|k| note::verify_note(&req.checkpoint, k).is_ok())
        {
            tracing::warn!(origin, "add-checkpoint not signed by a trusted key: 403");
            return Answer::status(403, "no signature by a key trusted for this origin\n");
        }
        if req.old_size > checkpoint.size {
            tracing::warn!(
                origin,
                old = req.old_size,
                size = checkpoint.size,
                "add-checkpoint with an old size above the checkpoint's: 400"
            );
            return Answer::status(400, "the old size is larger than the checkpoint's\n");
        }
        // From here to the answer, no other request for any log is checked or stored.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (size, root) = match state.get(&origin) {
            Some(s) => match parse_root(&s.root) {
                Some(r) => (s.size, r),
                None => return Answer::status(500, "the stored state is damaged\n"),
            },
            None => (0, merkle::EMPTY_ROOT),
        };
        let conflict = |why: &str| {
            let mut a = Answer::status(409, format!("{size}\n"));
            a.content_type = Some(SIZE_CONTENT_TYPE);
            tracing::warn!(
                origin,
                stored = size,
                old = req.old_size,
                new = checkpoint.size,
                "add-checkpoint refused: {why}: 409"
            );
            a
        };
        if req.old_size != size {
            if checkpoint.size < size {
                // A validly signed checkpoint smaller than what was cosigned: a rollback.
                self.keep_evidence(&origin, "rollback", body);
            }
            return conflict("the old size is not the size last cosigned");
        }
        if checkpoint.size == size && size != 0 && checkpoint.root != root {
            self.keep_evidence(&origin, "fork", body);
            return conflict("same size, another root (a fork)");
        }
        if let Err(e) =
            merkle::verify_consistency(size, checkpoint.size, &root, &checkpoint.root, &req.proof)
        {
            tracing::warn!(
                origin,
                stored = size,
                new = checkpoint.size,
                error = %e,
                "add-checkpoint refused: the consistency proof does not verify (a fork, or a bad proof): 422"
            );
            self.keep_evidence(&origin, "inconsistent", body);
            return Answer::status(422, format!("the consistency proof does not verify: {e}\n"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .min(cosignature::MAX_TIMESTAMP);
        let stored = Stored {
            origin: origin.clone(),
            size: checkpoint.size,
            root: hex::encode(checkpoint.root),
            cosigned_at: now,
            note: req.checkpoint.clone(),
        };
        if let Err(e) = self.persist(&stored) {
            tracing::error!(origin, error = %e, "cannot store the witness state: nothing cosigned");
            return Answer::status(500, "the witness cannot store its state\n");
        }
        state.insert(origin.clone(), stored);
        drop(state);
        let text = &req.checkpoint[..req.checkpoint.len() - after_text(&req.checkpoint)];
        tracing::info!(origin, old = size, size = checkpoint.size, "cosigned");
        Answer {
            status: 200,
            content_type: Some("text/plain; charset=utf-8"),
            body: self.key.cosign(text, now),
        }
    }

    fn persist(&self, stored: &Stored) -> Result<(), String> {
        let path = state_path(&self.dir, &stored.origin);
        let tmp = path.with_extension("json.tmp");
        let shown = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let json = serde_json::to_vec(stored).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(shown)?;
        f.write_all(&json).map_err(shown)?;
        f.sync_all().map_err(shown)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(shown)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(shown)
    }

    /// Keeps a refused request whose checkpoint a trusted key signed: proof that the log
    /// showed the witness an inconsistent history.
    fn keep_evidence(&self, origin: &str, what: &str, body: &[u8]) {
        let dir = self.dir.join("evidence");
        let count = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        if count >= MAX_EVIDENCE {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}.{:09}-{}-{what}.txt",
            now.as_secs(),
            now.subsec_nanos(),
            &origin_id(origin)[..16]
        );
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dir.join(&name))
            })
            .and_then(|mut f| f.write_all(body));
        match written {
            Ok(()) => tracing::warn!(origin, file = %name, "kept the refused request as evidence"),
            Err(e) => tracing::error!(origin, error = %e, "cannot keep the refused request"),
        }
    }
}

/// Bytes of `note` from its blank line on (the signatures), so that the rest is the text.
fn after_text(note: &str) -> usize {
    note.rfind("\n\n").map_or(0, |i| note.len() - i - 1)
}

fn parse_root(hex_root: &str) -> Option<Hash> {
    hex::decode(hex_root).ok()?.try_into().ok()
}

/// A file-name-safe id of an origin: hex SHA-256.
fn origin_id(origin: &str) -> String {
    hex::encode(Sha256::digest(origin.as_bytes()))
}

fn state_path(dir: &Path, origin: &str) -> PathBuf {
    dir.join(format!("log-{}.json", origin_id(origin)))
}

/// Serves `witness` on `listener` until `shutdown` resolves: `POST /add-checkpoint`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    async fn add_checkpoint(State(w): State<Arc<Witness>>, body: axum::body::Body) -> Response {
        let limit = cosignature::MAX_REQUEST_BYTES;
        let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await;
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return (StatusCode::BAD_REQUEST, "the body is too long or broken\n")
                    .into_response();
            }
            Err(_) => {
                return (StatusCode::REQUEST_TIMEOUT, "the body took too long\n").into_response();
            }
        };
        let answer = match tokio::task::spawn_blocking(move || w.add_checkpoint(&bytes)).await {
            Ok(a) => a,
            Err(_) => Answer::status(500, "internal error\n"),
        };
        let status =
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, answer.body).into_response();
        if let Some(ct) = answer.content_type
            && let Ok(v) = header::HeaderValue::from_str(ct)
        {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        response
    }

    let app = axum::Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .layer(DefaultBodyLimit::max(cosignature::MAX_REQUEST_BYTES))
        .with_state(witness);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use signerd_auditor::cosignature::CosignerKey;
    use signerd_auditor::note::{Checkpoint, CheckpointSigner};

    struct LogKey(ed25519_dalek::SigningKey);
    impl CheckpointSigner for LogKey {
        fn name(&self) -> &str {
            "example.com/log"
        }
        fn public_key(&self) -> [u8; 32] {
            self.0.verifying_key().to_bytes()
        }
        fn sign(&self, m: &[u8]) -> Result<[u8; 64], String> {
            use ed25519_dalek::Signer as _;
            Ok(self.0.sign(m).to_bytes())
        }
    }

    fn leaves(n: u64, salt: u8) -> Vec<Hash> {
        (0..n)
            .map(|i| merkle::leaf_hash(&[&i.to_be_bytes()[..], &[salt]].concat()))
            .collect()
    }

    fn note_for(log: &LogKey, leaves: &[Hash]) -> String {
        Checkpoint {
            origin: log.name().to_owned(),
            size: leaves.len() as u64,
            root: merkle::root(leaves),
        }
        .sign(log)
        .unwrap()
    }

    fn body(old: u64, all: &[Hash], new: u64, log: &LogKey) -> Vec<u8> {
        AddCheckpoint {
            old_size: old,
            proof: if old == 0 {
                vec![]
            } else {
                merkle::consistency_proof(&all[..new as usize], old).unwrap()
            },
            checkpoint: note_for(log, &all[..new as usize]),
        }
        .to_body()
        .into_bytes()
    }

    fn setup() -> (tempfile::TempDir, LogKey, Witness, CosignerKey) {
        let dir = tempfile::tempdir().unwrap();
        let log = LogKey(ed25519_dalek::SigningKey::from_bytes(&[5; 32]));
        let vkey = VerifierKey::new(log.name(), &log.public_key()).unwrap();
        let key = WitnessKey::generate("witness.example/w1").unwrap();
        let public = key.public().clone();
        let w = Witness::open(&dir.path().join("state"), key, vec![vkey]).unwrap();
        (dir, log, w, public)
    }

    #[test]
    fn consistent_checkpoints_are_cosigned_and_the_state_survives_a_restart() {
        let (dir, log, w, public) = setup();
        let all = leaves(20, 0);
        let a = w.add_checkpoint(&body(0, &all, 7, &log));
        assert_eq!(a.status, 200, "{a:?}");
        let note = note_for(&log, &all[..7]);
        let got = cosignature::verify_cosignature(&format!("{note}{}", a.body), &public).unwrap();
        assert_eq!(got.checkpoint.size, 7);
        let a = w.add_checkpoint(&body(7, &all, 20, &log));
        assert_eq!(a.status, 200, "{a:?}");
        // The same checkpoint again is cosigned again.
        assert_eq!(w.add_checkpoint(&body(20, &all, 20, &log)).status, 200);
        assert_eq!(w.latest("example.com/log").unwrap().0, 20);
        // A second process cannot take the state directory.
        let vkey = VerifierKey::new(log.name(), &log.public_key()).unwrap();
        let again = WitnessKey::generate("witness.example/w1").unwrap();
        assert!(
            Witness::open(&dir.path().join("state"), again, vec![vkey.clone()])
                .unwrap_err()
                .contains("in use")
        );
        drop(w);
        let again = WitnessKey::generate("witness.example/w1").unwrap();
        let w = Witness::open(&dir.path().join("state"), again, vec![vkey]).unwrap();
        assert_eq!(
            w.latest("example.com/log").unwrap(),
            (20, merkle::root(&all))
        );
    }

    #[test]
    fn rollbacks_forks_and_bad_requests_get_the_spec_status_codes() {
        let (dir, log, w, _) = setup();
        let all = leaves(20, 0);
        assert_eq!(w.add_checkpoint(&body(0, &all, 10, &log)).status, 200);

        // Rollback: an older, validly signed checkpoint.
        let a = w.add_checkpoint(&body(0, &all, 5, &log));
        assert_eq!((a.status, a.body.as_str()), (409, "10\n"));
        assert_eq!(a.content_type, Some(SIZE_CONTENT_TYPE));
        let mut older = AddCheckpoint::parse(&body(0, &all, 5, &log)).unwrap();
        older.old_size = 10;
        assert_eq!(w.add_checkpoint(older.to_body().as_bytes()).status, 400);
        // A stale old size.
        assert_eq!(w.add_checkpoint(&body(5, &all, 20, &log)).status, 409);

        // Fork: another tree of the same origin and key.
        let other = leaves(20, 1);
        let fork_same = w.add_checkpoint(&body(10, &other, 10, &log));
        assert_eq!((fork_same.status, fork_same.body.as_str()), (409, "10\n"));
        let mut forked = AddCheckpoint::parse(&body(10, &all, 20, &log)).unwrap();
        forked.checkpoint = note_for(&log, &other);
        assert_eq!(w.add_checkpoint(forked.to_body().as_bytes()).status, 422);
        assert_eq!(w.add_checkpoint(&body(10, &other, 20, &log)).status, 422);
        assert_eq!(w.latest("example.com/log").unwrap().0, 10);
        let evidence = std::fs::read_dir(dir.path().join("state/evidence"))
            .unwrap()
            .count();
        assert!(evidence >= 3, "{evidence}");

        // Unknown origin, untrusted key, malformed body.
        let stranger = LogKey(ed25519_dalek::SigningKey::from_bytes(&[6; 32]));
        assert_eq!(w.add_checkpoint(&body(10, &all, 20, &stranger)).status, 403);
        let unknown = Checkpoint {
            origin: "elsewhere".to_owned(),
            size: 1,
            root: [0; 32],
        };
        let text = format!("old 0\n\n{}\n\u{2014} elsewhere AAAAAAAA\n", unknown.body());
        assert_eq!(w.add_checkpoint(text.as_bytes()).status, 404);
        assert_eq!(w.add_checkpoint(b"old 1\n").status, 400);
        assert_eq!(w.add_checkpoint(b"nonsense").status, 400);
        // The good path still works.
        assert_eq!(w.add_checkpoint(&body(10, &all, 20, &log)).status, 200);
    }
}
