//! Keys pinned in the audit log: the public key each (key id, version) had the first time
//! signerd served it, and the check that every later signature is made by that same key.
//!
//! The first time a (key, version) is about to sign, a `key.pin` record (its public key, and
//! what its backend says about its protection) is made durable before the key signs; from
//! then on, in this run and in every later one (the pins are learned from the log at start),
//! the key must present the same public key, and a versioned key (Vault transit) must not go
//! below the highest version pinned for it. A key that lacks a protection (extractable, not
//! sensitive, exportable) is refused unless the operator allows it by id
//! (`keys.allow_weak_keys`), and a served allowance is recorded (`key.allowance`) once per
//! run. Once a (key, version) has been checked in a run, the check before each signature is
//! a map lookup and two comparisons.
//!
//! This module must never let a key sign that differs from its pin, and never let a
//! signature leave before the pin it names is durable.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::audit::events::{KeyAllowance, KeyPin};
use crate::audit::{AuditError, AuditLog};
use crate::keys::{KeyInfo, Protection};

/// The configuration setting that allows weak keys, as `key.allowance` names it.
pub(crate) const ALLOW_SETTING: &str = "keys.allow_weak_keys";

/// Why a key was refused, for the metric and the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The public key differs from the pinned one.
    PublicKey,
    /// The version is below the highest one pinned for the key.
    Version,
    /// The key lacks a protection and is not allowed.
    Weak,
}

impl Reason {
    /// The metric label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Reason::PublicKey => "public_key",
            Reason::Version => "version",
            Reason::Weak => "weak",
        }
    }
}

/// A key that may not sign.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    /// Why.
    pub(crate) reason: Reason,
    /// The `seq` of the pin the key was checked against, if there is one.
    pub(crate) pin: Option<u64>,
    /// What the client and the record are told.
    pub(crate) message: String,
}

/// Why the check did not give a pin.
#[derive(Debug)]
pub(crate) enum PinError {
    /// The key may not sign.
    Refused(Refused),
    /// The pin or the allowance could not be recorded.
    Audit(AuditError),
}

/// One pinned (key, version).
#[derive(Debug)]
struct Pin {
    seq: u64,
    public_key: Vec<u8>,
    /// The protection this run checked against the pin (and, for a weak key, allowed);
    /// `None` until the key first signs in this run.
    vetted: Option<Protection>,
    /// The weaknesses whose allowance this run has recorded.
    allowance: Option<Vec<&'static str>>,
}

/// Every pin of one key id.
#[derive(Debug, Default)]
struct KeyPins {
    /// The highest pinned version (versioned keys only).
    highest: Option<(u32, u64)>,
    versions: HashMap<Option<u32>, Pin>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, KeyPins>,
    allowed: HashSet<String>,
}

/// The pins of the running daemon.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    state: RwLock<State>,
    /// Held while a pin or an allowance is written, so that one (key, version) gets one pin.
    writing: tokio::sync::Mutex<()>,
}

impl Pins {
    /// Installs the pins found in the audit log (`(seq, record)`, in log order) and the keys
    /// the operator allows to be weak. The first pin of a (key, version) is the one that
    /// counts.
    pub(crate) fn learn(
        &self,
        pins: Vec<(u64, KeyPin)>,
        allowed: &[String],
    ) -> Result<usize, String> {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.allowed = allowed.iter().cloned().collect();
        let mut learned = 0;
        for (seq, pin) in pins {
            let version = pin
                .version
                .map(u32::try_from)
                .transpose()
                .map_err(|_| format!("key.pin at seq {seq}: version out of range"))?;
            let public_key = pin
                .public_key
                .strip_prefix("0x")
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| format!("key.pin at seq {seq}: public_key is not 0x-hex"))?;
            let key = state.keys.entry(pin.key.clone()).or_default();
            if let Some(first) = key.versions.get(&version) {
                if first.public_key != public_key {
                    tracing::error!(
                        key = %pin.key,
                        version = ?version,
                        first = first.seq,
                        seq,
                        "the audit log pins two public keys for one key version; the first counts"
                    );
                }
                continue;
            }
            if let Some(v) = version
                && key.highest.is_none_or(|(h, _)| v > h)
            {
                key.highest = Some((v, seq));
            }
            key.versions.insert(
                version,
                Pin {
                    seq,
                    public_key,
                    vetted: None,
                    allowance: None,
                },
            );
            learned += 1;
        }
        Ok(learned)
    }

    /// The `seq` of the pin of the key `info` describes, when it may sign: after the pin
    /// (and, for an allowed weak key, the allowance) is durable in `audit`.
    pub(crate) async fn check(
        &self,
        audit: &AuditLog,
        info: &KeyInfo,
        protection: &Protection,
    ) -> Result<u64, PinError> {
        if let Some(seq) = self.vetted(info, protection)? {
            return Ok(seq);
        }
        let _writing = self.writing.lock().await;
        // Checked again: another request may have pinned it meanwhile.
        if let Some(seq) = self.vetted(info, protection)? {
            return Ok(seq);
        }
        let weak = protection.weaknesses();
        let (allowed, known) = {
            let state = self.read();
            let known = state
                .keys
                .get(&info.id)
                .and_then(|k| k.versions.get(&info.version))
                .map(|p| (p.seq, p.allowance.clone()));
            (state.allowed.contains(&info.id), known)
        };
        if !weak.is_empty() && !allowed {
            let pin = known.map(|(seq, _)| seq);
            return Err(PinError::Refused(Refused {
                reason: Reason::Weak,
                pin,
                message: format!(
                    "key `{}`{} lacks protections ({}) and {ALLOW_SETTING} does not name it; \
                     nothing was signed",
                    info.id,
                    version_text(info.version),
                    weak.join(", ")
                ),
            }));
        }
        let (seq, recorded) = match known {
            Some(known) => known,
            None => {
                let record = KeyPin {
                    key: info.id.clone(),
                    version: info.version.map(u64::from),
                    algorithm: info.algorithm.as_str().to_owned(),
                    backend: info.backend.to_owned(),
                    public_key: format!("0x{}", hex::encode(&info.public_key)),
                    checked: protection.checked(),
                    weak: weak.iter().map(|w| (*w).to_owned()).collect(),
                };
                let receipt = audit
                    .append_durable(record)
                    .await
                    .map_err(PinError::Audit)?;
                tracing::info!(key = %info.id, version = ?info.version, seq = receipt.seq, "key pinned in the audit log");
                let mut state = self.write();
                let key = state.keys.entry(info.id.clone()).or_default();
                if let Some(v) = info.version
                    && key.highest.is_none_or(|(h, _)| v > h)
                {
                    key.highest = Some((v, receipt.seq));
                }
                key.versions.insert(
                    info.version,
                    Pin {
                        seq: receipt.seq,
                        public_key: info.public_key.clone(),
                        vetted: None,
                        allowance: None,
                    },
                );
                (receipt.seq, None)
            }
        };
        let allowance = if !weak.is_empty() && recorded.as_deref() != Some(&weak[..]) {
            audit
                .append_durable(KeyAllowance {
                    key: info.id.clone(),
                    version: info.version.map(u64::from),
                    pin: seq,
                    weak: weak.iter().map(|w| (*w).to_owned()).collect(),
                    setting: ALLOW_SETTING.to_owned(),
                })
                .await
                .map_err(PinError::Audit)?;
            tracing::warn!(key = %info.id, weak = %weak.join(", "), "a weak key signs because {ALLOW_SETTING} allows it");
            Some(weak)
        } else {
            recorded
        };
        let mut state = self.write();
        if let Some(pin) = state
            .keys
            .get_mut(&info.id)
            .and_then(|k| k.versions.get_mut(&info.version))
        {
            pin.vetted = Some(protection.clone());
            pin.allowance = allowance;
        }
        Ok(seq)
    }

    /// The pin's `seq` when this run has already checked the key as it is now; `None` when it
    /// must be checked (and maybe pinned) under the writing lock; an error when the key
    /// differs from its pin or is below the highest pinned version.
    fn vetted(&self, info: &KeyInfo, protection: &Protection) -> Result<Option<u64>, PinError> {
        let state = self.read();
        let Some(key) = state.keys.get(&info.id) else {
            return Ok(None);
        };
        if let (Some(v), Some((highest, at))) = (info.version, key.highest)
            && v < highest
        {
            return Err(PinError::Refused(Refused {
                reason: Reason::Version,
                pin: Some(at),
                message: format!(
                    "key `{}` is at version {v}, below version {highest} pinned in the audit log \
                     at seq {at} (was it deleted and created again, or rolled back?); nothing \
                     was signed",
                    info.id
                ),
            }));
        }
        let Some(pin) = key.versions.get(&info.version) else {
            return Ok(None);
        };
        if pin.public_key != info.public_key {
            return Err(PinError::Refused(Refused {
                reason: Reason::PublicKey,
                pin: Some(pin.seq),
                message: format!(
                    "key `{}`{} has public key 0x{}, but the audit log pins 0x{} for it at seq \
                     {} (the key was replaced in its backend); nothing was signed",
                    info.id,
                    version_text(info.version),
                    hex::encode(&info.public_key),
                    hex::encode(&pin.public_key),
                    pin.seq
                ),
            }));
        }
        Ok((pin.vetted.as_ref() == Some(protection)).then_some(pin.seq))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn version_text(version: Option<u32>) -> String {
    version.map_or_else(String::new, |v| format!(" version {v}"))
}
