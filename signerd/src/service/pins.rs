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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use ed25519_dalek::Signer as _;

    use super::*;
    use crate::audit::{AuditOptions, CheckpointSigner};
    use crate::keys::Algorithm;

    struct TestSigner(ed25519_dalek::SigningKey);

    impl CheckpointSigner for TestSigner {
        fn name(&self) -> &str {
            "pins-test"
        }
        fn public_key(&self) -> [u8; 32] {
            self.0.verifying_key().to_bytes()
        }
        fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
            Ok(self.0.sign(message).to_bytes())
        }
    }

    fn log(dir: &std::path::Path) -> AuditLog {
        let opts = AuditOptions {
            min_free_bytes: Some(0),
            ..AuditOptions::new(Arc::new(TestSigner(ed25519_dalek::SigningKey::from_bytes(
                &[9; 32],
            ))))
        };
        AuditLog::open(dir, opts).unwrap()
    }

    fn info(id: &str, version: Option<u32>, public: u8) -> KeyInfo {
        KeyInfo {
            id: id.to_owned(),
            algorithm: Algorithm::Ed25519,
            backend: "vault",
            public_key: vec![public; 32],
            version,
        }
    }

    fn transit(exportable: bool) -> Protection {
        Protection::Transit {
            name: "signerd-k".to_owned(),
            key_type: "ed25519",
            exportable,
        }
    }

    fn records(dir: &std::path::Path, kind: &str) -> usize {
        let needle = format!("\"type\":\"{kind}\"");
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .map(|text| text.matches(&needle).count())
            .sum()
    }

    fn refused(r: Result<u64, PinError>) -> Refused {
        match r {
            Err(PinError::Refused(r)) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// A key is pinned once; another public key under its (id, version), a version below the
    /// highest pinned one, and a weak key that is not allowed are refused; an allowed weak key
    /// is pinned with its weaknesses and its allowance recorded once per run; a new run learns
    /// the pins from the log and refuses the same keys.
    #[tokio::test]
    async fn pins_refuse_other_keys_lower_versions_and_weak_keys_across_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let audit = log(&dir);
        let pins = Pins::default();
        pins.learn(Vec::new(), &["weak".to_owned()]).unwrap();
        let strong = transit(false);

        let v1 = pins.check(&audit, &info("k", Some(1), 1), &strong).await;
        let v1 = v1.unwrap();
        let again = pins.check(&audit, &info("k", Some(1), 1), &strong).await;
        assert_eq!(again.unwrap(), v1);
        assert_eq!(records(&dir, "key.pin"), 1);

        let other = refused(pins.check(&audit, &info("k", Some(1), 2), &strong).await);
        assert_eq!((other.reason, other.pin), (Reason::PublicKey, Some(v1)));

        let v3 = pins.check(&audit, &info("k", Some(3), 3), &strong).await;
        let v3 = v3.unwrap();
        let lower = refused(pins.check(&audit, &info("k", Some(2), 4), &strong).await);
        assert_eq!((lower.reason, lower.pin), (Reason::Version, Some(v3)));
        assert!(
            lower.message.contains("below version 3"),
            "{}",
            lower.message
        );

        // Made exportable after it was pinned: refused from then on.
        let exported = refused(
            pins.check(&audit, &info("k", Some(3), 3), &transit(true))
                .await,
        );
        assert_eq!((exported.reason, exported.pin), (Reason::Weak, Some(v3)));

        // An allowed weak key: pinned with what it lacks, its allowance recorded once.
        let weak = pins
            .check(&audit, &info("weak", Some(1), 5), &transit(true))
            .await;
        let weak = weak.unwrap();
        let weak_again = pins
            .check(&audit, &info("weak", Some(1), 5), &transit(true))
            .await;
        assert_eq!(weak_again.unwrap(), weak);
        assert_eq!(records(&dir, "key.allowance"), 1);
        assert_eq!(records(&dir, "key.pin"), 3);
        audit.shutdown().await.unwrap();
        drop(audit);

        // The next run learns the pins from the log.
        let audit = log(&dir);
        let scanned = crate::state::reconcile::scan(&dir, 0, &mut |_| Ok(())).unwrap();
        let pins = Pins::default();
        assert_eq!(pins.learn(scanned.pins, &[]).unwrap(), 3);
        let other = refused(pins.check(&audit, &info("k", Some(3), 2), &strong).await);
        assert_eq!((other.reason, other.pin), (Reason::PublicKey, Some(v3)));
        let lower = refused(pins.check(&audit, &info("k", Some(2), 4), &strong).await);
        assert_eq!(lower.reason, Reason::Version);
        assert_eq!(
            pins.check(&audit, &info("k", Some(3), 3), &strong)
                .await
                .unwrap(),
            v3
        );
        // Not allowed in this run: refused although it is pinned.
        let weak_now = refused(
            pins.check(&audit, &info("weak", Some(1), 5), &transit(true))
                .await,
        );
        assert_eq!((weak_now.reason, weak_now.pin), (Reason::Weak, Some(weak)));
        assert_eq!(records(&dir, "key.pin"), 3);
    }

    /// What the token does not report counts as its unsafe value.
    #[test]
    fn unreported_token_attributes_are_weaknesses() {
        let token = |s, e, n| Protection::Token {
            serial: "1".to_owned(),
            ckid: vec![1],
            sensitive: s,
            extractable: e,
            never_extractable: n,
        };
        assert!(
            token(Some(true), Some(false), Some(true))
                .weaknesses()
                .is_empty()
        );
        assert_eq!(
            token(None, None, None).weaknesses(),
            ["not_sensitive", "extractable", "was_extractable"]
        );
        let checked = token(None, None, None).checked();
        assert_eq!(
            (
                checked.sensitive,
                checked.extractable,
                checked.never_extractable
            ),
            (Some(false), Some(true), Some(false))
        );
        assert!(Protection::Soft.weaknesses().is_empty());
        assert_eq!(transit(true).weaknesses(), ["exportable"]);
    }
}
