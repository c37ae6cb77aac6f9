//! The daemon's witness sender: a background task that sends every new checkpoint the audit
//! log publishes (its `checkpoint` file) to each configured witness, with the RFC 6962
//! consistency proof from the size that witness last cosigned (C2SP `tlog-witness`
//! `add-checkpoint`), and keeps each witness's latest cosigned checkpoint beside the log in
//! `cosignatures/<name>` (`docs/audit-log.md`, "Witnesses").
//!
//! A witness that cannot be reached, or refuses, is retried with backoff (1 s doubling to
//! 10 s); the log is never held up. Its lag (records published but not cosigned) is the gauge
//! `signerd_audit_witness_lag_records`, and with `audit.witness_max_lag` a lag beyond it pauses
//! admission through [`Gate`] until the witness catches up.
//!
//! This module must never store a cosignature it has not verified with the witness's
//! configured key, send a checkpoint whose root is not the log's own tree head, or block the
//! runtime on file I/O.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signerd_auditor::cosignature::{self, AddCheckpoint, CosignerKey};
use signerd_auditor::note::{self, Checkpoint, VerifierKey};
use signerd_auditor::witnessed::COSIGNATURES_DIR;
use tokio::task::JoinSet;

use super::Gate;
use super::tree::{LogTail, PartialTree};
use crate::tasks::Background;

/// How often the `checkpoint` file is looked at.
const POLL: Duration = Duration::from_millis(250);
/// First retry delay after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest answer read from a witness.
const MAX_ANSWER_BYTES: usize = 16 << 10;
/// Leaves read from the log between two trims of the kept tree at start.
const READ_CHUNK: u64 = 1 << 16;

/// One configured witness.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The local name: the metric label and the file `cosignatures/<name>`.
    pub name: String,
    /// The submission prefix; requests go to `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's cosignature key.
    pub key: CosignerKey,
    /// For https: the CA certificates that may issue the witness's server certificate.
    pub ca_file: Option<PathBuf>,
}

/// What the sender needs.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// The audit log directory.
    pub dir: PathBuf,
    /// The log's checkpoint verifier key.
    pub log_key: VerifierKey,
    /// The witnesses.
    pub peers: Vec<Peer>,
    /// Pause admission while a witness lags by more records than this.
    pub max_lag: Option<u64>,
    /// Longest wait for one witness answer.
    pub timeout: Duration,
}

/// Where one witness stands, as the sender sees it.
#[derive(Debug)]
struct PeerState {
    peer: Peer,
    /// The size the witness holds, as far as we know (the `old` size of the next request).
    size: u64,
    /// The size of the latest checkpoint it cosigned for us (what its lag counts from).
    cosigned: u64,
    /// When the next request may go.
    next_try: Instant,
    backoff: Duration,
    in_flight: bool,
    /// The last failure, while it lasts.
    failing: Option<String>,
}

/// The outcome of one request.
#[derive(Debug)]
enum Outcome {
    /// Cosigned: the cosigned note (checkpoint note and the witness's lines).
    Cosigned { size: u64, note: String },
    /// 409: the witness holds this size.
    Conflict { held: u64 },
    /// Anything else.
    Failed(String),
}

/// Starts the sender for the witnesses of `config` on `audit`'s log; returns the gate that
/// admission must check.
pub fn start(
    config: &crate::config::Config,
    audit: &crate::audit::AuditLog,
    background: &Background,
) -> Result<Arc<Gate>, String> {
    let a = &config.audit;
    let peers = a
        .witnesses
        .iter()
        .map(|w| {
            Ok(Peer {
                name: w.name.clone(),
                url: w.url.clone(),
                key: CosignerKey::parse(&w.key).map_err(|e| format!("`{}`: {e}", w.name))?,
                ca_file: w.ca_file.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let gate = Arc::new(Gate::new());
    spawn(
        background,
        SenderOptions {
            dir: audit.dir().to_owned(),
            log_key: audit.verifier_key().clone(),
            peers,
            max_lag: a.witness_max_lag,
            timeout: a.witness_timeout(),
        },
        gate.clone(),
    )?;
    Ok(gate)
}

/// Starts the sender as a background task.
pub fn spawn(background: &Background, opts: SenderOptions, gate: Arc<Gate>) -> Result<(), String> {
    let clients = opts
        .peers
        .iter()
        .map(|p| http_client(p, opts.timeout))
        .collect::<Result<Vec<_>, String>>()?;
    let bg = background.clone();
    background.spawn("audit witness sender", async move {
        run(opts, gate, clients, bg).await;
    });
    Ok(())
}

/// One witness's HTTP client: rustls with the ring provider and only the witness's CA (for
/// https), the answer deadline, no redirects, no proxy.
fn http_client(peer: &Peer, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &peer.ca_file {
        let certs = crate::tls::load_certs(ca).map_err(|e| format!("`{}`: {e}", peer.name))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("`{}`: {}: {e}", peer.name, ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("`{}`: TLS set-up: {e}", peer.name))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("`{}`: HTTP client set-up: {e}", peer.name))
}

async fn run(opts: SenderOptions, gate: Arc<Gate>, clients: Vec<reqwest::Client>, bg: Background) {
    let now = Instant::now();
    let mut peers: Vec<PeerState> = Vec::new();
    for p in &opts.peers {
        let known = {
            let dir = opts.dir.clone();
            let p = p.clone();
            let key = opts.log_key.clone();
            tokio::task::spawn_blocking(move || stored_size(&dir, &p, &key))
                .await
                .unwrap_or(0)
        };
        peers.push(PeerState {
            peer: p.clone(),
            size: known,
            cosigned: known,
            next_try: now,
            backoff: FIRST_BACKOFF,
            in_flight: false,
            failing: None,
        });
    }
    let mut tree = Tree::new(&opts.dir);
    let mut latest: Option<(String, Checkpoint)> = None;
    let mut inflight: JoinSet<(usize, u64, Outcome)> = JoinSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log_error: Option<String> = None;
    loop {
        tokio::select! {
            () = bg.cancelled() => break,
            done = inflight.join_next(), if !inflight.is_empty() => {
                if let Some(Ok((i, sent, outcome))) = done {
                    let handled = handle(&opts, &mut peers[i], sent, outcome, latest.as_ref().map(|l| &l.1)).await;
                    if let Some(rescan) = handled {
                        tree.needs(rescan);
                    }
                }
            }
            _ = tick.tick() => {}
        }
        // A new checkpoint, and the log's leaves up to it.
        match refresh(&opts, &mut tree, &mut latest, &peers).await {
            Ok(()) => {
                if log_error.take().is_some() {
                    tracing::info!(
                        "the audit log matches its checkpoint again; sending to witnesses"
                    );
                }
            }
            Err(e) => {
                if log_error.as_deref() != Some(&e) {
                    tracing::error!(error = %e, "cannot send checkpoints to witnesses");
                }
                log_error = Some(e);
            }
        }
        let Some((note_text, checkpoint)) = &latest else {
            continue;
        };
        let now = Instant::now();
        for (i, p) in peers.iter_mut().enumerate() {
            if p.in_flight || now < p.next_try || log_error.is_some() {
                continue;
            }
            if p.cosigned >= checkpoint.size && p.size == checkpoint.size {
                continue;
            }
            if p.size > checkpoint.size {
                // The witness holds (or a kept cosignature says it holds) more than this log:
                // ask it again from zero, so that its answer says where it stands.
                p.size = 0;
                p.cosigned = 0;
            }
            let Some(proof) = tree.tree.consistency_proof(p.size, checkpoint.size) else {
                tree.needs(p.size);
                continue;
            };
            let body = AddCheckpoint {
                old_size: p.size,
                proof,
                checkpoint: note_text.clone(),
            }
            .to_body();
            p.in_flight = true;
            let url = format!("{}/add-checkpoint", p.peer.url.trim_end_matches('/'));
            let http = clients[i].clone();
            let sent = p.size;
            let size = checkpoint.size;
            let note_text = note_text.clone();
            let key = p.peer.key.clone();
            inflight.spawn(async move {
                (
                    i,
                    sent,
                    post(&http, &url, body, size, &note_text, &key).await,
                )
            });
        }
        // Lag, metrics and the admission gate.
        let mut worst: Option<(u64, &str)> = None;
        for p in &peers {
            let lag = checkpoint.size.saturating_sub(p.cosigned);
            crate::metrics::witness(&p.peer.name, lag, p.failing.is_none());
            if worst.is_none_or(|(w, _)| lag > w) {
                worst = Some((lag, &p.peer.name));
            }
        }
        let pause = match (opts.max_lag, worst) {
            (Some(max), Some((lag, name))) if lag > max => Some(format!(
                "witness `{name}` has not cosigned the last {lag} audit records \
                 (audit.witness_max_lag = {max}); nothing was signed; signing resumes by \
                 itself once the witness cosigns again"
            )),
            _ => None,
        };
        if pause.is_some() != gate.paused().is_some() {
            match &pause {
                Some(why) => tracing::error!("pausing signing: {why}"),
                None => tracing::info!("witnesses caught up: signing resumes"),
            }
        }
        gate.set(pause);
        gate.set_failing(peers.iter().any(|p| p.failing.is_some()));
        // Keep only the leaves some witness may still need a proof from.
        tree.tree.rebase(floor(&peers, checkpoint.size));
    }
    inflight.abort_all();
}

/// The smallest size a witness may need a consistency proof from: the least size a witness
/// holds, ignoring 0 (a proof from the empty tree is empty), at most `size`.
fn floor(peers: &[PeerState], size: u64) -> u64 {
    peers
        .iter()
        .map(|p| p.size)
        .filter(|s| *s > 0)
        .min()
        .unwrap_or(size)
        .min(size)
}

/// The kept tree and the reader that feeds it; rebuilt from the log's start when a witness
/// needs a proof from below the kept base.
struct Tree {
    dir: PathBuf,
    tree: PartialTree,
    tail: LogTail,
    /// A base to rebuild at.
    rebuild: Option<u64>,
}

impl Tree {
    fn new(dir: &Path) -> Tree {
        Tree {
            dir: dir.to_owned(),
            tree: PartialTree::new(),
            tail: LogTail::new(dir),
            rebuild: None,
        }
    }

    fn needs(&mut self, base: u64) {
        if base < self.tree.base() {
            self.rebuild = Some(self.rebuild.map_or(base, |b| b.min(base)));
        }
    }
}

/// Reads the `checkpoint` file; when it changed, reads the log up to it (trimming what no
/// witness needs as it goes) and checks that the log's tree head is the checkpoint's root.
async fn refresh(
    opts: &SenderOptions,
    tree: &mut Tree,
    latest: &mut Option<(String, Checkpoint)>,
    peers: &[PeerState],
) -> Result<(), String> {
    let dir = opts.dir.clone();
    let key = opts.log_key.clone();
    let read = tokio::task::spawn_blocking(move || {
        signerd_auditor::layout::read_checkpoint_file(&dir, Some(&key))
    })
    .await
    .map_err(|e| e.to_string())??;
    let Some((text, checkpoint)) = read else {
        return Ok(());
    };
    let changed = latest.as_ref().is_none_or(|(t, _)| *t != text);
    if !changed && tree.rebuild.is_none() {
        return Ok(());
    }
    let floor = floor(peers, checkpoint.size);
    let mut state = std::mem::replace(tree, Tree::new(&opts.dir));
    let target = checkpoint.size;
    let (state, result) = tokio::task::spawn_blocking(move || {
        let result = (|| {
            if state.rebuild.take().is_some() {
                state.tree = PartialTree::new();
                state.tail = LogTail::new(&state.dir);
            }
            while state.tree.size() < target {
                let before = state.tree.size();
                let until = target.min(before + READ_CHUNK);
                state.tail.read(&mut state.tree, until)?;
                state.tree.rebase(floor.min(state.tree.size()));
                if state.tree.size() == before {
                    break;
                }
            }
            if state.tree.size() < target {
                return Err(format!(
                    "the checkpoint covers {target} records but the log holds {}",
                    state.tree.size()
                ));
            }
            match state.tree.root(target) {
                Some(root) if root == checkpoint.root => Ok(()),
                Some(_) => Err(format!(
                    "the log's first {target} records do not hash to the checkpoint's root"
                )),
                None => Err("cannot compute the log's tree head".to_owned()),
            }
        })();
        (state, result.map(|()| (text, checkpoint)))
    })
    .await
    .map_err(|e| e.to_string())?;
    *tree = state;
    let (text, checkpoint) = result?;
    *latest = Some((text, checkpoint));
    Ok(())
}

/// The size of the checkpoint stored for `peer`, if its file holds a valid cosignature by the
/// peer on a checkpoint signed by the log's key; 0 otherwise (the witness then says its size).
fn stored_size(dir: &Path, peer: &Peer, log_key: &VerifierKey) -> u64 {
    let path = dir.join(COSIGNATURES_DIR).join(&peer.name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return 0;
    };
    if note::verify_note(&text, log_key).is_err() {
        return 0;
    }
    cosignature::verify_cosignature(&text, &peer.key).map_or(0, |c| c.checkpoint.size)
}

/// Sends one request and classifies the answer.
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: String,
    size: u64,
    note_text: &str,
    key: &CosignerKey,
) -> Outcome {
    let mut response = match http.post(url).body(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("unreachable: {}", error_chain(&e))),
    };
    let status = response.status().as_u16();
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(c)) => {
                if answer.len() + c.len() > MAX_ANSWER_BYTES {
                    return Outcome::Failed(format!("answer {status} longer than 16 KiB"));
                }
                answer.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => return Outcome::Failed(format!("reading the answer: {}", error_chain(&e))),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let shown = one_line(text.trim_end());
    match status {
        200 => {
            let cosigned = format!("{note_text}{text}");
            match cosignature::verify_cosignature(&cosigned, key) {
                Ok(c) if c.checkpoint.size == size => Outcome::Cosigned {
                    size,
                    note: cosigned,
                },
                Ok(_) => Outcome::Failed("the cosignature covers another checkpoint".to_owned()),
                Err(e) => Outcome::Failed(format!(
                    "200 without a valid cosignature by the configured key: {e}"
                )),
            }
        }
        409 => match cosignature::canonical_decimal(text.trim_end_matches('\n')) {
            Some(held) => Outcome::Conflict { held },
            None => Outcome::Failed(format!("409 without a size: {shown}")),
        },
        403 => Outcome::Failed(format!(
            "403: the witness does not trust this log's checkpoint key: {shown}"
        )),
        404 => Outcome::Failed(format!(
            "404: the witness does not know this log's origin (or the URL is wrong): {shown}"
        )),
        422 => Outcome::Failed(format!(
            "422: the witness refused the consistency proof: the tree it cosigned is not a \
             prefix of this log (a fork, or the log was replaced): {shown}"
        )),
        other => Outcome::Failed(format!("HTTP {other}: {shown}")),
    }
}

/// Text from a witness or the HTTP stack, made safe for one log line: control characters
/// escaped, at most 300 characters.
fn one_line(s: &str) -> String {
    let mut out: String = s.chars().take(300).flat_map(char::escape_default).collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    one_line(&s)
}

/// Applies one outcome to its peer. Returns a size the kept tree must be able to prove from,
/// when the witness holds one below it.
async fn handle(
    opts: &SenderOptions,
    p: &mut PeerState,
    sent: u64,
    outcome: Outcome,
    latest: Option<&Checkpoint>,
) -> Option<u64> {
    p.in_flight = false;
    let name = p.peer.name.clone();
    let fail = |p: &mut PeerState, why: String| {
        if p.failing.as_deref() != Some(&why) {
            tracing::warn!(witness = %name, error = %why, "witness did not cosign; retrying");
        }
        p.failing = Some(why);
        p.next_try = Instant::now() + p.backoff;
        p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
    };
    match outcome {
        Outcome::Cosigned { size, note } => {
            let dir = opts.dir.clone();
            let file = p.peer.name.clone();
            let stored = tokio::task::spawn_blocking(move || store(&dir, &file, &note))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            if let Err(e) = stored {
                fail(p, format!("cannot store the cosignature: {e}"));
                return None;
            }
            if p.failing.take().is_some() {
                tracing::info!(witness = %name, size, "witness cosigns again");
            }
            p.size = size;
            p.cosigned = size;
            p.backoff = FIRST_BACKOFF;
            p.next_try = Instant::now();
            None
        }
        Outcome::Conflict { held } => {
            let ours = latest.map_or(0, |c| c.size);
            if held == sent {
                fail(
                    p,
                    format!(
                        "409: the witness holds another tree of {held} records for this origin: \
                         the log forked or was replaced"
                    ),
                );
                return None;
            }
            p.size = held;
            if held > ours {
                p.cosigned = 0;
                fail(
                    p,
                    format!(
                        "409: the witness has cosigned {held} records of this log's origin, but \
                         the log holds {ours}: the log was cut back or replaced (or another log \
                         signs with this origin and key)"
                    ),
                );
                return None;
            }
            // It holds an older checkpoint of ours (a cosignature file was lost, or another
            // run sent it): prove from there at once.
            p.next_try = Instant::now();
            Some(held)
        }
        Outcome::Failed(why) => {
            fail(p, why);
            None
        }
    }
}

/// Writes `cosignatures/<name>` atomically ([`crate::audit::replace_file`]).
fn store(dir: &Path, name: &str, note: &str) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    let cdir = dir.join(COSIGNATURES_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&cdir)
        .map_err(|e| format!("cannot create {}: {e}", cdir.display()))?;
    crate::audit::replace_file(&cdir, name, &format!(".{name}.tmp"), note.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", cdir.join(name).display()))
}
