//! A witness's own Ed25519 key, in a file of its own (`signerctl witness keygen`).
//!
//! The file holds one line, `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 || 32-byte seed)>`
//! (the shape of a signed-note private key, with the cosignature type 0x04), mode 0600. The
//! key signs C2SP `cosignature/v1` messages and nothing else. It must never appear in a log
//! line, an error or a `Debug` output, and a file readable by group or others is refused.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use signerd_auditor::cosignature::{self, COSIGNATURE_TYPE, CosignerKey};
use zeroize::Zeroizing;

const PREFIX: &str = "PRIVATE+KEY+";

/// A witness's signing key and name.
pub struct WitnessKey {
    key: ed25519_dalek::SigningKey,
    public: CosignerKey,
}

impl std::fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WitnessKey({}, private key redacted)", self.public)
    }
}

impl WitnessKey {
    /// A new random key for witness `name`.
    pub fn generate(name: &str) -> Result<WitnessKey, String> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, seed.as_mut());
        WitnessKey::from_seed(name, &seed)
    }

    fn from_seed(name: &str, seed: &[u8; 32]) -> Result<WitnessKey, String> {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = CosignerKey::new(name, &key.verifying_key().to_bytes())
            .map_err(|e| format!("witness name: {e}"))?;
        Ok(WitnessKey { key, public })
    }

    /// The witness's public key (vkey form with type 0x04 when displayed).
    pub fn public(&self) -> &CosignerKey {
        &self.public
    }

    /// Writes the key to a new file `path` (mode 0600); an existing file is never replaced.
    pub fn write_new(&self, path: &Path) -> Result<(), String> {
        let shown = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut raw = Zeroizing::new(Vec::with_capacity(33));
        raw.push(COSIGNATURE_TYPE);
        raw.extend_from_slice(self.key.as_bytes());
        let line = Zeroizing::new(format!(
            "{PREFIX}{}+{}+{}\n",
            self.public.name(),
            hex::encode(self.public.id()),
            B64.encode(raw.as_slice())
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(shown)?;
        f.write_all(line.as_bytes()).map_err(shown)?;
        f.sync_all().map_err(shown)
    }

    /// Reads a key file written by [`WitnessKey::write_new`].
    pub fn load(path: &Path) -> Result<WitnessKey, String> {
        let shown = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(shown)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.len() > 1024 {
            return Err(format!("{} is not a witness key file", path.display()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(shown)?);
        let bad = || {
            format!(
                "{} is not a witness key file (PRIVATE+KEY+<name>+<id>+<key>)",
                path.display()
            )
        };
        let rest = text.trim_end().strip_prefix(PREFIX).ok_or_else(bad)?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let raw = Zeroizing::new(B64.decode(b64).map_err(|_| bad())?);
        if raw.len() != 33 || raw[0] != COSIGNATURE_TYPE {
            return Err(bad());
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&raw[1..]);
        let key = WitnessKey::from_seed(name, &seed)?;
        if hex::encode(key.public.id()) != id.to_ascii_lowercase() {
            return Err(format!(
                "{}: the key id does not match the name and key",
                path.display()
            ));
        }
        Ok(key)
    }

    /// The cosignature line (ending with a newline) for a checkpoint text (the note up to,
    /// not including, the blank line), signed at `timestamp` (POSIX seconds).
    pub fn cosign(&self, checkpoint_text: &str, timestamp: u64) -> String {
        let message = cosignature::signed_message(timestamp, checkpoint_text);
        let sig = self.key.sign(message.as_bytes()).to_bytes();
        cosignature::signature_line(&self.public, timestamp, &sig)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_key_file_round_trips_and_cosigns_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.key");
        let key = WitnessKey::generate("witness.example/w1").unwrap();
        key.write_new(&path).unwrap();
        assert!(key.write_new(&path).is_err(), "never overwrites");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = WitnessKey::load(&path).unwrap();
        assert_eq!(loaded.public(), key.public());
        let debug = format!("{loaded:?}");
        let file = std::fs::read_to_string(&path).unwrap();
        let secret = file.trim_end().splitn(5, '+').nth(4).unwrap();
        assert_eq!(secret.len(), 44);
        assert!(!debug.contains(secret) && debug.contains("redacted"));

        let signer = signerd_auditor::note::Checkpoint {
            origin: "o".to_owned(),
            size: 3,
            root: [1; 32],
        };
        let text = signer.body();
        let note = format!("{text}\n\u{2014} o AAAAAAAA\n");
        let line = loaded.cosign(&text, 1_700_000_000);
        let got = cosignature::verify_cosignature(&format!("{note}{line}"), key.public()).unwrap();
        assert_eq!(got.timestamp, 1_700_000_000);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(WitnessKey::load(&path).unwrap_err().contains("chmod 600"));
    }
}
