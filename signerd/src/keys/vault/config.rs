//! `[keys.vault]`: where the Vault or OpenBao server is, how signerd authenticates to it, and
//! which transit keys are signerd's.
//!
//! This module only parses and checks settings; it never reads a secret (the token and the
//! AppRole secret id are read by [`super::client`] from the sources named here) and its
//! errors never contain one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::SecretSource;
use crate::config::duration::{DurationSetting, LegacyUnit};

/// `[keys.vault]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKeysConfig {
    /// Server address, `http://host:port` or `https://host:port`.
    pub address: String,
    /// PEM CA certificates that issue the server's certificate; required for `https`.
    pub ca_file: Option<PathBuf>,
    /// Mount path of the transit secrets engine.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Transit keys named `<key_prefix><key id>` are signerd's keys.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Transit key (created with `derived=true`) that encrypts transit-wrapped secp256k1 keys.
    pub wrapping_key: Option<String>,
    /// Directory of transit-wrapped key files (ciphertext only); needed with `wrapping_key`.
    pub wrapped_dir: Option<PathBuf>,
    /// Deadline for one call to Vault; read it with [`VaultKeysConfig::timeout`].
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    /// Deprecated: `timeout` in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Most calls to Vault in flight at once (and idle pooled connections kept).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// File holding a Vault token (first line).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding a Vault token.
    pub token_env: Option<String>,
    /// systemd credential holding a Vault token.
    pub token_credential: Option<String>,
    /// `[keys.vault.approle]`: AppRole login instead of a token.
    pub approle: Option<AppRoleConfig>,
}

/// `[keys.vault.approle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    /// The role id (not a secret on its own).
    pub role_id: String,
    /// Mount path of the AppRole auth method.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    /// File holding the secret id (first line).
    pub secret_id_file: Option<PathBuf>,
    /// Environment variable holding the secret id.
    pub secret_id_env: Option<String>,
    /// systemd credential holding the secret id.
    pub secret_id_credential: Option<String>,
}

fn default_mount() -> String {
    "transit".to_owned()
}
fn default_key_prefix() -> String {
    "signerd-".to_owned()
}
const TIMEOUT: DurationSetting = DurationSetting {
    table: "keys.vault",
    key: "timeout",
    legacy_key: "timeout_ms",
    legacy_unit: LegacyUnit::Millis,
    default: Duration::from_secs(5),
    min: Duration::from_millis(100),
    max: Duration::from_secs(120),
};
fn default_max_connections() -> usize {
    64
}
fn default_approle_mount() -> String {
    "approle".to_owned()
}

/// How signerd authenticates to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A token read from this source.
    Token(SecretSource),
    /// AppRole login.
    AppRole {
        /// The role id.
        role_id: String,
        /// The auth mount.
        mount: String,
        /// Where the secret id comes from.
        secret_id: SecretSource,
    },
}

impl VaultKeysConfig {
    /// Where the token comes from (all unset without token auth).
    pub fn token_source(&self) -> SecretSource {
        SecretSource {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    /// The configured authentication method. Call after [`VaultKeysConfig::validate`].
    pub fn auth(&self) -> AuthMethod {
        match &self.approle {
            Some(a) => AuthMethod::AppRole {
                role_id: a.role_id.clone(),
                mount: a.mount.clone(),
                secret_id: SecretSource {
                    file: a.secret_id_file.clone(),
                    env: a.secret_id_env.clone(),
                    credential: a.secret_id_credential.clone(),
                },
            },
            None => AuthMethod::Token(self.token_source()),
        }
    }

    /// Per-call deadline (`timeout`, default 5 s).
    pub fn timeout(&self) -> Duration {
        TIMEOUT.value(self.timeout, self.timeout_ms)
    }

    /// A warning if the table uses a deprecated key.
    pub(crate) fn deprecation(&self) -> Option<String> {
        TIMEOUT.deprecation(self.timeout_ms)
    }

    /// Makes relative paths absolute against `base`.
    pub fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            self.ca_file.as_mut(),
            self.wrapped_dir.as_mut(),
            self.token_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        if let Some(f) = self
            .approle
            .as_mut()
            .and_then(|a| a.secret_id_file.as_mut())
        {
            abs(f);
        }
    }

    /// Checks every setting; messages name the setting.
    pub fn validate(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.address)
            .map_err(|e| format!("keys.vault.address `{}`: {e}", self.address))?;
        match url.scheme() {
            "https" => {
                if self.ca_file.is_none() {
                    return Err(
                        "keys.vault.ca_file: required with an https address (the CA that issues \
                         the Vault server's certificate)"
                            .into(),
                    );
                }
            }
            "http" => {
                if self.ca_file.is_some() {
                    return Err("keys.vault.ca_file: set, but the address is http (no TLS)".into());
                }
            }
            other => {
                return Err(format!(
                    "keys.vault.address: scheme `{other}` is not supported (use http or https)"
                ));
            }
        }
        if url.host_str().is_none() || url.path() != "/" || url.query().is_some() {
            return Err(format!(
                "keys.vault.address `{}`: give only scheme, host and port",
                self.address
            ));
        }
        check_path_segment("keys.vault.mount", &self.mount)?;
        if self.key_prefix.len() > 64
            || !self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "keys.vault.key_prefix `{}`: at most 64 characters from A-Z a-z 0-9 . _ -",
                self.key_prefix
            ));
        }
        match (&self.wrapping_key, &self.wrapped_dir) {
            (Some(k), Some(_)) => check_path_segment("keys.vault.wrapping_key", k)?,
            (None, None) => {}
            _ => {
                return Err(
                    "keys.vault: set both `wrapping_key` and `wrapped_dir` (transit-wrapped \
                     secp256k1 keys) or neither"
                        .into(),
                );
            }
        }
        TIMEOUT.check(self.timeout, self.timeout_ms)?;
        if !(1..=4096).contains(&self.max_connections) {
            return Err(format!(
                "keys.vault.max_connections: {} is out of range 1..=4096",
                self.max_connections
            ));
        }
        let token_set = self.token_file.is_some()
            || self.token_env.is_some()
            || self.token_credential.is_some();
        match (&self.approle, token_set) {
            (Some(_), true) => Err(
                "keys.vault: set either a token (`token_file`, `token_env`, `token_credential`) \
                 or [keys.vault.approle], not both"
                    .into(),
            ),
            (None, false) => Err(
                "keys.vault: no authentication: set one of `token_file`, `token_env`, \
                 `token_credential`, or a [keys.vault.approle] table"
                    .into(),
            ),
            (None, true) => self.token_source().validate("keys.vault.token"),
            (Some(a), false) => {
                if a.role_id.is_empty() || a.role_id.len() > 256 {
                    return Err("keys.vault.approle.role_id: must be 1 to 256 characters".into());
                }
                check_path_segment("keys.vault.approle.mount", &a.mount)?;
                match self.auth() {
                    AuthMethod::AppRole { secret_id, .. } => {
                        secret_id.validate("keys.vault.approle.secret_id")
                    }
                    AuthMethod::Token(_) => Ok(()),
                }
            }
        }
    }
}

/// A mount path or key name: it becomes part of a URL path, so only safe characters.
fn check_path_segment(what: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('/')
        && !v.ends_with('/')
        && !v.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{v}`: 1 to 128 characters from A-Z a-z 0-9 . _ - and inner `/`"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(src: &str) -> Result<VaultKeysConfig, String> {
        let c: VaultKeysConfig = toml::from_str(src).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn token_config_gets_defaults() {
        let c =
            parse("address = \"http://127.0.0.1:8200\"\ntoken_env = \"VAULT_TOKEN\"\n").unwrap();
        assert_eq!(c.mount, "transit");
        assert_eq!(c.key_prefix, "signerd-");
        assert_eq!(c.timeout(), Duration::from_secs(5));
        assert_eq!(c.deprecation(), None);
        assert_eq!(c.max_connections, 64);
        assert!(
            matches!(c.auth(), AuthMethod::Token(s) if s.env.as_deref() == Some("VAULT_TOKEN"))
        );
    }

    #[test]
    fn timeout_is_a_duration_with_a_deprecated_alias() {
        let base = "address = \"http://127.0.0.1:8200\"\ntoken_env = \"T\"\n";
        let c = parse(&format!("{base}timeout = \"2s 500ms\"\n")).unwrap();
        assert_eq!(c.timeout(), Duration::from_millis(2500));
        assert_eq!(c.deprecation(), None);
        let c = parse(&format!("{base}timeout_ms = 2500\n")).unwrap();
        assert_eq!(c.timeout(), Duration::from_millis(2500));
        assert_eq!(
            c.deprecation().as_deref(),
            Some("keys.vault.timeout_ms is deprecated: write timeout = \"2s 500ms\"")
        );
    }

    #[test]
    fn approle_config_is_read() {
        let c = parse(
            "address = \"http://127.0.0.1:8200\"\n[approle]\nrole_id = \"r\"\nsecret_id_file = \"sid\"\n",
        )
        .unwrap();
        match c.auth() {
            AuthMethod::AppRole {
                role_id,
                mount,
                secret_id,
            } => {
                assert_eq!(role_id, "r");
                assert_eq!(mount, "approle");
                assert_eq!(secret_id.file, Some(PathBuf::from("sid")));
            }
            AuthMethod::Token(_) => panic!("expected approle"),
        }
    }

    #[test]
    fn bad_configs_are_refused_precisely() {
        let base = "address = \"http://127.0.0.1:8200\"\ntoken_env = \"T\"\n";
        for (src, want) in [
            (
                "address = \"http://127.0.0.1:8200\"\n".to_owned(),
                "no authentication",
            ),
            (
                format!("{base}[approle]\nrole_id = \"r\"\nsecret_id_env = \"S\"\n"),
                "not both",
            ),
            (
                "address = \"http://x:1\"\ntoken_env = \"T\"\ntoken_file = \"f\"\n".to_owned(),
                "exactly one of `token_file`",
            ),
            (
                "address = \"https://vault:8200\"\ntoken_env = \"T\"\n".to_owned(),
                "keys.vault.ca_file: required",
            ),
            (
                "address = \"ftp://vault:8200\"\ntoken_env = \"T\"\n".to_owned(),
                "scheme `ftp`",
            ),
            (
                "address = \"http://vault:8200/v1/x\"\ntoken_env = \"T\"\n".to_owned(),
                "only scheme, host and port",
            ),
            (format!("{base}mount = \"../sys\"\n"), "keys.vault.mount"),
            (
                format!("{base}key_prefix = \"a/b\"\n"),
                "keys.vault.key_prefix",
            ),
            (
                format!("{base}wrapping_key = \"w\"\n"),
                "`wrapping_key` and `wrapped_dir`",
            ),
            (
                format!("{base}timeout_ms = 5\n"),
                "keys.vault.timeout_ms = 5 is outside 100..=120000",
            ),
            (
                format!("{base}timeout = \"121s\"\n"),
                "keys.vault.timeout = \"2m 1s\" is outside \"100ms\"..=\"2m\"",
            ),
            (
                format!("{base}timeout = \"2s\"\ntimeout_ms = 2000\n"),
                "keys.vault: both `timeout` and `timeout_ms` are set",
            ),
            (format!("{base}timeout = 2000\n"), "expected a duration"),
            (
                format!("{base}max_connections = 0\n"),
                "keys.vault.max_connections",
            ),
            (
                "address = \"http://x:1\"\n[approle]\nrole_id = \"r\"\n".to_owned(),
                "keys.vault.approle.secret_id: set exactly one",
            ),
            (format!("{base}tokn = 1\n"), "unknown field `tokn`"),
        ] {
            let e = parse(&src).unwrap_err();
            assert!(e.contains(want), "{src:?}: {e}");
        }
    }
}
