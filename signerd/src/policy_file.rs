//! The policy file: read, bounded in size, parsed and validated. Start-up, reloads (SIGHUP and
//! `ReloadPolicy`) and `signerd check-config` all read it here. Also the conversion between the
//! first loads of address-book entries a policy carries and those a `policy.load` record lists.

use std::path::Path;

use alloy_primitives::Address;
use signerd_auditor::events::BookEntryLoad;
use signerd_policy::{FirstLoaded, MAX_POLICY_BYTES, Policy, PolicyError};

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

/// The first loads of address-book entries as a `policy.load` record lists them.
pub fn book_entries(first: &FirstLoaded) -> Vec<BookEntryLoad> {
    first
        .iter()
        .map(|((book, address), at)| BookEntryLoad {
            address: address.to_checksum(None),
            book: book.clone(),
            first_loaded: crate::approvals::rfc3339(*at),
        })
        .collect()
}

/// The first loads a `policy.load` record lists. A malformed entry is an error: the log is the
/// only source of these times, and guessing one would shorten a cooling-off period.
pub fn first_loaded(entries: &[BookEntryLoad]) -> Result<FirstLoaded, String> {
    let mut out = FirstLoaded::new();
    for e in entries {
        let address: Address = e
            .address
            .parse()
            .map_err(|_| format!("book_entries: `{}` is not an address", e.address))?;
        let at = signerd_auditor::rfc3339::parse_unix(&e.first_loaded).ok_or_else(|| {
            format!(
                "book_entries: first_loaded `{}` is not an RFC 3339 time",
                e.first_loaded
            )
        })?;
        out.insert((e.book.clone(), address), at);
    }
    Ok(out)
}
