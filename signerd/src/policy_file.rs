//! The policy file: read, bounded in size, parsed and validated. Start-up, reloads (SIGHUP and
//! `ReloadPolicy`) and `signerd check-config` all read it here.

use std::path::Path;

use signerd_policy::{MAX_POLICY_BYTES, Policy, PolicyError};

/// Why the policy file cannot be used. The running policy (if any) stays in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file, as configured.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than any policy may be.
    #[error("{path}: policy is {len} bytes, more than the {MAX_POLICY_BYTES} allowed")]
    TooLarge {
        /// The file, as configured.
        path: String,
        /// Its size.
        len: u64,
    },
    /// The policy does not parse or does not validate (the error names the line and field).
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// Rules or limits name keys the daemon does not hold (one located error per entry,
    /// joined with `; `): a freeze or a limit on such a key would do nothing.
    #[error("{0}")]
    UnknownKeys(String),
}

/// Reads and validates the policy file at `path`.
pub fn load_policy(path: &Path) -> Result<Policy, PolicyFileError> {
    load_policy_source(path).map(|(policy, _)| policy)
}

/// Reads and validates the policy file at `path`, and returns its exact text too (what the
/// policy archive keeps; its SHA-256 is the policy's hash).
pub fn load_policy_source(path: &Path) -> Result<(Policy, String), PolicyFileError> {
    let shown = path.display().to_string();
    let read = |source| PolicyFileError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_POLICY_BYTES as u64 {
        return Err(PolicyFileError::TooLarge {
            path: shown,
            len: meta.len(),
        });
    }
    let src = std::fs::read_to_string(path).map_err(read)?;
    let policy = Policy::parse(&shown, &src)?;
    Ok((policy, src))
}

/// Refuses `policy` when a rule or a limit names a key that is not among `held` (the ids the
/// key backend holds): the error names the file, line and column of every such entry.
pub fn check_keys(
    policy: &Policy,
    held: impl IntoIterator<Item = String>,
) -> Result<(), PolicyFileError> {
    let held: std::collections::BTreeSet<String> = held.into_iter().collect();
    let unknown = policy.unknown_keys(&held);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    Err(PolicyFileError::UnknownKeys(list.join("; ")))
}
