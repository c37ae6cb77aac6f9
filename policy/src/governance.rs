//! Signed policies: who may change the policy (`[governance]`), the exact bytes an
//! administrator signs, the signature file that travels beside the policy, and the rule that
//! decides whether a new policy may replace the one in force.
//!
//! A policy is admitted when enough administrators of the governance in force signed its exact
//! bytes, bound to the deployment (the audit log's origin) and its serial: the full
//! `threshold`, or `tighten_threshold` for a change that [`diff`](crate::diff) proves only
//! tightens and that leaves the governance alone. A policy that changes the governance also
//! needs `threshold` signatures of its own administrators (as TUF rotates its root). Everything
//! here is pure: the daemon and `signerctl` read the files and call these functions. This
//! module must never count a signature that does not verify, nor one key twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Deserialize;
use toml::Spanned;

use crate::parse::{Cx, from_toml, parse_approver_key};
use crate::{Policy, PolicyError};

/// Largest signature file accepted, in bytes.
pub const MAX_SIGNATURE_FILE_BYTES: usize = 64 * 1024;

/// Most signatures one signature file may hold.
pub const MAX_SIGNATURES: usize = 64;

/// Most administrators one governance may name.
pub const MAX_ADMINISTRATORS: usize = 64;

/// The first line of every signed message (domain separation: such a signature can never be
/// mistaken for an approval or any other Ed25519 signature).
pub const SIGNATURE_CONTEXT: &str = "signerd policy signature v1";

/// Who may change the policy, and how many of them must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Governance {
    threshold: u32,
    tighten_threshold: u32,
    administrators: BTreeMap<String, [u8; 32]>,
}

impl Governance {
    /// A governance of `administrators` (name → Ed25519 public key). `threshold` signatures
    /// admit any change; `tighten_threshold` (at most `threshold`) admit a change that only
    /// tightens. Refused when a threshold is 0 or larger than the administrators can reach,
    /// when two administrators share a key (one key would count twice), or when a name is not
    /// a valid name.
    pub fn new(
        threshold: u32,
        tighten_threshold: u32,
        administrators: BTreeMap<String, [u8; 32]>,
    ) -> Result<Governance, String> {
        if administrators.is_empty() {
            return Err("`administrators` is empty".into());
        }
        if administrators.len() > MAX_ADMINISTRATORS {
            return Err(format!(
                "{} administrators, more than the {MAX_ADMINISTRATORS} allowed",
                administrators.len()
            ));
        }
        for name in administrators.keys() {
            crate::literal::check_name(name).map_err(|e| format!("administrator {e}"))?;
        }
        let mut keys = BTreeMap::new();
        for (name, key) in &administrators {
            if let Some(other) = keys.insert(*key, name) {
                return Err(format!(
                    "administrators `{other}` and `{name}` have the same key; each administrator \
                     needs a key of their own"
                ));
            }
        }
        let n = administrators.len();
        if threshold == 0 || threshold as usize > n {
            return Err(format!(
                "`threshold` is {threshold}; it must be between 1 and the {n} administrators"
            ));
        }
        if tighten_threshold == 0 || tighten_threshold > threshold {
            return Err(format!(
                "`tighten_threshold` is {tighten_threshold}; it must be between 1 and \
                 `threshold` ({threshold})"
            ));
        }
        Ok(Governance {
            threshold,
            tighten_threshold,
            administrators,
        })
    }

    /// Signatures that admit any change.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Signatures that admit a change that only tightens.
    pub fn tighten_threshold(&self) -> u32 {
        self.tighten_threshold
    }

    /// The administrators' Ed25519 public keys, by name.
    pub fn administrators(&self) -> &BTreeMap<String, [u8; 32]> {
        &self.administrators
    }
}

impl fmt::Display for Governance {
    /// `threshold 2, tighten_threshold 1, administrators alice, bob, carol`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.administrators.keys().map(String::as_str).collect();
        write!(
            f,
            "threshold {}, tighten_threshold {}, administrators {}",
            self.threshold,
            self.tighten_threshold,
            names.join(", ")
        )
    }
}

/// `[governance]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGovernance {
    threshold: Spanned<u32>,
    tighten_threshold: Spanned<u32>,
    administrators: Spanned<BTreeMap<String, Spanned<String>>>,
}

/// Compiles `[governance]`; errors name the line and column of the offending member.
pub(crate) fn compile(
    cx: &Cx<'_>,
    span: Range<usize>,
    raw: RawGovernance,
) -> Result<Governance, PolicyError> {
    let admins_span = raw.administrators.span();
    let mut administrators = BTreeMap::new();
    for (name, key) in raw.administrators.into_inner() {
        crate::literal::check_name(&name)
            .map_err(|e| cx.invalid(key.span(), format!("governance: administrator {e}")))?;
        let k = parse_approver_key(key.get_ref()).map_err(|e| {
            cx.invalid(
                key.span(),
                format!("governance: administrator `{name}`: {e}"),
            )
        })?;
        administrators.insert(name, k);
    }
    let (t, tt) = (*raw.threshold.get_ref(), *raw.tighten_threshold.get_ref());
    Governance::new(t, tt, administrators).map_err(|e| {
        let at = if e.starts_with("`threshold`") {
            raw.threshold.span()
        } else if e.starts_with("`tighten_threshold`") {
            raw.tighten_threshold.span()
        } else if e.starts_with("`administrators`") || e.starts_with("administrators") {
            admins_span
        } else {
            span
        };
        cx.invalid(at, format!("governance: {e}"))
    })
}

impl Policy {
    /// The policy's `[governance]`: who may sign the next policy. `None` for a policy
    /// without one (the daemon refuses to load such a policy).
    pub fn governance(&self) -> Option<&Governance> {
        self.governance.as_ref()
    }
}

/// The exact bytes an administrator signs for the policy file whose SHA-256 is `sha256`, with
/// serial `serial`, in the deployment whose audit log origin is `origin`:
///
/// ```text
/// signerd policy signature v1\norigin <origin>\nserial <serial>\nsha256 <64 lowercase hex>\n
/// ```
pub fn signing_message(origin: &str, serial: u64, sha256: &[u8; 32]) -> Vec<u8> {
    format!(
        "{SIGNATURE_CONTEXT}\norigin {origin}\nserial {serial}\nsha256 {}\n",
        hex::encode(sha256)
    )
    .into_bytes()
}

/// One administrator's signature, as kept in the signature file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySignature {
    /// The administrator's name in `[governance]`.
    pub administrator: String,
    /// The administrator's Ed25519 public key.
    pub public_key: [u8; 32],
    /// The serial of the policy signed.
    pub serial: u64,
    /// The SHA-256 of the policy file signed.
    pub sha256: [u8; 32],
    /// The Ed25519 signature over [`signing_message`].
    pub signature: [u8; 64],
}

impl PolicySignature {
    /// The entry as one `[[signature]]` table of the signature file.
    pub fn to_toml(&self) -> String {
        format!(
            "[[signature]]\nadministrator = \"{}\"\npublic_key = \"ed25519:{}\"\nserial = {}\n\
             sha256 = \"{}\"\nsignature = \"{}\"\n",
            self.administrator,
            hex::encode(self.public_key),
            self.serial,
            hex::encode(self.sha256),
            hex::encode(self.signature)
        )
    }

    /// Whether the signature verifies over the message for `origin` and this entry's serial
    /// and hash.
    pub fn verifies(&self, origin: &str) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.public_key) else {
            return false;
        };
        let msg = signing_message(origin, self.serial, &self.sha256);
        key.verify(&msg, &Signature::from_bytes(&self.signature))
            .is_ok()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignatureFile {
    #[serde(default)]
    signature: Vec<Spanned<RawSignature>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    administrator: Spanned<String>,
    public_key: Spanned<String>,
    serial: u64,
    sha256: Spanned<String>,
    signature: Spanned<String>,
}

/// Parses a signature file (`[[signature]]` tables); `file` names it in errors, which give
/// the line and column. An empty file holds no signatures.
pub fn parse_signatures(file: &str, src: &str) -> Result<Vec<PolicySignature>, PolicyError> {
    if src.len() > MAX_SIGNATURE_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            file: file.to_owned(),
            size: src.len(),
            max: MAX_SIGNATURE_FILE_BYTES,
        });
    }
    let raw: RawSignatureFile = from_toml(file, src)?;
    let cx = Cx { file, src };
    if raw.signature.len() > MAX_SIGNATURES {
        let at = raw.signature[MAX_SIGNATURES].span();
        return Err(cx.invalid(
            at,
            format!("more than {MAX_SIGNATURES} signatures in one file"),
        ));
    }
    let mut out = Vec::with_capacity(raw.signature.len());
    for s in raw.signature {
        let s = s.into_inner();
        crate::literal::check_name(s.administrator.get_ref())
            .map_err(|e| cx.invalid(s.administrator.span(), format!("administrator {e}")))?;
        let public_key = parse_approver_key(s.public_key.get_ref())
            .map_err(|e| cx.invalid(s.public_key.span(), e))?;
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(s.sha256.get_ref(), &mut sha256)
            .map_err(|_| cx.invalid(s.sha256.span(), "`sha256` must be 64 hex digits".into()))?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(s.signature.get_ref(), &mut signature).map_err(|_| {
            cx.invalid(
                s.signature.span(),
                "`signature` must be 128 hex digits".into(),
            )
        })?;
        out.push(PolicySignature {
            administrator: s.administrator.into_inner(),
            public_key,
            serial: s.serial,
            sha256,
            signature,
        });
    }
    Ok(out)
}

/// Which threshold admitted a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// `threshold` signatures: any change.
    Full,
    /// `tighten_threshold` signatures: a change that only tightens.
    Tighten,
}

impl Threshold {
    /// `full` or `tighten`.
    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::Full => "full",
            Threshold::Tighten => "tighten",
        }
    }
}

/// A policy admitted by [`admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The threshold that admitted it.
    pub threshold: Threshold,
    /// The administrators whose valid signatures were counted, sorted.
    pub signers: Vec<String>,
}

/// A policy refused by [`admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why, naming what was found and what is missing.
    pub reason: String,
    /// The administrators (of the governance in force or of the new policy) whose valid
    /// signatures were found, sorted.
    pub signers: Vec<String>,
}

/// What [`admit`] decides over.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The governance in force: the running policy's, or the configured trust anchor when no
    /// governed policy was ever loaded.
    pub governance: &'a Governance,
    /// The policy in force, when there is one to compare with (a change to it may be admitted
    /// with `tighten_threshold`); `None` admits only with the full threshold.
    pub in_force: Option<&'a Policy>,
    /// The policy to load.
    pub new: &'a Policy,
    /// The deployment: the audit log's origin.
    pub origin: &'a str,
    /// The signatures found beside the new policy.
    pub signatures: &'a [PolicySignature],
}

/// Decides whether `c.new` may be loaded. See the module documentation for the rule.
pub fn admit(c: &Candidate<'_>) -> Result<Admitted, Refused> {
    let g = c.governance;
    let (serial, sha256) = (c.new.serial(), c.new.hash());
    // Valid signatures: (name, key), each once.
    let mut valid: BTreeSet<(String, [u8; 32])> = BTreeSet::new();
    let mut ignored: Vec<String> = Vec::new();
    for s in c.signatures {
        let who = format!(
            "`{}` (ed25519:{})",
            s.administrator,
            hex::encode(s.public_key)
        );
        if s.sha256 != sha256 {
            ignored.push(format!(
                "{who} signed sha256 {}, not this file's {}",
                hex::encode(s.sha256),
                hex::encode(sha256)
            ));
        } else if s.serial != serial {
            ignored.push(format!(
                "{who} signed serial {}, not the file's serial {serial}",
                s.serial
            ));
        } else if !s.verifies(c.origin) {
            ignored.push(format!(
                "{who}: the signature does not verify for origin `{}` (signed for another \
                 deployment, or damaged)",
                c.origin
            ));
        } else if !valid.insert((s.administrator.clone(), s.public_key)) {
            ignored.push(format!("{who} signed twice; counted once"));
        }
    }
    let new_g = c.new.governance();
    let counted = |gov: &Governance| -> BTreeSet<String> {
        valid
            .iter()
            .filter(|(name, key)| gov.administrators.get(name) == Some(key))
            .map(|(name, _)| name.clone())
            .collect()
    };
    let in_g = counted(g);
    let in_new = new_g.map(counted).unwrap_or_default();
    for (name, key) in &valid {
        let of_g = g.administrators.get(name) == Some(key);
        let of_new = new_g.is_some_and(|n| n.administrators.get(name) == Some(key));
        if !of_g && !of_new {
            ignored.push(format!(
                "`{name}` (ed25519:{}) is not an administrator with that key",
                hex::encode(key)
            ));
        }
    }
    let mut signers: BTreeSet<String> = in_g.clone();
    signers.extend(in_new.iter().cloned());
    let signers: Vec<String> = signers.into_iter().collect();
    let list = |s: &BTreeSet<String>| -> String {
        if s.is_empty() {
            "none".into()
        } else {
            s.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let found = |extra: String| -> String {
        let mut reason = format!(
            "policy serial {serial} (sha256 {}) is not signed by enough policy administrators: \
             {extra}",
            hex::encode(sha256)
        );
        if c.signatures.is_empty() {
            reason.push_str("; the signature file holds no signatures");
        }
        if !ignored.is_empty() {
            reason.push_str("; not counted: ");
            reason.push_str(&ignored.join("; "));
        }
        reason
    };
    let refuse = |reason: String| Refused {
        reason,
        signers: signers.clone(),
    };
    let Some(new_g) = new_g else {
        return Err(refuse(format!(
            "policy serial {serial} has no [governance] table; signerd loads only policies that \
             say who may sign the next one"
        )));
    };
    let have = in_g.len();
    let full = have >= g.threshold as usize;
    if new_g != g {
        // Rotation: the quorum in force and the new quorum must both agree.
        if !full {
            return Err(refuse(found(format!(
                "it changes the governance, which needs {} signatures of the administrators in \
                 force ({g}); found {have}: {}",
                g.threshold,
                list(&in_g)
            ))));
        }
        if in_new.len() < new_g.threshold as usize {
            return Err(refuse(found(format!(
                "it changes the governance, which also needs {} signatures of its own \
                 administrators ({new_g}); found {}: {}",
                new_g.threshold,
                in_new.len(),
                list(&in_new)
            ))));
        }
        return Ok(Admitted {
            threshold: Threshold::Full,
            signers,
        });
    }
    if full {
        return Ok(Admitted {
            threshold: Threshold::Full,
            signers,
        });
    }
    let tighten_reason = match c.in_force {
        None => "no policy is in force to compare with".to_owned(),
        Some(old) => {
            let d = crate::diff(old, c.new);
            if d.loosens() {
                let loosening: Vec<String> = d
                    .changes
                    .iter()
                    .filter(|ch| ch.loosens)
                    .map(|ch| format!("{}: {}", ch.subject, ch.description))
                    .collect();
                format!("the change loosens the policy ({})", loosening.join("; "))
            } else if have >= g.tighten_threshold as usize {
                return Ok(Admitted {
                    threshold: Threshold::Tighten,
                    signers,
                });
            } else {
                format!(
                    "the change only tightens, which needs {} signatures",
                    g.tighten_threshold
                )
            }
        }
    };
    Err(refuse(found(format!(
        "found {have} of the {} needed from the administrators in force ({g}): {}; {tighten_reason}",
        g.threshold,
        list(&in_g)
    ))))
}

#[cfg(test)]
mod tests;
