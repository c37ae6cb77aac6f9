//! Signed checkpoints of the audit log: the C2SP `tlog-checkpoint` text, signed as a C2SP
//! `signed-note` with Ed25519, and verifier keys in the C2SP `vkey` form.
//!
//! Specifications: <https://c2sp.org/tlog-checkpoint> and <https://c2sp.org/signed-note>.
//! A checkpoint note is
//!
//! ```text
//! <origin>\n<tree size, decimal>\n<base64 root hash>\n\n— <key name> <base64(key id || signature)>\n
//! ```
//!
//! where the signature is Ed25519 over the text before the blank line (its three lines with
//! their newlines) and the key id is the first four bytes of
//! SHA-256(key name || 0x0A || 0x01 || public key). Written here rather than taken from the
//! `signed_note` crate because the log needs one signature algorithm and one note shape, and
//! that crate brings `thiserror` 1 and an older `base64` for a few dozen lines of parsing.
//!
//! This module must never accept a note whose signature it has not verified when a verifier
//! key is given, treat a signature by another key name or key id as the log's, or accept
//! control characters, a missing final newline or a malformed tree size.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signature type byte of Ed25519 in C2SP signed notes.
pub const ED25519_TYPE: u8 = 0x01;
/// Longest note accepted.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;
/// Most signature lines accepted in one note.
const MAX_SIGNATURES: usize = 100;
/// The prefix of every signature line: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note, checkpoint or verifier key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The text does not have the required shape.
    #[error("malformed note: {0}")]
    Malformed(String),
    /// The checkpoint text inside the note is not a valid checkpoint.
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    /// A verifier key is not in `<name>+<hex key id>+<base64 key>` form.
    #[error("malformed verifier key: {0}")]
    VerifierKey(String),
    /// No signature line by the verifier key's name and key id.
    #[error("the note has no signature by {0}")]
    Unsigned(String),
    /// A signature line by the key does not verify.
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// The signer failed.
    #[error("cannot sign the checkpoint: {0}")]
    Sign(String),
}

/// A key name (and log origin): non-empty, printable ASCII without spaces or `+`, at most 255
/// bytes. C2SP allows any UTF-8 without spaces or `+`; printable ASCII keeps logs greppable.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "{name:?} must be 1 to 255 characters long (it is {})",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic() || *c == '+') {
        return Err(format!(
            "{name:?} contains {c:?}; use printable ASCII without spaces or `+` (for example `audit.example.com/signerd`)"
        ));
    }
    Ok(())
}

/// The C2SP key id of an Ed25519 key: the first four bytes of
/// SHA-256(name || 0x0A || 0x01 || public key).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ED25519_TYPE])
        .chain_update(public_key)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Something that can sign checkpoints with the audit log's own Ed25519 key. Synchronous,
/// because the audit writer is a plain thread. Implementations must never be the key of a
/// client-facing signing backend.
pub trait CheckpointSigner: Send + Sync + 'static {
    /// The key name, which is also the origin line of every checkpoint.
    fn name(&self) -> &str;
    /// The Ed25519 public key (RFC 8032 encoding).
    fn public_key(&self) -> [u8; 32];
    /// Signs `message` with Ed25519. The error must not contain key material.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String>;
    /// Whether every signature [`CheckpointSigner::sign`] returns was already verified against
    /// [`CheckpointSigner::public_key`] (a key held by an HSM or Vault, whose backend checks
    /// each one). [`Checkpoint::sign`] verifies the note it made otherwise.
    fn verifies_its_signatures(&self) -> bool {
        false
    }
}

/// A verifier key: name, key id and Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

impl std::fmt::Display for VerifierKey {
    /// The C2SP vkey form: `<name>+<hex key id>+<base64(0x01 || public key)>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ED25519_TYPE);
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw)
        )
    }
}

impl VerifierKey {
    /// The verifier key of `name` and an Ed25519 public key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<VerifierKey, NoteError> {
        validate_name(name).map_err(NoteError::VerifierKey)?;
        let key = VerifyingKey::from_bytes(public_key)
            .map_err(|_| NoteError::VerifierKey("not a valid Ed25519 public key".to_owned()))?;
        Ok(VerifierKey {
            name: name.to_owned(),
            id: key_id(name, public_key),
            key,
        })
    }

    /// Parses the C2SP vkey form `<name>+<8 hex digits>+<base64(0x01 || 32-byte key)>`.
    pub fn parse(vkey: &str) -> Result<VerifierKey, NoteError> {
        let bad = |why: &str| NoteError::VerifierKey(why.to_owned());
        let vkey = vkey.trim();
        let (name, rest) = vkey
            .split_once('+')
            .ok_or_else(|| bad("expected <name>+<key id>+<key>"))?;
        let (id_hex, key_b64) = rest
            .split_once('+')
            .ok_or_else(|| bad("expected <name>+<key id>+<key>"))?;
        validate_name(name).map_err(NoteError::VerifierKey)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the key id must be 8 hex digits"));
        }
        let raw = B64
            .decode(key_b64)
            .map_err(|_| bad("the key is not valid base64"))?;
        if raw.len() != 33 || raw[0] != ED25519_TYPE {
            return Err(bad(
                "the key must be 0x01 (Ed25519) followed by a 32-byte public key",
            ));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let parsed = VerifierKey::new(name, &pk)?;
        if !hex::encode(parsed.id).eq_ignore_ascii_case(id_hex) {
            return Err(NoteError::VerifierKey(format!(
                "the key id {id_hex} does not match the name and key (expected {})",
                hex::encode(parsed.id)
            )));
        }
        Ok(parsed)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

/// A checkpoint: the log's origin, its size and the root hash of its first `size` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The origin line (the log's name).
    pub origin: String,
    /// Number of records covered.
    pub size: u64,
    /// RFC 6962 root hash of those records.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint text that is signed: three lines, each ending in `\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a checkpoint text (the part of a note before the blank line). Extension lines
    /// after the root are allowed by the format and ignored.
    pub fn parse_body(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |why: String| NoteError::Checkpoint(why);
        let Some(text) = text.strip_suffix('\n') else {
            return Err(bad("the text must end with a newline".to_owned()));
        };
        let mut lines = text.split('\n');
        let origin = lines.next().unwrap_or_default();
        validate_name(origin).map_err(|e| bad(format!("origin {e}")))?;
        let size_line = lines
            .next()
            .ok_or_else(|| bad("the tree size line is missing".to_owned()))?;
        let size = parse_decimal(size_line)
            .ok_or_else(|| bad(format!("tree size {size_line:?} is not a decimal number")))?;
        let root_line = lines
            .next()
            .ok_or_else(|| bad("the root hash line is missing".to_owned()))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad(format!("root {root_line:?} is not base64 of 32 bytes")))?;
        for ext in lines {
            if ext.is_empty() {
                return Err(bad("empty line inside the checkpoint text".to_owned()));
            }
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs the checkpoint: the complete note text, ending with the signature line. The
    /// signature is verified before it is returned, so a faulty signer cannot produce a
    /// checkpoint that verifiers will reject.
    pub fn sign(&self, signer: &dyn CheckpointSigner) -> Result<String, NoteError> {
        let body = self.body();
        let name = signer.name();
        let public_key = signer.public_key();
        let vkey = VerifierKey::new(name, &public_key)?;
        let sig = signer.sign(body.as_bytes()).map_err(NoteError::Sign)?;
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&vkey.id);
        raw.extend_from_slice(&sig);
        let note = format!("{body}\n{SIG_PREFIX}{name} {}\n", B64.encode(raw));
        if !signer.verifies_its_signatures() {
            verify_note(&note, &vkey).map_err(|e| NoteError::Sign(e.to_string()))?;
        }
        Ok(note)
    }
}

/// `s` as a u64 if it is a canonical decimal number (no sign, no leading zeros).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key id (first four bytes of the decoded signature).
    pub key_id: [u8; 4],
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

/// A note split into its text and signature lines, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending with `\n`.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Splits a note at its last blank line and parses the signature lines.
    pub fn parse(note: &str) -> Result<Note, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_owned());
        if note.len() > MAX_NOTE_BYTES {
            return Err(bad("longer than 16384 bytes"));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("contains control characters"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let text = &note[..split + 1];
        let sigs = &note[split + 2..];
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(bad("the signatures must end with a newline"));
        };
        if sigs.is_empty() {
            return Err(bad("no signature lines"));
        }
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(bad("more than 100 signature lines"));
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with \"— \""))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no space between name and signature"))?;
            validate_name(name).map_err(|e| NoteError::Malformed(format!("signer name {e}")))?;
            let raw = B64
                .decode(b64)
                .map_err(|_| bad("a signature is not valid base64"))?;
            if raw.len() < 5 {
                return Err(bad("a signature is shorter than its key id"));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id: [raw[0], raw[1], raw[2], raw[3]],
                signature: raw[4..].to_vec(),
            });
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }
}

/// Parses a checkpoint note without checking signatures.
pub fn parse_note(note: &str) -> Result<(Checkpoint, Note), NoteError> {
    let parsed = Note::parse(note)?;
    let checkpoint = Checkpoint::parse_body(&parsed.text)?;
    Ok((checkpoint, parsed))
}

/// Parses a checkpoint note and checks that `key` signed it (and that the origin is the key
/// name). Signatures by other keys are allowed (cosignatures) and ignored.
pub fn verify_note(note: &str, key: &VerifierKey) -> Result<Checkpoint, NoteError> {
    let (checkpoint, parsed) = parse_note(note)?;
    let mut found = false;
    for sig in &parsed.signatures {
        if sig.name != key.name || sig.key_id != key.id {
            continue;
        }
        found = true;
        let bytes: [u8; 64] = sig
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::BadSignature(key.to_string()))?;
        key.key
            .verify_strict(parsed.text.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| NoteError::BadSignature(key.to_string()))?;
    }
    if !found {
        return Err(NoteError::Unsigned(key.to_string()));
    }
    if checkpoint.origin != key.name {
        return Err(NoteError::Checkpoint(format!(
            "origin {:?} is not the key name {:?}",
            checkpoint.origin, key.name
        )));
    }
    Ok(checkpoint)
}

/// An Ed25519 key held in memory, for tests.
#[cfg(test)]
pub(crate) struct MemorySigner {
    pub(crate) name: String,
    pub(crate) key: ed25519_dalek::SigningKey,
}

#[cfg(test)]
impl MemorySigner {
    /// A signer from a fixed seed.
    pub(crate) fn from_seed(name: &str, seed: [u8; 32]) -> MemorySigner {
        MemorySigner {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }
}

#[cfg(test)]
impl CheckpointSigner for MemorySigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(message).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// RFC 8032 §7.1 test 1 secret key.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn seed() -> [u8; 32] {
        hex::decode(SEED).unwrap().try_into().unwrap()
    }

    #[test]
    fn golang_sumdb_note_example_verifies() {
        // The example key and note of golang.org/x/mod/sumdb/note, an independent
        // implementation of the same format.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let key = VerifierKey::parse(vkey).unwrap();
        assert_eq!(key.to_string(), vkey);
        assert_eq!(hex::encode(key.id()), "c74f20a3");
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = Note::parse(note).unwrap();
        assert_eq!(parsed.signatures.len(), 1);
        assert_eq!(parsed.signatures[0].key_id, key.id());
        let sig: [u8; 64] = parsed.signatures[0]
            .signature
            .as_slice()
            .try_into()
            .unwrap();
        key.key
            .verify_strict(parsed.text.as_bytes(), &Signature::from_bytes(&sig))
            .unwrap();
        // The Go example's private key signs to the same bytes (Ed25519 is deterministic).
        let skey = B64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap();
        let signer = MemorySigner::from_seed("PeterNeumann", skey[1..].try_into().unwrap());
        assert_eq!(signer.public_key(), key.public_key());
        assert_eq!(signer.sign(parsed.text.as_bytes()).unwrap(), sig);
    }

    #[test]
    fn checkpoint_sign_verify_fixed_key_vector() {
        let signer = MemorySigner::from_seed("audit.example.com/log", seed());
        // RFC 8032 test 1 public key.
        assert_eq!(
            hex::encode(signer.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let cp = Checkpoint {
            origin: "audit.example.com/log".to_owned(),
            size: 42,
            root: [0xab; 32],
        };
        assert_eq!(
            cp.body(),
            "audit.example.com/log\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"
        );
        let note = cp.sign(&signer).unwrap();

        // Independent check with ring: key id, and the signature over the body.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"audit.example.com/log\n\x01");
        ctx.update(&signer.public_key());
        let id = &ctx.finish().as_ref()[..4].to_vec();
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed()).unwrap();
        let ring_sig = pair.sign(cp.body().as_bytes());
        let mut raw = id.clone();
        raw.extend_from_slice(ring_sig.as_ref());
        assert_eq!(
            note,
            format!(
                "{}\n— audit.example.com/log {}\n",
                cp.body(),
                B64.encode(&raw)
            )
        );

        let vkey = VerifierKey::new(&signer.name, &signer.public_key()).unwrap();
        assert_eq!(vkey.id().to_vec(), *id);
        let text = vkey.to_string();
        assert_eq!(
            text,
            format!(
                "audit.example.com/log+{}+{}",
                hex::encode(id),
                B64.encode([&[1u8][..], &signer.public_key()].concat())
            )
        );
        assert_eq!(VerifierKey::parse(&text).unwrap(), vkey);
        assert_eq!(verify_note(&note, &vkey).unwrap(), cp);
        assert_eq!(parse_note(&note).unwrap().0, cp);

        // Tampering with the size, the root or the signature is caught.
        let forged = note.replace("\n42\n", "\n43\n");
        assert!(matches!(
            verify_note(&forged, &vkey),
            Err(NoteError::BadSignature(_))
        ));
        let other = MemorySigner::from_seed("audit.example.com/log", [7; 32]);
        let other_note = cp.sign(&other).unwrap();
        assert!(matches!(
            verify_note(&other_note, &vkey),
            Err(NoteError::Unsigned(_))
        ));
        // The same key under another name is another key id.
        let renamed = VerifierKey::new("other", &signer.public_key()).unwrap();
        assert_ne!(renamed.id(), vkey.id());
        assert!(verify_note(&note, &renamed).is_err());
        // A signature line claiming our id with wrong bytes.
        let mut bad_raw = raw.clone();
        bad_raw[10] ^= 1;
        let bad = format!(
            "{}\n— audit.example.com/log {}\n",
            cp.body(),
            B64.encode(&bad_raw)
        );
        assert!(matches!(
            verify_note(&bad, &vkey),
            Err(NoteError::BadSignature(_))
        ));
        // A cosignature by someone else is ignored.
        let cosigned = format!("{note}— witness {}\n", B64.encode([9u8; 68]));
        assert_eq!(verify_note(&cosigned, &vkey).unwrap(), cp);
    }

    #[test]
    fn malformed_notes_and_keys_are_refused() {
        let good = "o\n1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n";
        assert!(Checkpoint::parse_body(good).is_ok());
        for (text, want) in [
            (
                "o\n1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
                "end with a newline",
            ),
            (
                "o\n01\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
                "not a decimal",
            ),
            (
                "o\n-1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
                "not a decimal",
            ),
            (
                "o\n18446744073709551616\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
                "not a decimal",
            ),
            ("o\n1\nq6ur\n", "32 bytes"),
            (
                "o o\n1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
                "origin",
            ),
            (
                "\n1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
                "origin",
            ),
            ("o\n1\n", "root hash line is missing"),
        ] {
            let e = Checkpoint::parse_body(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        for (note, want) in [
            (format!("{good}— o AAAA\n"), "no blank line"),
            (format!("{good}\n— o AAAAAA==\n\u{7}"), "control"),
            (format!("{good}\n— o AAAAAA=="), "end with a newline"),
            (format!("{good}\n- o AAAAAAAA\n"), "does not start"),
            (format!("{good}\n— oAAAAAAAA\n"), "no space"),
            (format!("{good}\n— o AAAA\n"), "shorter than its key id"),
            (format!("{good}\n— o !!!!\n"), "base64"),
        ] {
            let e = Note::parse(&note).unwrap_err().to_string();
            assert!(e.contains(want), "{note:?}: {e}");
        }
        for (vkey, want) in [
            ("name", "expected"),
            ("name+c74f20a3", "expected"),
            (
                "na me+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "spaces",
            ),
            (
                "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "8 hex",
            ),
            (
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "does not match",
            ),
            (
                "PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "0x01",
            ),
            (
                "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",
                "0x01",
            ),
            (
                "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
                "base64",
            ),
        ] {
            let e = VerifierKey::parse(vkey).unwrap_err().to_string();
            assert!(e.contains(want), "{vkey}: {e}");
        }
    }
}
