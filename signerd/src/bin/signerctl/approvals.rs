//! `signerctl approver` and `signerctl approvals`: an approver's own Ed25519 key, and the
//! review, approval and rejection of requests waiting for a quorum; `signerctl request`: where
//! a requester's request stands.
//!
//! The approver's private key stays on the approver's machine: it is generated and read here,
//! and only the signature over the approval message (docs/approvals.md) is sent. Key files are
//! created with mode 0600, refused when others can read them, and never printed.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use serde_json::json;
use signerd::approvals::{self, Vote};
use signerd::client::ClientSettings;
use signerd_proto::v1::{self, approvals_client::ApprovalsClient, signer_client::SignerClient};
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub(crate) enum ApproverCmd {
    /// Generate an approver key into a new file (mode 0600) and print its public key, to be
    /// registered in the policy's `[approvers]`.
    Keygen {
        /// The key file to create; refused if it exists.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of an approver key file.
    Pubkey {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum ApprovalsCmd {
    /// Requests waiting for approval.
    List,
    /// One waiting request in full: the decoded action, the policy's explanation, the quorum,
    /// the votes so far and the fingerprint to approve.
    Show {
        /// CLIENT/REQUEST_ID, as `list` prints it.
        request: String,
    },
    /// Approve a waiting request: signs the approval message locally with your key.
    Approve {
        /// CLIENT/REQUEST_ID, as `list` prints it.
        request: String,
        /// The fingerprint you reviewed (from `show`); refused if the request's differs.
        #[arg(long)]
        fingerprint: String,
        /// Your approver key file.
        #[arg(long)]
        key_file: PathBuf,
        /// How long your approval counts (e.g. "30m"); the default is until the request's
        /// deadline. A duration that would end after the deadline is refused.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// Reject a waiting request (a veto when your group allows it).
    Reject {
        /// CLIENT/REQUEST_ID, as `list` prints it.
        request: String,
        /// The fingerprint you reviewed (from `show`).
        #[arg(long)]
        fingerprint: String,
        /// Your approver key file.
        #[arg(long)]
        key_file: PathBuf,
        /// Why (recorded in the audit log and shown to the requester).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum RequestCmd {
    /// Where one of your requests stands; with --wait, until it is signed, rejected, expired
    /// or denied.
    Status {
        /// The request id.
        request_id: String,
        /// Stream changes until a final state (at most an hour).
        #[arg(long)]
        wait: bool,
    },
}

pub(crate) fn run_approver(cmd: ApproverCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        ApproverCmd::Keygen { out } => {
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let seed = Zeroizing::new(hex::encode(key.to_bytes()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            f.write_all(format!("{}\n", seed.as_str()).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", out.display()))?;
            print_public(json_out, &key, Some(&out));
        }
        ApproverCmd::Pubkey { key_file } => print_public(json_out, &read_key(&key_file)?, None),
    }
    Ok(())
}

fn print_public(json_out: bool, key: &SigningKey, file: Option<&Path>) {
    let public = format!("ed25519:{}", hex::encode(key.verifying_key().to_bytes()));
    if json_out {
        println!(
            "{:#}",
            json!({"public_key": public, "file": file.map(|f| f.display().to_string())})
        );
    } else {
        if let Some(f) = file {
            eprintln!(
                "wrote {} (keep it private; register the public key below in [approvers])",
                f.display()
            );
        }
        println!("{public}");
    }
}

/// Reads a key file: 64 hex digits (the Ed25519 seed), refused when others may read it.
pub(crate) fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} can be read by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| {
        anyhow::anyhow!(
            "{}: not an approver key file (64 hex digits)",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// When an approval given now stops counting: after `expires_in`, or at the request's
/// deadline. An approver who asks for longer than the request lives is told, not silently cut
/// short: what they sign is what they asked for, or nothing.
fn approval_expiry(
    expires_in: Option<std::time::Duration>,
    now: i64,
    deadline: i64,
) -> anyhow::Result<i64> {
    let Some(d) = expires_in else {
        return Ok(deadline);
    };
    let until = now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if until > deadline {
        bail!(
            "--expires-in {} would end at {}, after the request's deadline {} ({} from now); give a shorter --expires-in, or leave it out to approve until the deadline",
            humantime::format_duration(d),
            when(until),
            when(deadline),
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from(deadline.saturating_sub(now)).unwrap_or(0)
            ))
        );
    }
    Ok(until)
}

fn split(request: &str) -> anyhow::Result<(&str, &str)> {
    // Request ids never contain `/`, so the last one separates.
    match request.rsplit_once('/') {
        Some((c, r)) if !c.is_empty() && !r.is_empty() => Ok((c, r)),
        _ => {
            bail!("give the request as CLIENT/REQUEST_ID (as `signerctl approvals list` prints it)")
        }
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn when(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn pending_json(p: &v1::PendingApproval) -> serde_json::Value {
    json!({
        "fingerprint": p.fingerprint,
        "deadline": when(p.deadline_unix),
        "rules": p.rules,
        "requirements": p.requirements.iter().map(|r| json!({
            "group": r.group, "min": r.min, "members": r.members,
            "approved_by": r.approved_by, "veto": r.veto,
        })).collect::<Vec<_>>(),
        "policy_serial": p.policy_serial,
        "policy_hash": p.policy_hash,
    })
}

fn quorum_line(p: &v1::PendingApproval) -> String {
    p.requirements
        .iter()
        .map(|r| {
            format!(
                "{}/{} of {} [{}]{}",
                r.approved_by.len(),
                r.min,
                r.group,
                r.approved_by.join(", "),
                if r.veto { " (veto)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn request_json(r: &v1::PendingRequest) -> serde_json::Value {
    let action: serde_json::Value =
        serde_json::from_str(&r.action_json).unwrap_or(serde_json::Value::Null);
    json!({
        "request": format!("{}/{}", r.client, r.request_id),
        "method": r.method,
        "key": r.key_id,
        "created": when(r.created_unix),
        "summary": r.summary,
        "action": action,
        "explanation": r.explanation,
        "pending": r.pending.as_ref().map(pending_json),
        "votes": r.votes.iter().map(|v| json!({
            "approver": v.approver, "decision": v.decision,
            "expires": when(v.expires_unix), "reason": v.reason,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) async fn run_approvals(
    settings: ClientSettings,
    cmd: ApprovalsCmd,
    json_out: bool,
) -> anyhow::Result<()> {
    let channel = signerd::client::channel(&settings).await?;
    let mut client = ApprovalsClient::new(channel);
    let list = |client: &mut ApprovalsClient<_>| {
        let mut c = client.clone();
        async move {
            c.list_pending(v1::ListPendingRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(status_error)
        }
    };
    match cmd {
        ApprovalsCmd::List => {
            let all = list(&mut client).await?;
            if json_out {
                let v: Vec<_> = all.requests.iter().map(request_json).collect();
                println!("{:#}", serde_json::Value::Array(v));
                return Ok(());
            }
            if all.requests.is_empty() {
                println!("no requests wait for approval");
            }
            for r in &all.requests {
                let p = r.pending.clone().unwrap_or_default();
                println!(
                    "{}/{}  {} key={}  until {}  {}",
                    r.client,
                    r.request_id,
                    r.method,
                    r.key_id,
                    when(p.deadline_unix),
                    quorum_line(&p)
                );
            }
        }
        ApprovalsCmd::Show { request } => {
            let r = find(&list(&mut client).await?, &request)?;
            let v = request_json(&r);
            if json_out {
                println!("{v:#}");
            } else {
                let p = r.pending.clone().unwrap_or_default();
                println!("{:>12}: {}/{}", "request", r.client, r.request_id);
                println!("{:>12}: {} with key {}", "method", r.method, r.key_id);
                for line in &r.summary {
                    println!("{:>12}: {line}", "does");
                }
                println!("{:>12}: {}", "action", v["action"]);
                for line in &r.explanation {
                    println!("{:>12}: {line}", "policy");
                }
                println!("{:>12}: {}", "quorum", quorum_line(&p));
                for vote in &r.votes {
                    println!(
                        "{:>12}: {} {} {}",
                        "vote", vote.approver, vote.decision, vote.reason
                    );
                }
                println!("{:>12}: {}", "deadline", when(p.deadline_unix));
                println!("{:>12}: {}", "fingerprint", p.fingerprint);
            }
        }
        ApprovalsCmd::Approve {
            request,
            fingerprint,
            key_file,
            expires_in,
        } => {
            let key = read_key(&key_file)?;
            let (p, client_id, request_id) =
                reviewed(&list(&mut client).await?, &request, &fingerprint)?;
            let expires = approval_expiry(expires_in.map(Into::into), unix_now(), p.deadline_unix)?;
            let msg = approvals::message(
                &client_id,
                &request_id,
                &p.fingerprint,
                Vote::Approve,
                expires,
            );
            let r = client
                .approve(v1::ApproveRequest {
                    client: client_id,
                    request_id,
                    fingerprint: p.fingerprint.clone(),
                    expires_unix: expires,
                    signature: approvals::sign(&key, &msg).to_vec(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_vote(json_out, &r);
        }
        ApprovalsCmd::Reject {
            request,
            fingerprint,
            key_file,
            reason,
        } => {
            let key = read_key(&key_file)?;
            let (p, client_id, request_id) =
                reviewed(&list(&mut client).await?, &request, &fingerprint)?;
            let expires = p.deadline_unix;
            let msg = approvals::message(
                &client_id,
                &request_id,
                &p.fingerprint,
                Vote::Reject,
                expires,
            );
            let r = client
                .reject(v1::RejectRequest {
                    client: client_id,
                    request_id,
                    fingerprint: p.fingerprint.clone(),
                    expires_unix: expires,
                    signature: approvals::sign(&key, &msg).to_vec(),
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_vote(json_out, &r);
        }
    }
    Ok(())
}

fn find(all: &v1::ListPendingResponse, request: &str) -> anyhow::Result<v1::PendingRequest> {
    let (c, r) = split(request)?;
    all.requests
        .iter()
        .find(|x| x.client == c && x.request_id == r)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no request {request} waits for approval"))
}

/// The waiting request, if its fingerprint is the one the approver reviewed.
fn reviewed(
    all: &v1::ListPendingResponse,
    request: &str,
    fingerprint: &str,
) -> anyhow::Result<(v1::PendingApproval, String, String)> {
    let r = find(all, request)?;
    let p = r.pending.clone().unwrap_or_default();
    if !p.fingerprint.eq_ignore_ascii_case(fingerprint.trim()) {
        bail!(
            "{request} now has fingerprint {}, not the {fingerprint} you reviewed; run `signerctl approvals show {request}` again",
            p.fingerprint
        );
    }
    Ok((p, r.client, r.request_id))
}

fn print_vote(json_out: bool, r: &v1::ApprovalResponse) {
    let status = r.status().as_str_name();
    let p = r.pending.clone().unwrap_or_default();
    if json_out {
        println!(
            "{:#}",
            json!({"status": status, "quorum_reached": r.quorum_reached, "audit_seq": r.audit_seq, "pending": pending_json(&p)})
        );
    } else {
        println!("{:>14}: {status}", "status");
        println!("{:>14}: {}", "quorum", quorum_line(&p));
        println!("{:>14}: {}", "quorum reached", r.quorum_reached);
        println!("{:>14}: {}", "audit seq", r.audit_seq);
    }
}

/// Prints one state of a request.
pub(crate) fn print_state(json_out: bool, s: &v1::SignRequestState) {
    use v1::sign_request_state::Response;
    let signature = match &s.response {
        Some(Response::Transaction(t)) => json!({
            "raw_transaction": format!("0x{}", hex::encode(&t.raw_transaction)),
            "transaction_hash": format!("0x{}", hex::encode(&t.transaction_hash)),
        }),
        Some(Response::Message(m)) => {
            json!({"signature": m.signature.as_ref().map(|x| format!("0x{}", hex::encode(&x.bytes)))})
        }
        Some(Response::TypedData(m)) => {
            json!({"signature": m.signature.as_ref().map(|x| format!("0x{}", hex::encode(&x.bytes)))})
        }
        Some(Response::Digest(m)) => {
            json!({"signature": m.signature.as_ref().map(|x| format!("0x{}", hex::encode(&x.bytes)))})
        }
        None => serde_json::Value::Null,
    };
    let v = json!({
        "request_id": s.request_id,
        "status": s.status().as_str_name(),
        "reason": s.reason,
        "pending": s.pending.as_ref().map(pending_json),
        "signed": signature,
    });
    if json_out {
        println!("{v:#}");
        return;
    }
    println!("{:>12}: {}", "request_id", s.request_id);
    println!("{:>12}: {}", "status", s.status().as_str_name());
    if !s.reason.is_empty() {
        println!("{:>12}: {}", "reason", s.reason);
    }
    if let Some(p) = &s.pending {
        println!("{:>12}: {}", "quorum", quorum_line(p));
        println!("{:>12}: {}", "deadline", when(p.deadline_unix));
    }
    if let serde_json::Value::Object(m) = signature {
        for (k, v) in m {
            println!("{k:>12}: {}", v.as_str().unwrap_or_default());
        }
    }
}

pub(crate) async fn run_request(
    settings: ClientSettings,
    cmd: RequestCmd,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut client = SignerClient::new(signerd::client::channel(&settings).await?);
    let RequestCmd::Status { request_id, wait } = cmd;
    if !wait {
        let s = client
            .get_sign_request(v1::GetSignRequestRequest { request_id })
            .await
            .map_err(status_error)?
            .into_inner();
        print_state(json_out, &s);
        return Ok(());
    }
    let mut stream = client
        .watch_sign_request(v1::WatchSignRequestRequest {
            request_id,
            max_wait_secs: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(s) = stream.message().await.map_err(status_error)? {
        print_state(json_out, &s);
    }
    Ok(())
}
