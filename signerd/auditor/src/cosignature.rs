//! Witness cosignatures of checkpoints (C2SP `tlog-cosignature`, Ed25519 type) and the body of
//! a C2SP `tlog-witness` `add-checkpoint` request.
//!
//! Specifications: <https://c2sp.org/tlog-cosignature> and <https://c2sp.org/tlog-witness>.
//! A cosignature is one more signature line on a checkpoint note,
//!
//! ```text
//! — <witness name> base64(key id || u64 timestamp, big-endian || Ed25519 signature)
//! ```
//!
//! where the key id is the first four bytes of SHA-256(name || 0x0A || 0x04 || public key)
//! and the signature is over `cosignature/v1\ntime <timestamp>\n` followed by the
//! checkpoint text (the note up to, not including, the blank line). A witness key is written
//! as a vkey with signature type 0x04: `<name>+<hex key id>+<base64(0x04 || public key)>`.
//!
//! This module only verifies and formats; it holds no signing key. It must never accept a
//! cosignature by another name or key id as the witness's, a timestamp above 2^63 - 1, or a
//! request body with more than 63 proof lines or a malformed size line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;
use crate::note::{self, Checkpoint, NoteError};

/// The signature type byte of Ed25519 cosignatures (`cosignature/v1`).
pub const COSIGNATURE_TYPE: u8 = 0x04;
/// The header line of the signed message.
pub const HEADER: &str = "cosignature/v1";
/// Most consistency proof lines in an `add-checkpoint` request.
pub const MAX_PROOF_LINES: usize = 63;
/// Longest `add-checkpoint` request body: the old size line, 63 proof lines and a note.
pub const MAX_REQUEST_BYTES: usize = 32 + MAX_PROOF_LINES * 46 + note::MAX_NOTE_BYTES;
/// Largest timestamp a cosignature may carry.
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// A witness's public key: name, key id (type 0x04) and Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl std::fmt::Debug for CosignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CosignerKey({self})")
    }
}

impl std::fmt::Display for CosignerKey {
    /// The vkey form `<name>+<hex key id>+<base64(0x04 || public key)>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(COSIGNATURE_TYPE);
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

/// The cosignature key id of an Ed25519 key: the first four bytes of
/// SHA-256(name || 0x0A || 0x04 || public key).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', COSIGNATURE_TYPE])
        .chain_update(public_key)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

impl CosignerKey {
    /// The key of witness `name` with an Ed25519 public key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<CosignerKey, NoteError> {
        note::validate_name(name).map_err(NoteError::VerifierKey)?;
        let key = VerifyingKey::from_bytes(public_key)
            .map_err(|_| NoteError::VerifierKey("not a valid Ed25519 public key".to_owned()))?;
        Ok(CosignerKey {
            name: name.to_owned(),
            id: key_id(name, public_key),
            key,
        })
    }

    /// Parses `<name>+<8 hex digits>+<base64(0x04 || 32-byte key)>`.
    pub fn parse(vkey: &str) -> Result<CosignerKey, NoteError> {
        let bad = |why: &str| NoteError::VerifierKey(why.to_owned());
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected <name>+<key id>+<key>"));
        };
        note::validate_name(name).map_err(NoteError::VerifierKey)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the key id must be 8 hex digits"));
        }
        let raw = B64
            .decode(key_b64)
            .map_err(|_| bad("the key is not valid base64"))?;
        if raw.len() != 33 || raw[0] != COSIGNATURE_TYPE {
            return Err(bad(
                "a witness key must be 0x04 (Ed25519 cosignature/v1) followed by a 32-byte public key",
            ));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let parsed = CosignerKey::new(name, &pk)?;
        if !hex::encode(parsed.id).eq_ignore_ascii_case(id_hex) {
            return Err(NoteError::VerifierKey(format!(
                "the key id {id_hex} does not match the name and key (expected {})",
                hex::encode(parsed.id)
            )));
        }
        Ok(parsed)
    }

    /// The witness name.
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

/// The message a witness signs: the header line, the time line, then the checkpoint text
/// (the note up to, not including, the blank line; it ends with a newline).
pub fn signed_message(timestamp: u64, checkpoint_text: &str) -> String {
    format!("{HEADER}\ntime {timestamp}\n{checkpoint_text}")
}

/// One cosignature line, ending with a newline.
pub fn signature_line(key: &CosignerKey, timestamp: u64, signature: &[u8; 64]) -> String {
    let mut raw = Vec::with_capacity(76);
    raw.extend_from_slice(&key.id);
    raw.extend_from_slice(&timestamp.to_be_bytes());
    raw.extend_from_slice(signature);
    format!("\u{2014} {} {}\n", key.name, B64.encode(raw))
}

/// A verified cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    /// The checkpoint it covers.
    pub checkpoint: Checkpoint,
    /// When the witness signed it (POSIX seconds).
    pub timestamp: u64,
}

/// Checks that `note` (a checkpoint note) carries a valid cosignature by `key`. Other
/// signature lines are ignored; the log's own signature is not checked here (see
/// [`note::verify_note`]). With several cosignatures by the key, the newest valid one counts;
/// any line by the key that does not verify is an error.
pub fn verify_cosignature(note_text: &str, key: &CosignerKey) -> Result<Cosigned, NoteError> {
    let (checkpoint, parsed) = note::parse_note(note_text)?;
    let mut newest: Option<u64> = None;
    for sig in &parsed.signatures {
        if sig.name != key.name || sig.key_id != key.id {
            continue;
        }
        let bad = || NoteError::BadSignature(key.to_string());
        if sig.signature.len() != 72 {
            return Err(bad());
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&sig.signature[..8]);
        let timestamp = u64::from_be_bytes(ts);
        if timestamp > MAX_TIMESTAMP {
            return Err(bad());
        }
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&sig.signature[8..]);
        key.key
            .verify_strict(
                signed_message(timestamp, &parsed.text).as_bytes(),
                &Signature::from_bytes(&bytes),
            )
            .map_err(|_| bad())?;
        newest = Some(newest.map_or(timestamp, |n| n.max(timestamp)));
    }
    match newest {
        Some(timestamp) => Ok(Cosigned {
            checkpoint,
            timestamp,
        }),
        None => Err(NoteError::Unsigned(key.to_string())),
    }
}

/// An `add-checkpoint` request: the witness's size as the sender believes it, the consistency
/// proof from that size to the checkpoint's, and the checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The old size line's value.
    pub old_size: u64,
    /// RFC 6962 consistency proof hashes, in order.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// The request body: `old <size>`, one base64 hash per line, a blank line, the note.
    pub fn to_body(&self) -> String {
        let mut body = format!("old {}\n", self.old_size);
        for h in &self.proof {
            body.push_str(&B64.encode(h));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.checkpoint);
        body
    }

    /// Parses a request body. The note itself is only split off here, not parsed.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, String> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(format!("the body is longer than {MAX_REQUEST_BYTES} bytes"));
        }
        let body = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
        let (size_line, mut rest) = body
            .split_once('\n')
            .ok_or_else(|| "no old size line".to_owned())?;
        let old_size = size_line
            .strip_prefix("old ")
            .and_then(canonical_decimal)
            .ok_or_else(|| {
                "the first line must be `old <size>` (decimal, no leading zeros)".to_owned()
            })?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or_else(|| "no blank line before the checkpoint".to_owned())?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                ));
            }
            let hash: Hash = B64
                .decode(line)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| "a proof line is not base64 of 32 bytes".to_owned())?;
            proof.push(hash);
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint: rest.to_owned(),
        })
    }
}

/// `s` as a u64 if it is canonical decimal (no sign, no leading zeros except `0` itself).
pub fn canonical_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::note::CheckpointSigner as _;

    /// RFC 8032 §7.1 test 2 secret key.
    const SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";

    fn witness() -> (ring::signature::Ed25519KeyPair, CosignerKey) {
        let seed = hex::decode(SEED).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        use ring::signature::KeyPair as _;
        let pk: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        (pair, CosignerKey::new("witness.example/w1", &pk).unwrap())
    }

    fn log_note() -> String {
        let signer = note::MemorySigner::from_seed("example.com/log", [3; 32]);
        assert_eq!(signer.name(), "example.com/log");
        Checkpoint {
            origin: "example.com/log".to_owned(),
            size: 20852163,
            root: [7; 32],
        }
        .sign(&signer)
        .unwrap()
    }

    #[test]
    fn key_id_and_vkey_follow_the_spec() {
        let (_, key) = witness();
        // RFC 8032 test 2 public key.
        assert_eq!(
            hex::encode(key.public_key()),
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
        );
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"witness.example/w1\n\x04");
        ctx.update(&key.public_key());
        assert_eq!(key.id()[..], ctx.finish().as_ref()[..4]);
        // The same key as a checkpoint (0x01) key has another id.
        assert_ne!(
            key.id(),
            note::key_id("witness.example/w1", &key.public_key())
        );
        let text = key.to_string();
        assert!(text.starts_with(&format!(
            "witness.example/w1+{}+BD1A",
            hex::encode(key.id())
        )));
        assert_eq!(CosignerKey::parse(&text).unwrap(), key);
        // A checkpoint key (type 0x01) is not a witness key.
        let as_log = note::VerifierKey::new("witness.example/w1", &key.public_key()).unwrap();
        let e = CosignerKey::parse(&as_log.to_string()).unwrap_err();
        assert!(e.to_string().contains("0x04"), "{e}");
        let wrong_id = text.replacen(&hex::encode(key.id()), "00000000", 1);
        assert!(CosignerKey::parse(&wrong_id).is_err());
    }

    #[test]
    fn cosignature_verifies_against_an_independent_signer() {
        let (pair, key) = witness();
        let note = log_note();
        let text = &note[..note.find("\n\n").unwrap() + 1];
        let ts = 1_679_315_147u64;
        let message = signed_message(ts, text);
        assert_eq!(
            message,
            format!(
                "cosignature/v1\ntime 1679315147\nexample.com/log\n20852163\n{}\n",
                B64.encode([7u8; 32])
            )
        );
        let sig: [u8; 64] = pair.sign(message.as_bytes()).as_ref().try_into().unwrap();
        let line = signature_line(&key, ts, &sig);
        let raw = B64
            .decode(line.trim_end().rsplit(' ').next().unwrap())
            .unwrap();
        assert_eq!(raw.len(), 76);
        assert_eq!(raw[..4], key.id());
        assert_eq!(raw[4..12], ts.to_be_bytes());
        let cosigned = format!("{note}{line}");
        let got = verify_cosignature(&cosigned, &key).unwrap();
        assert_eq!(got.timestamp, ts);
        assert_eq!(got.checkpoint.size, 20852163);

        // Without the line, with another time, or over another checkpoint: refused.
        assert!(matches!(
            verify_cosignature(&note, &key),
            Err(NoteError::Unsigned(_))
        ));
        let other_ts = signature_line(&key, ts + 1, &sig);
        assert!(matches!(
            verify_cosignature(&format!("{note}{other_ts}"), &key),
            Err(NoteError::BadSignature(_))
        ));
        let moved = cosigned.replace("\n20852163\n", "\n20852164\n");
        assert!(matches!(
            verify_cosignature(&moved, &key),
            Err(NoteError::BadSignature(_))
        ));
        // A signature over the checkpoint text alone (a 0x01-style signature) is not a
        // cosignature, even under the right key id.
        let plain: [u8; 64] = pair.sign(text.as_bytes()).as_ref().try_into().unwrap();
        assert!(
            verify_cosignature(&format!("{note}{}", signature_line(&key, ts, &plain)), &key)
                .is_err()
        );
        // Another witness's key ignores the line.
        let other = CosignerKey::new("witness.example/w2", &key.public_key()).unwrap();
        assert!(matches!(
            verify_cosignature(&cosigned, &other),
            Err(NoteError::Unsigned(_))
        ));
    }

    #[test]
    fn add_checkpoint_bodies_round_trip_and_bad_ones_are_refused() {
        let note = log_note();
        let req = AddCheckpoint {
            old_size: 20852014,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: note.clone(),
        };
        let body = req.to_body();
        assert!(body.starts_with(&format!(
            "old 20852014\n{}\n{}\n\nexample.com/log\n",
            B64.encode([1u8; 32]),
            B64.encode([2u8; 32])
        )));
        assert_eq!(AddCheckpoint::parse(body.as_bytes()).unwrap(), req);
        let empty = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: note.clone(),
        };
        assert_eq!(empty.to_body(), format!("old 0\n\n{note}"));
        assert_eq!(
            AddCheckpoint::parse(empty.to_body().as_bytes()).unwrap(),
            empty
        );
        let many = format!(
            "old 1\n{}\n{note}",
            format!("{}\n", B64.encode([1u8; 32])).repeat(64)
        );
        for (body, want) in [
            (format!("old 01\n\n{note}"), "old <size>"),
            (format!("old -1\n\n{note}"), "old <size>"),
            (format!("new 1\n\n{note}"), "old <size>"),
            (format!("old 1\nAAAA\n\n{note}"), "32 bytes"),
            ("old 1\n".to_owned(), "no blank line"),
            ("old 1".to_owned(), "no old size"),
            (many, "more than 63"),
        ] {
            let e = AddCheckpoint::parse(body.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        assert!(AddCheckpoint::parse(&vec![b'x'; MAX_REQUEST_BYTES + 1]).is_err());
    }
}
