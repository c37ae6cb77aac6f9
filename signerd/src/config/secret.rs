//! Reading secrets that the configuration names but never contains: a keystore passphrase,
//! an HSM PIN, a Vault token or AppRole secret id.
//!
//! A secret comes from exactly one of three places: a file (which other users must not be
//! able to read), an environment variable, or a systemd credential (a file under
//! `$CREDENTIALS_DIRECTORY`, as `LoadCredential=` provides). Only the first line is used, so a
//! trailing newline never becomes part of a PIN. The value is returned in a [`SecretString`]
//! and is never part of an error message.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Largest secret file read; PINs, passphrases and tokens are far smaller.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Where one secret comes from. Configuration tables flatten these as `<name>_file`,
/// `<name>_env` and `<name>_credential`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSource {
    /// A file whose first line is the secret.
    pub file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub env: Option<String>,
    /// The name of a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`).
    pub credential: Option<String>,
}

impl SecretSource {
    /// Checks that exactly one source is set; `what` names the setting in messages
    /// (for example `keys.pkcs11.pin`).
    pub fn validate(&self, what: &str) -> Result<(), String> {
        let set = [
            self.file.is_some(),
            self.env.is_some(),
            self.credential.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            let leaf = what.rsplit('.').next().unwrap_or(what);
            return Err(format!(
                "{what}: set exactly one of `{leaf}_file`, `{leaf}_env` and `{leaf}_credential`"
            ));
        }
        if let Some(c) = &self.credential
            && (c.is_empty() || c.contains('/') || c == "." || c == "..")
        {
            return Err(format!(
                "{what}_credential: `{c}` is not a credential name (no `/`, not empty)"
            ));
        }
        Ok(())
    }

    /// Makes a relative file path absolute against `base`.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(f) = &mut self.file
            && f.is_relative()
        {
            *f = base.join(&*f);
        }
    }

    /// Reads the secret. Errors name the source, never the value.
    pub fn read(&self, what: &str) -> Result<SecretString, String> {
        let raw = if let Some(file) = &self.file {
            read_secret_file(file, &format!("{what}_file"))?
        } else if let Some(var) = &self.env {
            Zeroizing::new(
                std::env::var(var)
                    .map_err(|_| format!("{what}_env: ${var} is not set or not UTF-8"))?,
            )
        } else if let Some(name) = &self.credential {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                format!(
                    "{what}_credential: $CREDENTIALS_DIRECTORY is not set \
                     (systemd sets it for a unit with LoadCredential=)"
                )
            })?;
            read_secret_file(
                &Path::new(&dir).join(name),
                &format!("{what}_credential `{name}`"),
            )?
        } else {
            return Err(format!("{what}: no source configured"));
        };
        // The first line; `lines` keeps a `\r` that ends the file without a `\n`.
        let line = raw.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(format!("{what}: the secret is empty"));
        }
        // A control character cannot be part of a PIN, a passphrase or a token (a token goes
        // into an HTTP header); it would only fail later, and less clearly.
        if let Some(pos) = line.chars().position(char::is_control) {
            return Err(format!(
                "{what}: the secret has a control character at position {}",
                pos + 1
            ));
        }
        Ok(SecretString::from(line.to_owned()))
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, String> {
    use std::io::Read;
    check_secret_file(path).map_err(|e| format!("{what}: {e}"))?;
    let file = std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mut raw = Zeroizing::new(String::new());
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if raw.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "{what} {}: larger than {MAX_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    Ok(raw)
}

/// Refuses a secret file that other users could read (group or world permission bits).
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: secret file is accessible by other users (mode {:o}); run `chmod 600` on it",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    fn file_source(dir: &Path, body: &str, mode: u32) -> SecretSource {
        let p = dir.join("pin");
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        SecretSource {
            file: Some(p),
            ..SecretSource::default()
        }
    }

    #[test]
    fn first_line_of_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = file_source(dir.path(), "1234\nignored\n", 0o600);
        s.validate("keys.pkcs11.pin").unwrap();
        assert_eq!(s.read("keys.pkcs11.pin").unwrap().expose_secret(), "1234");
    }

    #[test]
    fn a_final_carriage_return_is_dropped_and_other_control_characters_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = file_source(dir.path(), "hvs.token\r", 0o600);
        assert_eq!(s.read("token").unwrap().expose_secret(), "hvs.token");
        let s = file_source(dir.path(), "hvs.token\r\n", 0o600);
        assert_eq!(s.read("token").unwrap().expose_secret(), "hvs.token");
        let s = file_source(dir.path(), "hvs.to\tken\n", 0o600);
        let e = s.read("token").unwrap_err();
        assert!(e.contains("control character at position 7"), "{e}");
        assert!(!e.contains("hvs"), "the error shows the secret: {e}");
    }

    #[test]
    fn readable_file_empty_secret_and_sources_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = file_source(dir.path(), "1234\n", 0o644);
        let e = s.read("pin").unwrap_err();
        assert!(e.contains("accessible by other users"), "{e}");
        let s = file_source(dir.path(), "\n", 0o600);
        assert!(s.read("pin").unwrap_err().contains("empty"));

        let none = SecretSource::default();
        let e = none.validate("keys.pkcs11.pin").unwrap_err();
        assert!(
            e.contains("exactly one of `pin_file`, `pin_env` and `pin_credential`"),
            "{e}"
        );
        let two = SecretSource {
            file: Some("x".into()),
            env: Some("Y".into()),
            credential: None,
        };
        assert!(two.validate("pin").is_err());
        let bad = SecretSource {
            credential: Some("../etc".into()),
            ..SecretSource::default()
        };
        assert!(
            bad.validate("pin")
                .unwrap_err()
                .contains("not a credential name")
        );
    }

    #[test]
    fn errors_never_contain_the_value() {
        let s = SecretSource {
            env: Some("SIGNERD_TEST_SECRET_UNSET_9F2".into()),
            ..SecretSource::default()
        };
        let e = s.read("keys.vault.token").unwrap_err();
        assert!(e.contains("SIGNERD_TEST_SECRET_UNSET_9F2"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let s = file_source(dir.path(), "hunter2-secret\n", 0o640);
        assert!(!s.read("pin").unwrap_err().contains("hunter2"));
    }
}
