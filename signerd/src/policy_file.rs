//! The policy file: read, bounded in size, parsed and validated, and admitted only when enough
//! policy administrators signed it (the signature file beside it). Start-up, reloads (SIGHUP
//! and `ReloadPolicy`), `signerd check-config` and `signerctl policy sign` all read it here.
//! Nothing here loads a policy whose signatures were not counted.
//! Also the conversion between the first loads of address-book entries a policy carries and
//! those a `policy.load` record lists.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use signerd_auditor::events::BookEntryLoad;
use signerd_policy::{
    Admitted, Candidate, FirstLoaded, Governance, MAX_POLICY_BYTES, MAX_SIGNATURE_FILE_BYTES,
    Policy, PolicyError, PolicySignature, Refused,
};

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
    /// The signature file exists but cannot be read.
    #[error("{path}: {source}")]
    ReadSignatures {
        /// The signature file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The signature file does not parse (the error names the line and column).
    #[error("{source}")]
    SignatureFile {
        /// What is wrong.
        source: PolicyError,
    },
    /// Not enough policy administrators signed the policy.
    #[error("{path}: not loaded: {} (signatures read from {signatures})", .refused.reason)]
    NotAdmitted {
        /// The policy file.
        path: String,
        /// The signature file, and whether it was missing.
        signatures: String,
        /// What was found and what is missing.
        refused: Refused,
    },
}

impl PolicyFileError {
    /// The administrators whose valid signatures were found (empty unless the refusal is
    /// about signatures).
    pub fn signers(&self) -> &[String] {
        match self {
            PolicyFileError::NotAdmitted { refused, .. } => &refused.signers,
            _ => &[],
        }
    }
}

/// What checking a policy's signatures needs besides the governance in force.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The deployment: the audit log's origin, which every signature is bound to.
    pub origin: String,
    /// `[policy.trust]`: who signs the first policy of a log.
    pub anchor: Governance,
    /// The signature file.
    pub signatures: PathBuf,
}

impl Trust {
    /// The trust of a validated configuration.
    pub fn from_config(config: &crate::config::Config) -> Result<Trust, String> {
        Ok(Trust {
            origin: config.audit.origin.clone(),
            anchor: config.policy.trust_anchor()?,
            signatures: config.policy.signatures_path(),
        })
    }
}

/// Reads the signature file at `path`: `None` when there is none.
pub fn read_signatures(path: &Path) -> Result<Option<Vec<PolicySignature>>, PolicyFileError> {
    let shown = path.display().to_string();
    let read = |source| PolicyFileError::ReadSignatures {
        path: shown.clone(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e)),
    };
    let mut src = String::new();
    // One byte more than allowed, so that the parser reports a file that is too large.
    file.take(MAX_SIGNATURE_FILE_BYTES as u64 + 1)
        .read_to_string(&mut src)
        .map_err(read)?;
    signerd_policy::parse_signatures(&shown, &src)
        .map(Some)
        .map_err(|source| PolicyFileError::SignatureFile { source })
}

/// Decides whether `new`, read from `path`, may be loaded under `governance` (the governance in
/// force) replacing `in_force`, with the signatures in `trust.signatures`.
pub fn admit(
    path: &Path,
    new: &Policy,
    trust: &Trust,
    governance: &Governance,
    in_force: Option<&Policy>,
) -> Result<Admitted, PolicyFileError> {
    let found = read_signatures(&trust.signatures)?;
    let shown = trust.signatures.display().to_string();
    let signatures = match &found {
        Some(_) => shown,
        None => format!("{shown}, which does not exist"),
    };
    signerd_policy::admit(&Candidate {
        governance,
        in_force,
        new,
        origin: &trust.origin,
        signatures: found.as_deref().unwrap_or_default(),
    })
    .map_err(|refused| PolicyFileError::NotAdmitted {
        path: path.display().to_string(),
        signatures,
        refused,
    })
}

/// The governance in force and the policy it belongs to, for a log whose last `policy.load`
/// named `last_hash` (`None`: no policy was ever loaded, the trust anchor decides). A policy
/// in force without `[governance]` (loaded by a release that did not check signatures) leaves
/// the decision to the trust anchor too.
pub fn in_force(
    audit_dir: &Path,
    last_hash: Option<&str>,
    anchor: &Governance,
) -> Result<(Governance, Option<Policy>), String> {
    let Some(hash) = last_hash else {
        return Ok((anchor.clone(), None));
    };
    let archive = audit_dir.join(crate::audit::archive::DIR);
    let policy = crate::audit::archive::load(&archive, hash).map_err(|e| {
        format!(
            "the policy this audit log loaded last ({hash}) decides who may sign the next one,              and it cannot be read from the archive: {e}"
        )
    })?;
    let governance = policy
        .governance()
        .cloned()
        .unwrap_or_else(|| anchor.clone());
    Ok((governance, Some(policy)))
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

/// Signs `policy` (the SHA-256 of its exact bytes, and its serial) as the administrator `name`
/// for the deployment whose audit log origin is `origin`.
pub fn sign(
    key: &ed25519_dalek::SigningKey,
    name: &str,
    origin: &str,
    policy: &Policy,
) -> PolicySignature {
    use ed25519_dalek::Signer as _;
    let msg = signerd_policy::signing_message(origin, policy.serial(), &policy.hash());
    PolicySignature {
        administrator: name.to_owned(),
        public_key: key.verifying_key().to_bytes(),
        serial: policy.serial(),
        sha256: policy.hash(),
        signature: key.sign(&msg).to_bytes(),
    }
}

/// Adds `sig` to the signature file at `path`, replacing it atomically (readers see the old or
/// the new file, never a mix). Signatures over other bytes (an earlier version of the policy
/// file) are dropped, and so is an earlier signature of the same administrator and key.
/// Returns how many signatures the file holds.
pub fn add_signature(path: &Path, sig: PolicySignature) -> Result<usize, PolicyFileError> {
    let mut all: Vec<PolicySignature> = read_signatures(path)?
        .unwrap_or_default()
        .into_iter()
        .filter(|s| {
            s.sha256 == sig.sha256
                && !(s.administrator == sig.administrator && s.public_key == sig.public_key)
        })
        .collect();
    all.push(sig);
    let text: String = all.iter().map(|s| s.to_toml() + "\n").collect();
    // Checked as the daemon will read it (size, count).
    signerd_policy::parse_signatures(&path.display().to_string(), &text)
        .map_err(|source| PolicyFileError::SignatureFile { source })?;
    let io = |source| PolicyFileError::ReadSignatures {
        path: path.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io(std::io::Error::other("not a file name")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::audit::replace_file(dir, name, &format!(".{name}.tmp"), text.as_bytes(), 0o644)
        .map_err(io)?;
    Ok(all.len())
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
