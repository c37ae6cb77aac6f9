//! `[keys.pkcs11]`: which PKCS#11 module and token to use, how to log in, how many sessions,
//! and which token objects are signerd's keys.
//!
//! The PIN is never in this table: it comes from `pin_file`, `pin_env` or `pin_credential`
//! ([`SecretSource`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::SecretSource;
use crate::config::duration::{DurationSetting, LegacyUnit};

/// `[keys.pkcs11]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library) to load.
    pub module: PathBuf,
    /// Selects the token by its label (exactly one of `token_label` and `token_serial`).
    pub token_label: Option<String>,
    /// Selects the token by its serial number.
    pub token_serial: Option<String>,
    /// File whose first line is the user PIN.
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// systemd credential holding the user PIN.
    pub pin_credential: Option<String>,
    /// Sessions kept open for signing; at most this many calls run at once.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Longest wait for one PKCS#11 call (and for a free session); read it with
    /// [`Pkcs11Config::call_timeout`].
    #[serde(default, with = "humantime_serde")]
    call_timeout: Option<Duration>,
    /// Deprecated: `call_timeout` in milliseconds.
    #[serde(default)]
    call_timeout_ms: Option<u64>,
    /// Token objects made by other tools, given signerd key ids.
    #[serde(default)]
    pub adopt: Vec<AdoptConfig>,
}

/// `[[keys.pkcs11.adopt]]`: a key pair already in the token, named for signerd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptConfig {
    /// The signerd key id it gets.
    pub id: String,
    /// Match the private key by `CKA_LABEL`.
    pub label: Option<String>,
    /// Match the private key by `CKA_ID`, in hex.
    pub ckid: Option<String>,
}

fn default_sessions() -> usize {
    4
}
const CALL_TIMEOUT: DurationSetting = DurationSetting {
    table: "keys.pkcs11",
    key: "call_timeout",
    legacy_key: "call_timeout_ms",
    legacy_unit: LegacyUnit::Millis,
    default: Duration::from_secs(5),
    min: Duration::from_millis(100),
    max: Duration::from_secs(60),
};

impl Pkcs11Config {
    /// Where the PIN comes from.
    pub fn pin_source(&self) -> SecretSource {
        SecretSource {
            file: self.pin_file.clone(),
            env: self.pin_env.clone(),
            credential: self.pin_credential.clone(),
        }
    }

    /// The per-call timeout (`call_timeout`, default 5 s).
    pub fn call_timeout(&self) -> Duration {
        CALL_TIMEOUT.value(self.call_timeout, self.call_timeout_ms)
    }

    /// A warning if the table uses a deprecated key.
    pub(crate) fn deprecation(&self) -> Option<String> {
        CALL_TIMEOUT.deprecation(self.call_timeout_ms)
    }

    /// Makes relative paths absolute against the configuration file's directory. The module
    /// path is resolved only when it contains a `/`, so a bare library name is still found by
    /// the dynamic loader's search path.
    pub fn resolve(&mut self, base: &Path) {
        if self.module.is_relative() && self.module.components().count() > 1 {
            self.module = base.join(&self.module);
        }
        if let Some(f) = &mut self.pin_file
            && f.is_relative()
        {
            *f = base.join(&*f);
        }
    }

    /// Checks the table on its own (no token is touched).
    pub fn validate(&self) -> Result<(), String> {
        if self.module.as_os_str().is_empty() {
            return Err("keys.pkcs11.module: required (path of the PKCS#11 library)".into());
        }
        if self.token_label.is_some() == self.token_serial.is_some() {
            return Err("keys.pkcs11: set exactly one of `token_label` and `token_serial`".into());
        }
        for (name, v) in [
            ("token_label", &self.token_label),
            ("token_serial", &self.token_serial),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 32)
            {
                return Err(format!(
                    "keys.pkcs11.{name}: must be 1 to 32 characters (the PKCS#11 field size)"
                ));
            }
        }
        self.pin_source().validate("keys.pkcs11.pin")?;
        if !(1..=64).contains(&self.sessions) {
            return Err(format!(
                "keys.pkcs11.sessions = {} is outside 1 ..= 64",
                self.sessions
            ));
        }
        CALL_TIMEOUT.check(self.call_timeout, self.call_timeout_ms)?;
        let mut ids = std::collections::BTreeSet::new();
        for a in &self.adopt {
            crate::keys::key_id(&a.id).map_err(|e| format!("keys.pkcs11.adopt: {e}"))?;
            if !ids.insert(a.id.as_str()) {
                return Err(format!(
                    "keys.pkcs11.adopt: key id `{}` is listed twice",
                    a.id
                ));
            }
            if a.label.is_some() == a.ckid.is_some() {
                return Err(format!(
                    "keys.pkcs11.adopt `{}`: set exactly one of `label` and `ckid`",
                    a.id
                ));
            }
            if let Some(h) = &a.ckid
                && (h.is_empty() || hex::decode(h).is_err())
            {
                return Err(format!(
                    "keys.pkcs11.adopt `{}`: ckid `{h}` is not hex",
                    a.id
                ));
            }
        }
        Ok(())
    }
}
