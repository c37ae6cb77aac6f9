//! The policy archive: every policy file the daemon installs is kept beside the audit log, in
//! `<audit dir>/policies/<sha256 hex>.toml`, so that the log and the archive together hold
//! everything needed to re-evaluate every recorded decision (`signerctl audit recheck`).
//!
//! A policy is archived (written to a temporary file, fsynced, made read-only `0444`, renamed,
//! and the directory fsynced) before the `policy.load` record that names its hash is written.
//! An archived file is never rewritten: when a file of that name exists, its bytes must hash
//! to its name, or the policy is not installed. This module must never install a policy it
//! could not archive, or hand out an archived policy whose bytes do not match its name.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use signerd_policy::{MAX_POLICY_BYTES, Policy, PolicyError};

/// The archive's directory inside the audit directory.
pub const DIR: &str = "policies";

/// Why a policy cannot be archived or read back from the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file or directory of the archive cannot be read or written.
    #[error("policy archive: {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No archived policy has this hash.
    #[error("policy archive: {path} is missing: the policy with hash {hash} was not archived")]
    Missing {
        /// Where it should be.
        path: String,
        /// The hash the log names.
        hash: String,
    },
    /// The archived file's bytes do not hash to its name.
    #[error(
        "policy archive: {path} was altered: its bytes hash to {actual}, not to the hash it is \
         named after"
    )]
    Altered {
        /// The file.
        path: String,
        /// SHA-256 of its bytes, hex.
        actual: String,
    },
    /// The archived file is not a regular file, or is larger than any policy may be.
    #[error("policy archive: {path}: {why}")]
    NotAPolicyFile {
        /// The file.
        path: String,
        /// What it is.
        why: String,
    },
    /// The archived bytes hash correctly but do not parse as a policy.
    #[error("policy archive: {path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The parse or validation error.
        source: PolicyError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// SHA-256 of `bytes`, lowercase hex: a policy's hash (`policy_hash` in the log).
pub fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the policy with hash `hash_hex` is archived, for the archive directory `archive`
/// (`<audit dir>/policies`).
pub fn path_in(archive: &Path, hash_hex: &str) -> PathBuf {
    archive.join(format!("{hash_hex}.toml"))
}

/// Archives the policy file bytes `source` beside the audit log in `audit_dir`, durably, and
/// returns their hash. A file already archived under that hash is checked, not rewritten.
pub fn store(audit_dir: &Path, source: &[u8]) -> Result<String, ArchiveError> {
    let hash = hash_hex(source);
    let dir = audit_dir.join(DIR);
    if !dir.exists() {
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => sync_dir(audit_dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    let path = path_in(&dir, &hash);
    if fs::symlink_metadata(&path).is_ok() {
        read_checked(&path, &hash)?;
        return Ok(hash);
    }
    // A temporary file left by a crash between creating and renaming it is never adopted,
    // always rewritten.
    let name = format!("{hash}.toml");
    super::replace_file(&dir, &name, &format!(".{name}.tmp"), source, 0o444).map_err(io(&path))?;
    Ok(hash)
}

/// Reads the policy archived under `hash_hex` in the archive directory `archive`, checking
/// that its bytes hash to its name, and parses it.
pub fn load(archive: &Path, hash_hex: &str) -> Result<Policy, ArchiveError> {
    let path = path_in(archive, hash_hex);
    let bytes = read_checked(&path, hash_hex)?;
    let shown = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|_| ArchiveError::NotAPolicyFile {
        path: shown.clone(),
        why: "not UTF-8".to_owned(),
    })?;
    Policy::parse(&shown, &text).map_err(|source| ArchiveError::Invalid {
        path: shown,
        source,
    })
}

/// Reads a policy file of at most [`MAX_POLICY_BYTES`] and checks that it hashes to `want`.
/// `want` may be any text (a hash read from a log): a name that is not 64 lowercase hex
/// digits is never looked up.
pub fn read_checked(path: &Path, want: &str) -> Result<Vec<u8>, ArchiveError> {
    let shown = path.display().to_string();
    if want.len() != 64 || !want.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ArchiveError::Missing {
            path: shown,
            hash: want.to_owned(),
        });
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArchiveError::Missing {
                path: shown,
                hash: want.to_owned(),
            });
        }
        Err(e) => return Err(io(path)(e)),
    };
    if !meta.file_type().is_file() {
        return Err(ArchiveError::NotAPolicyFile {
            path: shown,
            why: "not a regular file".to_owned(),
        });
    }
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(io(path))?
        .take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(ArchiveError::NotAPolicyFile {
            path: shown,
            why: format!("larger than the {MAX_POLICY_BYTES} bytes a policy may have"),
        });
    }
    let actual = hash_hex(&bytes);
    if actual != want {
        return Err(ArchiveError::Altered {
            path: shown,
            actual,
        });
    }
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const POLICY: &str = "version = 1\nserial = 3\n";

    #[test]
    fn a_policy_is_archived_read_only_under_its_hash_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let hash = store(dir.path(), POLICY.as_bytes()).unwrap();
        assert_eq!(hash, Policy::parse("p", POLICY).unwrap().hash_hex());
        let path = path_in(&dir.path().join(DIR), &hash);
        assert_eq!(fs::read(&path).unwrap(), POLICY.as_bytes());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        let dir_mode = fs::metadata(dir.path().join(DIR))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // Archiving it again checks the file and leaves it alone.
        assert_eq!(store(dir.path(), POLICY.as_bytes()).unwrap(), hash);
        let only: Vec<_> = fs::read_dir(dir.path().join(DIR)).unwrap().collect();
        assert_eq!(only.len(), 1);
        let policy = load(&dir.path().join(DIR), &hash).unwrap();
        assert_eq!(policy.serial(), 3);
    }

    #[test]
    fn an_altered_or_missing_archive_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let hash = store(dir.path(), POLICY.as_bytes()).unwrap();
        let archive = dir.path().join(DIR);
        let path = path_in(&archive, &hash);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "version = 1\nserial = 4\n").unwrap();
        let e = load(&archive, &hash).unwrap_err();
        assert!(matches!(e, ArchiveError::Altered { .. }), "{e}");
        assert!(e.to_string().contains("was altered"), "{e}");
        // Storing the same policy again does not repair (or hide) an altered file.
        let e = store(dir.path(), POLICY.as_bytes()).unwrap_err();
        assert!(matches!(e, ArchiveError::Altered { .. }), "{e}");
        let e = load(&archive, &"ab".repeat(32)).unwrap_err();
        assert!(matches!(e, ArchiveError::Missing { .. }), "{e}");
        // A name from a log that is not a hash never reaches the file system.
        let e = load(&archive, "../../etc/passwd").unwrap_err();
        assert!(matches!(e, ArchiveError::Missing { .. }), "{e}");
    }

    #[test]
    fn a_temporary_file_left_by_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let hash = hash_hex(POLICY.as_bytes());
        let archive = dir.path().join(DIR);
        fs::create_dir(&archive).unwrap();
        fs::write(archive.join(format!(".{hash}.toml.tmp")), "torn").unwrap();
        assert_eq!(store(dir.path(), POLICY.as_bytes()).unwrap(), hash);
        assert_eq!(
            fs::read(path_in(&archive, &hash)).unwrap(),
            POLICY.as_bytes()
        );
        assert!(!archive.join(format!(".{hash}.toml.tmp")).exists());
    }
}
