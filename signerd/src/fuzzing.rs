//! Entry points of the fuzz targets in `fuzz/`: one function per target, each running one
//! parser of untrusted input the way the daemon or `signerctl` runs it.
//!
//! Every function here takes arbitrary bytes and must return normally whatever they are: a
//! panic, an abort, a hang or unbounded memory is a bug in the parser it reaches. The same
//! functions replay the committed seeds and regressions (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`) in the test suite. Not an API: nothing here is stable.

use std::path::Path;
use std::sync::OnceLock;

use prost::Message;
use secrecy::SecretString;
use signerd_proto::v1;

use crate::approvals::{PendingRecord, Requirement, Status, StoredVote, Vote};
use crate::keys::{Algorithm, KeyInfo};
use crate::request::{Method, SignRequest};
use crate::service;
use signerd_auditor::note::{self, Checkpoint, Note, VerifierKey};

/// A target's entry point.
pub type EntryPoint = fn(&[u8]);

/// Every target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the directories
/// `fuzz/seeds/<name>/` and `fuzz/regressions/<name>/`) and its entry point.
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("policy_parse", policy_parse),
    ("config_parse", config_parse),
    ("evm_transaction", evm_transaction),
    ("evm_typed_data", evm_typed_data),
    ("rpc_sign_message", rpc_sign_message),
    ("rpc_sign_typed_data", rpc_sign_typed_data),
    ("rpc_sign_digest", rpc_sign_digest),
    ("rpc_vote", rpc_vote),
    ("rpc_other", rpc_other),
    ("audit_verify", audit_verify),
    ("audit_recover", audit_recover),
    ("audit_note", audit_note),
    ("audit_proof", audit_proof),
    ("keystore_file", keystore_file),
    ("wrapped_key", wrapped_key),
    ("tls_identity", tls_identity),
    ("vault_response", vault_response),
    ("policy_cases", policy_cases),
    ("policy_signatures", policy_signatures),
];

/// The verifier key of the example log in `docs/audit-example`, whose files are the audit
/// targets' seeds: with it, checkpoint signatures in mutated logs are really checked.
pub const AUDIT_VKEY: &str =
    "signerd-dev/audit+5e2edcb2+AedoMOdS2yuzg9I/UccBG2R0aBftYMwqUwYT7vKLhAoh";

/// Separates the files of one audit-log input: `<checkpoint file>SEP<segment 1>SEP<segment 2>...`
/// (an input without it is segment 1 alone, with no checkpoint file).
pub const FILE_SEPARATOR: &[u8] = b"--8<--\n";

/// Most segment files one audit-log input makes (more parts are ignored).
const MAX_SEGMENTS: usize = 4;

/// The requester of the pending request that `rpc_vote` votes on.
pub const VOTE_CLIENT: &str = "alice";
/// Its request id.
pub const VOTE_REQUEST_ID: &str = "order-1";
/// The approver who votes (a member of the request's group, with a registered key).
pub const VOTE_APPROVER: &str = "bob";
/// The seed of the approver's Ed25519 key.
pub const VOTE_APPROVER_SEED: [u8; 32] = [9; 32];
/// "Now" for `rpc_vote`, Unix seconds; the request's deadline is an hour later.
pub const VOTE_NOW: i64 = 1_800_000_000;

/// The identity of the soft key file that `keystore_file` opens, and its passphrase.
pub const KEYSTORE_ID: &str = "k";
/// The passphrase of `keystore_file`'s key file.
pub const KEYSTORE_PASSPHRASE: &str = "fuzz passphrase";

/// The derived key (AES key, MAC key) that `keystore_file` decrypts keystore v3 files with: a
/// file's own KDF runs for up to seconds, too slow for fuzzing.
pub const KEYSTORE_V3_DERIVED_KEY: [[u8; 16]; 2] = [[0x11; 16], [0x22; 16]];

/// The configured wrapping key of `wrapped_key`, and the id its file is named for.
pub const WRAPPING_KEY: &str = "signerd-wrap";
/// The key id `wrapped_key`'s file is named for.
pub const WRAPPED_ID: &str = "evm";

/// Policy files (`Policy::parse`, with its own size bound).
pub fn policy_parse(data: &[u8]) {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = signerd_policy::Policy::parse("fuzz.toml", src);
    }
}

/// The daemon's configuration file.
pub fn config_parse(data: &[u8]) {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse("fuzz.toml", src, Path::new("/"));
    }
}

/// EIP-191 message bytes and EIP-712 JSON as the chain module prepares them.
pub fn evm_typed_data(data: &[u8]) {
    let _ = crate::chain::evm::prepare_message("k", data);
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = crate::chain::evm::prepare_typed_data("k", json);
    }
}

/// The keys `rpc_*` requests may name: `evm` (secp256k1), `ed` (Ed25519), `p256` (P-256).
fn fuzz_key(id: &str) -> Option<KeyInfo> {
    let (algorithm, len) = match id {
        "evm" => (Algorithm::Secp256k1, 33),
        "ed" => (Algorithm::Ed25519, 32),
        "p256" => (Algorithm::P256, 33),
        _ => return None,
    };
    Some(KeyInfo {
        id: id.to_owned(),
        algorithm,
        backend: "soft",
        public_key: vec![2; len],
        version: None,
    })
}

/// A signing RPC's encoded request through everything the daemon does before the policy:
/// protobuf decoding, request-id and key-id validation, decoding into an action, the
/// idempotency and approval fingerprints, and the action as the audit log records it.
fn sign_rpc(method: Method, data: &[u8]) {
    let Ok(request) = SignRequest::decode(method, data) else {
        return;
    };
    let Ok(p) = service::prepare_request(&fuzz_key, request) else {
        return;
    };
    let _ = service::validate_request_id(&p.request_id);
    let _ = service::fingerprint(&p);
    let _ = p.approval_fingerprint(&[0x5a; 32]);
    let _ = serde_json::to_vec(&p.action);
    if let Some(tx) = p.transaction() {
        let _ = tx.signing_hash();
        let _ = tx.encode_signed([0x11; 32], [0x22; 32], data.len().is_multiple_of(2));
    }
}

/// `SignEvmTransaction` requests.
pub fn evm_transaction(data: &[u8]) {
    sign_rpc(Method::SignEvmTransaction, data);
}

/// `SignEvmMessage` requests (EIP-191).
pub fn rpc_sign_message(data: &[u8]) {
    sign_rpc(Method::SignEvmMessage, data);
}

/// `SignTypedData` requests (EIP-712 JSON inside protobuf).
pub fn rpc_sign_typed_data(data: &[u8]) {
    sign_rpc(Method::SignTypedData, data);
}

/// `SignDigest` requests.
pub fn rpc_sign_digest(data: &[u8]) {
    sign_rpc(Method::SignDigest, data);
}

/// The pending request `rpc_vote` votes on: `bob` has not voted; `carol` has.
fn vote_pending() -> PendingRecord {
    PendingRecord {
        client: VOTE_CLIENT.to_owned(),
        roles: vec!["requester".to_owned()],
        cert_sha256: "00".repeat(32),
        request_id: VOTE_REQUEST_ID.to_owned(),
        method: Method::SignEvmTransaction.as_str().to_owned(),
        key_id: "evm".to_owned(),
        request: String::new(),
        request_fingerprint: "11".repeat(32),
        fingerprint: vote_fingerprint(),
        created: VOTE_NOW - 60,
        deadline: VOTE_NOW + 3600,
        rules: vec!["big-transfers".to_owned()],
        requirements: vec![Requirement {
            group: "treasury".to_owned(),
            min: 2,
            members: vec![VOTE_APPROVER.to_owned(), "carol".to_owned()],
            veto: true,
        }],
        policy_serial: 1,
        policy_hash: "22".repeat(32),
        action: serde_json::Value::Null,
        explanation: Vec::new(),
        votes: vec![StoredVote {
            approver: "carol".to_owned(),
            vote: Vote::Approve,
            expires: VOTE_NOW + 600,
            signature: "33".repeat(64),
            public_key: "44".repeat(32),
            cert_sha256: "55".repeat(32),
            reason: None,
            ts: VOTE_NOW - 30,
        }],
        status: Status::Pending,
        reason: None,
        signing_since: None,
    }
}

/// The approval fingerprint of `rpc_vote`'s pending request, hex.
pub fn vote_fingerprint() -> String {
    hex::encode([0xab; 32])
}

/// The approver's public key.
fn vote_public_key() -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&VOTE_APPROVER_SEED)
        .verifying_key()
        .to_bytes()
}

/// `Approve` (first byte even) and `Reject` (odd) requests, the rest of the input being the
/// encoded request: decoded, their fields validated, then checked as `VOTE_APPROVER`'s vote
/// on a pending request (fingerprint, expiry, one live vote, Ed25519 signature).
pub fn rpc_vote(data: &[u8]) {
    let Some((&kind, encoded)) = data.split_first() else {
        return;
    };
    let vote = if kind.is_multiple_of(2) {
        v1::ApproveRequest::decode(encoded).map(crate::api::wire::approve_request)
    } else {
        v1::RejectRequest::decode(encoded).map(crate::api::wire::reject_request)
    };
    let Ok(vote) = vote else {
        return;
    };
    if vote.check_fields().is_err() {
        return;
    }
    let rec = vote_pending();
    let _ = service::check_ballot(&rec, VOTE_APPROVER, &vote_public_key(), &vote, VOTE_NOW);
}

/// The requests of every other RPC, chosen by the first byte: `ListKeys`, `GetKey`,
/// `GetSignRequest`, `WatchSignRequest`, `ListPending`, `ReloadPolicy`; decoded and their
/// identifiers validated as the daemon does.
pub fn rpc_other(data: &[u8]) {
    let Some((&kind, encoded)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            let _ = v1::ListKeysRequest::decode(encoded);
        }
        1 => {
            if let Ok(r) = v1::GetKeyRequest::decode(encoded) {
                let _ = crate::keys::key_id(&r.key_id);
            }
        }
        2 => {
            if let Ok(r) = v1::GetSignRequestRequest::decode(encoded) {
                let _ = service::validate_request_id(&r.request_id);
            }
        }
        3 => {
            if let Ok(r) = v1::WatchSignRequestRequest::decode(encoded) {
                let _ = service::validate_request_id(&r.request_id);
            }
        }
        4 => {
            let _ = v1::ListPendingRequest::decode(encoded);
        }
        _ => {
            let _ = v1::ReloadPolicyRequest::decode(encoded);
        }
    }
}

fn audit_key() -> &'static VerifierKey {
    static KEY: OnceLock<VerifierKey> = OnceLock::new();
    KEY.get_or_init(|| match VerifierKey::parse(AUDIT_VKEY) {
        Ok(k) => k,
        Err(e) => panic!("AUDIT_VKEY does not parse: {e}"),
    })
}

/// Writes an audit-log input (see [`FILE_SEPARATOR`]) into a fresh directory: the checkpoint
/// text (if any) and the directory, or `None` if the directory cannot be made.
fn write_log(data: &[u8]) -> Option<(Option<String>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().ok()?;
    let parts = split(data, FILE_SEPARATOR);
    let (checkpoint, segments) = match parts.split_first() {
        Some((first, rest)) if !rest.is_empty() => (Some(*first), rest),
        _ => (None, &parts[..]),
    };
    let mut text = None;
    if let Some(c) = checkpoint.filter(|c| !c.is_empty()) {
        std::fs::write(dir.path().join("checkpoint"), c).ok()?;
        text = Some(String::from_utf8_lossy(c).into_owned());
    }
    for (i, seg) in segments.iter().take(MAX_SEGMENTS).enumerate() {
        let name = format!("segment-{:08}.jsonl", i + 1);
        std::fs::write(dir.path().join(name), seg).ok()?;
    }
    Some((text, dir))
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

/// The log readers of `signerctl audit verify` (with and without the verifier key, with the
/// checkpoint also given as one kept elsewhere), `signerctl audit prove` and `signerctl audit
/// query`, over a log directory made from the input (see [`FILE_SEPARATOR`]).
pub fn audit_verify(data: &[u8]) {
    use signerd_auditor::verify::{VerifyOptions, verify_dir};
    let Some((checkpoint, dir)) = write_log(data) else {
        return;
    };
    let with_key = VerifyOptions {
        key: Some(audit_key().clone()),
        checkpoints: checkpoint
            .into_iter()
            .map(|c| ("kept checkpoint".to_owned(), c))
            .collect(),
        live: data.first().is_some_and(|b| b & 1 == 1),
        since: None,
    };
    let _ = verify_dir(dir.path(), &with_key);
    let _ = verify_dir(dir.path(), &VerifyOptions::default());
    if let Ok(proof) = signerd_auditor::prove::prove(dir.path(), 1) {
        let _ = signerd_auditor::prove::check(&proof, Some(audit_key()));
    }
    let _ = signerd_auditor::query::query(
        dir.path(),
        &signerd_auditor::query::Filter::default(),
        |_| Ok(()),
    );
}

/// The start-up scan of crash recovery, which decides what to cut and what to refuse, over a
/// log directory made from the input (see [`FILE_SEPARATOR`]).
pub fn audit_recover(data: &[u8]) {
    let Some((_, dir)) = write_log(data) else {
        return;
    };
    let _ = crate::audit::recover::scan(dir.path(), audit_key(), None);
}

/// C2SP checkpoints and signed notes (the `checkpoint` file, `audit.checkpoint` records,
/// checkpoints given to `signerctl audit verify --checkpoint`, witness input), verifier
/// keys, witness keys and cosignatures, and `add-checkpoint` request bodies.
pub fn audit_note(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Note::parse(text);
    let _ = note::parse_note(text);
    let _ = note::verify_note(text, audit_key());
    let _ = Checkpoint::parse_body(text);
    let _ = VerifierKey::parse(text.trim_end());
    // Witness input: cosignature keys and lines, and add-checkpoint request bodies.
    use signerd_auditor::cosignature::{self, AddCheckpoint, CosignerKey};
    let _ = CosignerKey::parse(text.trim_end());
    if let Ok(k) = CosignerKey::new("witness.example/w1", &[0x3d; 32]) {
        let _ = cosignature::verify_cosignature(text, &k);
    }
    if let Ok(req) = AddCheckpoint::parse(data) {
        let _ = note::parse_note(&req.checkpoint);
        let _ = AddCheckpoint::parse(req.to_body().as_bytes());
    }
}

/// Inclusion-proof JSON as `signerctl audit check-proof` reads it, checked without and with
/// the verifier key.
pub fn audit_proof(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(proof) = serde_json::from_str::<signerd_auditor::prove::InclusionProof>(text) else {
        return;
    };
    let _ = signerd_auditor::prove::check(&proof, None);
    let _ = signerd_auditor::prove::check(&proof, Some(audit_key()));
}

/// Key files: the soft backend's key file (parsed, its KDF parameters checked, decrypted with
/// [`KEYSTORE_PASSPHRASE`]) and the keystore v3 files that `signerctl keys import` reads
/// (parsed and checked, then the MAC check and decryption under [`KEYSTORE_V3_DERIVED_KEY`]
/// instead of running the file's KDF). Both readers refuse files over 64 KiB before parsing.
pub fn keystore_file(data: &[u8]) {
    if data.len() as u64 > crate::keys::files::MAX_FILE_BYTES {
        return;
    }
    let passphrase = SecretString::from(KEYSTORE_PASSPHRASE);
    let _ = crate::keys::soft::file::decode(KEYSTORE_ID, data, &passphrase);
    if let Ok(v3) = crate::keys::hazmat::keystore_v3::Keystore::parse(data) {
        let _ = v3.decrypt_with_derived_key(&KEYSTORE_V3_DERIVED_KEY);
    }
}

/// Vault-wrapped key files (`<id>.wrapped.json`), refused over 64 KiB like key files.
pub fn wrapped_key(data: &[u8]) {
    if data.len() as u64 > crate::keys::files::MAX_FILE_BYTES {
        return;
    }
    let path = Path::new("evm.wrapped.json");
    let _ = crate::keys::vault::wrapped::parse(WRAPPED_ID, path, data, WRAPPING_KEY);
}

/// PEM files of certificates and CRLs as the listener loads them (CA certificates into the
/// client verifier with the CRLs), and every certificate (PEM, or the whole input as DER)
/// mapped to an identity as a verified client certificate is.
pub fn tls_identity(data: &[u8]) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
    let map = identity_map();
    let _ = map.resolve(data);
    let certs = CertificateDer::pem_slice_iter(data).collect::<Result<Vec<_>, _>>();
    let crls = CertificateRevocationListDer::pem_slice_iter(data).collect::<Result<Vec<_>, _>>();
    let (Ok(certs), Ok(crls)) = (certs, crls) else {
        return;
    };
    for c in &certs {
        let _ = map.resolve(c);
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let _ = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider,
    )
    .with_crls(crls)
    .build();
}

fn identity_map() -> &'static crate::tls::IdentityMap {
    static MAP: OnceLock<crate::tls::IdentityMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let entry = |id: &str, cn: Option<&str>, uri: Option<&str>, sha: Option<&str>| {
            crate::config::IdentityConfig {
                id: id.to_owned(),
                roles: vec!["requester".to_owned()],
                subject_cn: cn.map(str::to_owned),
                san_uri: uri.map(str::to_owned),
                sha256: sha.map(str::to_owned),
            }
        };
        crate::tls::IdentityMap::new(&[
            entry("payments", Some("payments"), None, None),
            entry("spiffe", None, Some("spiffe://example.org/payments"), None),
            entry("pinned", None, None, Some(&"ab".repeat(32))),
            entry("twice", Some("payments"), None, None),
        ])
    })
}

/// Vault and OpenBao response bodies (at most `MAX_RESPONSE_BYTES`, as the transport reads
/// them), chosen by the first byte, parsed as the transit calls parse them and then read as
/// signerd reads them: a key's versions and public keys, a signature (checked against a key),
/// an unwrapped key, a wrapped ciphertext, a key list.
pub fn vault_response(data: &[u8]) {
    use crate::keys::vault::transit;
    use vaultrs::api::EndpointResult;
    use vaultrs::api::transit::responses::{
        DecryptDataResponse, EncryptDataResponse, ListKeysResponse, ReadKeyResponse,
        SignDataResponse,
    };
    fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
        serde_json::from_slice::<EndpointResult<T>>(b).ok()?.data
    }
    let Some((&kind, b)) = data.split_first() else {
        return;
    };
    // The transport refuses larger bodies before anything parses them.
    if b.len() > crate::keys::vault::http::MAX_RESPONSE_BYTES {
        return;
    }
    match kind % 5 {
        0 => {
            if let Some(r) = body::<ReadKeyResponse>(b) {
                let _ = transit::key_from_response("k", r, None);
            }
            if let Some(r) = body::<ReadKeyResponse>(b) {
                let _ = transit::key_from_response("k", r, Some(2));
            }
        }
        1 => {
            if let Some(r) = body::<SignDataResponse>(b) {
                let ed = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
                let _ = transit::parse_signature(
                    Algorithm::Ed25519,
                    ed.as_bytes(),
                    1,
                    b"message",
                    &r.signature,
                );
                let p256 = [
                    0x03, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5,
                    0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4,
                    0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
                ];
                let _ = transit::parse_signature(Algorithm::P256, &p256, 1, &[7; 32], &r.signature);
            }
        }
        2 => {
            if let Some(mut r) = body::<DecryptDataResponse>(b) {
                let _ = transit::unwrapped_key("w", &mut r.plaintext);
            }
        }
        3 => {
            if let Some(r) = body::<EncryptDataResponse>(b) {
                let _ = transit::split_versioned(&r.ciphertext);
            }
        }
        _ => {
            let _ = body::<ListKeysResponse>(b);
        }
    }
}

/// Policy test-case files (`signerctl policy test`) run against the example treasury policy.
pub fn policy_cases(data: &[u8]) {
    static POLICY: OnceLock<Option<signerd_policy::Policy>> = OnceLock::new();
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let policy = POLICY.get_or_init(|| {
        signerd_policy::Policy::parse(
            "treasury.toml",
            include_str!("../../policy/examples/treasury.toml"),
        )
        .ok()
    });
    if let Some(policy) = policy {
        let _ = signerd_policy::run_test_file(policy, "fuzz.cases.toml", src);
    }
}

/// The governed policy whose signatures `policy_signatures` counts.
pub const SIGNED_POLICY: &str = include_str!("fuzzing/policy_signatures.toml");
/// The origin `policy_signatures` checks signatures for.
pub const SIGNED_POLICY_ORIGIN: &str = "fuzz/audit";

/// Policy signature files (`policy.toml.sig`), parsed and counted against a governed policy,
/// with and without a policy in force to compare with.
pub fn policy_signatures(data: &[u8]) {
    static POLICY: OnceLock<Option<signerd_policy::Policy>> = OnceLock::new();
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(signatures) = signerd_policy::parse_signatures("fuzz.sig", src) else {
        return;
    };
    let policy =
        POLICY.get_or_init(|| signerd_policy::Policy::parse("signed.toml", SIGNED_POLICY).ok());
    let Some(policy) = policy else {
        return;
    };
    let Some(governance) = policy.governance() else {
        return;
    };
    for in_force in [None, Some(policy)] {
        let _ = signerd_policy::admit(&signerd_policy::Candidate {
            governance,
            in_force,
            new: policy,
            origin: SIGNED_POLICY_ORIGIN,
            signatures: &signatures,
        });
    }
}

#[cfg(test)]
mod tests;
