//! The daemon's configuration file (`signerd.toml`): parsing, validation and path resolution.
//!
//! The schema is strict: an unknown field is an error with file, line and column. Relative
//! paths are resolved against the directory of the configuration file, so a configuration
//! means the same thing whatever the working directory. Secrets are never written here: the
//! keystore passphrase comes from a file or an environment variable that the config names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub(crate) mod duration;
mod secret;
use duration::{DurationSetting, LegacyUnit};
pub use secret::{SecretSource, check_secret_file};

/// The longest wait of a batch for announced records when none is configured.
pub const DEFAULT_GROUP_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_micros(1000);

/// Longest identity id, in bytes.
pub const MAX_IDENTITY_ID_LEN: usize = crate::ids::MAX_CLIENT_ID_LEN;
/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML or not the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Parsed, but inconsistent or unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A validated configuration with absolute paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gRPC listener.
    pub server: ServerConfig,
    /// TLS material for the listener.
    pub tls: TlsConfig,
    /// Mapping from client certificates to identities.
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentityConfig>,
    /// Where the policy file is.
    pub policy: PolicyConfig,
    /// The key backend.
    pub keys: KeysConfig,
    /// The state store.
    pub state: StateConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// The Prometheus endpoint; absent: no metrics listener.
    pub metrics: Option<MetricsConfig>,
    /// The file this configuration was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the plain-HTTP metrics listener (`GET /metrics`).
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Largest request message accepted, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Deadline for one request (a shorter client deadline also applies); read it with
    /// [`ServerConfig::request_timeout`].
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    /// Deprecated: `request_timeout` in milliseconds.
    #[serde(default)]
    request_timeout_ms: Option<u64>,
    /// Deadline for a TLS handshake; read it with [`ServerConfig::handshake_timeout`].
    #[serde(default, with = "humantime_serde")]
    handshake_timeout: Option<Duration>,
    /// Deprecated: `handshake_timeout` in milliseconds.
    #[serde(default)]
    handshake_timeout_ms: Option<u64>,
    /// Most client connections open at once (TLS handshakes in progress included); a
    /// connection beyond it is closed as soon as it is accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections one configured identity holds at once; read it with
    /// [`ServerConfig::max_connections_per_identity`].
    #[serde(default)]
    max_connections_per_identity: Option<usize>,
    /// Most connections that certificates mapped to no identity hold at once, all such
    /// certificates together.
    #[serde(default = "default_max_connections_unmapped")]
    pub max_connections_unmapped: usize,
    /// Deadline, after the TLS handshake, for the HTTP/2 client preface and its first SETTINGS
    /// frame; read it with [`ServerConfig::preface_timeout`].
    #[serde(default, with = "humantime_serde")]
    preface_timeout: Option<Duration>,
    /// A connection with no request in flight for this long is closed; read it with
    /// [`ServerConfig::idle_timeout`].
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    /// Most requests in flight on one connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Lock all of the daemon's memory (`mlockall`) so keys never reach swap.
    #[serde(default)]
    pub lock_memory: bool,
    /// Most signing requests doing their work at once; read it with [`Config::admission`].
    #[serde(default)]
    max_in_flight: Option<usize>,
    /// Longest a signing request waits for its turn before it is shed with
    /// RESOURCE_EXHAUSTED; read it with [`Config::admission`].
    #[serde(default, with = "humantime_serde")]
    queue_timeout: Option<Duration>,
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_concurrent_streams() -> u32 {
    256
}
fn default_max_connections_unmapped() -> usize {
    4
}

/// The default of `server.max_connections_per_identity`, as a share of `max_connections`:
/// a quarter, so that one identity and the unmapped certificates together leave most of the
/// connections to everybody else.
const PER_IDENTITY_SHARE: usize = 4;
/// Range of `server.preface_timeout` and its default.
const PREFACE_TIMEOUT: (Duration, Duration, Duration) = (
    Duration::from_secs(5),
    Duration::from_millis(100),
    Duration::from_secs(60),
);
/// Range of `server.idle_timeout` and its default.
const IDLE_TIMEOUT: (Duration, Duration, Duration) = (
    Duration::from_secs(300),
    Duration::from_secs(1),
    Duration::from_secs(86_400),
);
/// The default of `audit.auth_failure_window`.
pub const DEFAULT_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Range of `audit.auth_failure_window` and its default.
const AUTH_FAILURE_WINDOW: (Duration, Duration, Duration) = (
    DEFAULT_AUTH_FAILURE_WINDOW,
    Duration::from_secs(1),
    Duration::from_secs(3_600),
);

/// Refuses a duration setting (without a deprecated spelling) outside its range.
fn check_duration(
    name: &str,
    value: Option<Duration>,
    (_, min, max): (Duration, Duration, Duration),
) -> Result<(), String> {
    check_range(name, value, min, max)
}

/// Refuses a duration setting outside `min..=max`: every duration range is said one way.
fn check_range(
    name: &str,
    value: Option<Duration>,
    min: Duration,
    max: Duration,
) -> Result<(), String> {
    match value {
        Some(d) if !(min..=max).contains(&d) => Err(format!(
            "{name} = \"{}\" is outside \"{}\"..=\"{}\"",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max),
        )),
        _ => Ok(()),
    }
}

/// Largest `server.max_in_flight`.
const MAX_IN_FLIGHT: usize = 100_000;
/// Range of `server.queue_timeout` (its default follows `request_timeout`).
const QUEUE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(60));

const REQUEST_TIMEOUT: DurationSetting = DurationSetting {
    table: "server",
    key: "request_timeout",
    legacy_key: "request_timeout_ms",
    legacy_unit: LegacyUnit::Millis,
    default: Duration::from_secs(10),
    min: Duration::from_millis(100),
    max: Duration::from_secs(600),
};
const HANDSHAKE_TIMEOUT: DurationSetting = DurationSetting {
    table: "server",
    key: "handshake_timeout",
    legacy_key: "handshake_timeout_ms",
    legacy_unit: LegacyUnit::Millis,
    default: Duration::from_secs(5),
    min: Duration::from_millis(100),
    max: Duration::from_secs(60),
};
const GROUP_COMMIT_WAIT: DurationSetting = DurationSetting {
    table: "audit",
    key: "group_commit_wait",
    legacy_key: "group_commit_wait_micros",
    legacy_unit: LegacyUnit::Micros,
    default: DEFAULT_GROUP_COMMIT_WAIT,
    min: Duration::ZERO,
    max: Duration::from_millis(100),
};

impl ServerConfig {
    /// The deadline for one request (`request_timeout`, default 10 s).
    pub fn request_timeout(&self) -> Duration {
        REQUEST_TIMEOUT.value(self.request_timeout, self.request_timeout_ms)
    }
    /// The deadline for a TLS handshake (`handshake_timeout`, default 5 s).
    pub fn handshake_timeout(&self) -> Duration {
        HANDSHAKE_TIMEOUT.value(self.handshake_timeout, self.handshake_timeout_ms)
    }
    /// The deadline for the HTTP/2 client preface after the handshake (`preface_timeout`,
    /// default 5 s).
    pub fn preface_timeout(&self) -> Duration {
        self.preface_timeout.unwrap_or(PREFACE_TIMEOUT.0)
    }
    /// How long a connection may stay open with no request in flight (`idle_timeout`, default
    /// 5 min).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(IDLE_TIMEOUT.0)
    }
    /// Most connections of one identity (`max_connections_per_identity`, default a quarter of
    /// `max_connections`).
    pub fn max_connections_per_identity(&self) -> usize {
        self.max_connections_per_identity
            .unwrap_or((self.max_connections / PER_IDENTITY_SHARE).max(1))
    }
}

/// `[tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA certificates that issue client certificates.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM) checked for every client certificate.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// One `[[identity]]`: which certificate is which client. Exactly one matcher must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity's id, as policy rules name it.
    pub id: String,
    /// Its roles (`requester`, `approver`, `admin`, ...).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Match the certificate subject's common name.
    pub subject_cn: Option<String>,
    /// Match a URI subject alternative name (for example a SPIFFE id).
    pub san_uri: Option<String>,
    /// Match the SHA-256 fingerprint of the DER certificate (hex, colons allowed).
    pub sha256: Option<String>,
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file.
    pub file: PathBuf,
    /// The policy administrators' signature file; default: the policy file's path with `.sig`
    /// appended.
    pub signatures: Option<PathBuf>,
    /// `[policy.trust]`: who signs the first policy this audit log loads (required). Later
    /// policies are signed by the administrators of the policy in force.
    pub trust: Option<TrustConfig>,
}

/// `[policy.trust]`: the trust anchor for the first policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Signatures of `administrators` that admit the first policy.
    pub threshold: u32,
    /// Signatures that admit a change that only tightens (at most `threshold`).
    pub tighten_threshold: u32,
    /// Administrator name = `"ed25519:<64 hex digits>"`.
    pub administrators: std::collections::BTreeMap<String, String>,
}

impl PolicyConfig {
    /// Where the signatures of the policy file are.
    pub fn signatures_path(&self) -> PathBuf {
        match &self.signatures {
            Some(p) => p.clone(),
            None => {
                let mut p = self.file.clone().into_os_string();
                p.push(".sig");
                PathBuf::from(p)
            }
        }
    }

    /// The configured trust anchor, validated.
    pub fn trust_anchor(&self) -> Result<signerd_policy::Governance, String> {
        let Some(t) = &self.trust else {
            return Err("[policy.trust] is missing: name the policy administrators who sign the                  first policy (`threshold`, `tighten_threshold`, `administrators`); signerd loads                  only signed policies"
                .into());
        };
        let mut admins = std::collections::BTreeMap::new();
        for (name, key) in &t.administrators {
            let k = signerd_policy::parse_approver_key(key)
                .map_err(|e| format!("policy.trust.administrators.{name}: {e}"))?;
            admins.insert(name.clone(), k);
        }
        signerd_policy::Governance::new(t.threshold, t.tighten_threshold, admins)
            .map_err(|e| format!("policy.trust: {e}"))
    }
}

/// Where keys live: `keys.backend`, and `audit.signing_key_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The encrypted software keystore (`[keys.soft]`).
    Soft,
    /// A PKCS#11 token (`[keys.pkcs11]`).
    Pkcs11,
    /// Vault or OpenBao transit (`[keys.vault]`).
    Vault,
}

impl Backend {
    /// The name configuration files use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Soft => "soft",
            Backend::Pkcs11 => "pkcs11",
            Backend::Vault => "vault",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "soft" => Ok(Backend::Soft),
            "pkcs11" => Ok(Backend::Pkcs11),
            "vault" => Ok(Backend::Vault),
            other => Err(format!(
                "unknown backend `{other}` (expected soft, pkcs11 or vault)"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// `soft`, `pkcs11` or `vault`.
    pub backend: Backend,
    /// `[keys.soft]`, required when `backend = "soft"`.
    pub soft: Option<SoftKeysConfig>,
    /// `[keys.pkcs11]`, required when `backend = "pkcs11"`.
    pub pkcs11: Option<crate::keys::pkcs11::Pkcs11Config>,
    /// `[keys.vault]`, required when `backend = "vault"`.
    pub vault: Option<crate::keys::vault::config::VaultKeysConfig>,
    /// Keys that may sign although they lack a protection (a PKCS#11 key that is extractable,
    /// not sensitive or was once extractable; an exportable transit key), by key id. Every
    /// other such key is refused; each use of the allowance is recorded (`key.allowance`).
    #[serde(default)]
    pub allow_weak_keys: Vec<String>,
}

/// Most entries of `keys.allow_weak_keys`.
pub const MAX_ALLOW_WEAK_KEYS: usize = 1024;

/// `[keys.soft]`: the encrypted software keystore.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftKeysConfig {
    /// Keystore directory.
    pub dir: PathBuf,
    /// File holding the keystore passphrase (first line).
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the keystore passphrase.
    pub passphrase_env: Option<String>,
    /// systemd credential holding the keystore passphrase.
    pub passphrase_credential: Option<String>,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Where the state lives: the embedded store (`sled`, the default) or a PostgreSQL
    /// database shared by replicas (`postgres`, with `[state.postgres]`).
    #[serde(default)]
    pub backend: StateBackend,
    /// Directory of the embedded state store (`backend = "sled"`).
    #[serde(default)]
    pub dir: PathBuf,
    /// The database of `backend = "postgres"`.
    pub postgres: Option<PostgresConfig>,
    /// Most bytes of the store sled keeps in memory (its page cache).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// How long an answer is kept for retries of its `request_id`; read it with
    /// [`StateConfig::idempotency_retention`].
    #[serde(default, with = "humantime_serde")]
    idempotency_retention: Option<Duration>,
    /// How often expired answers are pruned; read it with [`StateConfig::prune_interval`].
    #[serde(default, with = "humantime_serde")]
    prune_interval: Option<Duration>,
}

fn default_cache_bytes() -> u64 {
    crate::state::DEFAULT_CACHE_BYTES
}

/// `[state] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// The embedded sled store in `[state] dir`: one instance.
    #[default]
    Sled,
    /// A PostgreSQL database (`[state.postgres]`), which several replicas may share.
    Postgres,
}

/// `[state.postgres] tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    /// TLS, with the server's certificate checked against `ca_file` and the host name.
    #[default]
    VerifyFull,
    /// No TLS: only for a database on this host or a network that is otherwise protected.
    Disable,
}

/// `[state.postgres]`: the database of `[state] backend = "postgres"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The server's host name or address.
    pub host: String,
    /// Its port (default 5432).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// The role signerd logs in as.
    pub user: String,
    /// The database.
    pub dbname: String,
    /// File holding the role's password (first line).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the role's password.
    pub password_env: Option<String>,
    /// systemd credential holding the role's password.
    pub password_credential: Option<String>,
    /// TLS to the database (default `verify-full`).
    #[serde(default)]
    pub tls: PgTls,
    /// PEM file of the certificate authorities the server's certificate must chain to
    /// (`tls = "verify-full"`).
    pub ca_file: Option<PathBuf>,
    /// Most connections this replica opens (default 16).
    #[serde(default = "default_pg_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a connection, and for any one database call (default 5 s): past it the
    /// call fails and the request gets `UNAVAILABLE`.
    #[serde(default = "default_pg_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_pg_port() -> u16 {
    5432
}

fn default_pg_pool_size() -> usize {
    16
}

fn default_pg_timeout() -> Duration {
    Duration::from_secs(5)
}

impl PostgresConfig {
    /// Where the password comes from.
    pub fn password_source(&self) -> SecretSource {
        SecretSource {
            file: self.password_file.clone(),
            env: self.password_env.clone(),
            credential: self.password_credential.clone(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() || self.user.is_empty() || self.dbname.is_empty() {
            return Err("state.postgres: `host`, `user` and `dbname` must not be empty".into());
        }
        if self.port == 0 {
            return Err("state.postgres.port: 0 is not a port".into());
        }
        self.password_source().validate("state.postgres.password")?;
        bounded("state.postgres.pool_size", self.pool_size as u64, 2, 256)?;
        check_range(
            "state.postgres.timeout",
            Some(self.timeout),
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        match (self.tls, &self.ca_file) {
            (PgTls::VerifyFull, None) => Err(
                "state.postgres: tls = \"verify-full\" needs `ca_file` (the authorities of the \
                 database's certificate); set tls = \"disable\" only for a database reached \
                 over a protected network"
                    .into(),
            ),
            (PgTls::Disable, Some(_)) => Err(
                "state.postgres: `ca_file` is set but tls = \"disable\"; remove one of them".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Default of `state.idempotency_retention`: 30 days.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Shortest `state.idempotency_retention`: a second (a retry after it is refused, never signed
/// again, so a short retention costs retries, not safety).
const MIN_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(1);
/// Longest `state.idempotency_retention`: 100 years (of 365.25 days, as `humantime` counts).
const MAX_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(100 * 31_557_600);
/// Default of `state.prune_interval`.
const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(10);
const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(100);
const MAX_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl StateConfig {
    /// `idempotency_retention` (default 30 days).
    pub fn idempotency_retention(&self) -> Duration {
        self.idempotency_retention
            .unwrap_or(DEFAULT_IDEMPOTENCY_RETENTION)
    }

    /// `prune_interval` (default 10 s).
    pub fn prune_interval(&self) -> Duration {
        self.prune_interval.unwrap_or(DEFAULT_PRUNE_INTERVAL)
    }

    fn validate(&self) -> Result<(), String> {
        bounded("state.cache_bytes", self.cache_bytes, 1 << 20, 1 << 40)?;
        match (self.backend, &self.postgres) {
            (StateBackend::Sled, Some(_)) => {
                return Err(
                    "state: [state.postgres] is set but backend is \"sled\"; set backend = \"postgres\""
                        .into(),
                );
            }
            (StateBackend::Sled, None) if self.dir.as_os_str().is_empty() => {
                return Err("state.dir: missing (the embedded store's directory)".into());
            }
            (StateBackend::Postgres, None) => {
                return Err("state: backend = \"postgres\" needs a [state.postgres] table".into());
            }
            (StateBackend::Postgres, Some(pg)) => pg.validate()?,
            _ => {}
        }
        check_range(
            "state.idempotency_retention",
            self.idempotency_retention,
            MIN_IDEMPOTENCY_RETENTION,
            MAX_IDEMPOTENCY_RETENTION,
        )?;
        check_range(
            "state.prune_interval",
            self.prune_interval,
            MIN_PRUNE_INTERVAL,
            MAX_PRUNE_INTERVAL,
        )
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the audit log segments.
    pub dir: PathBuf,
    /// Most records per group commit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest wait of a group commit for the results of signatures being made, so that one
    /// fdatasync covers them too, and of records nobody waits for, so that they are written
    /// with the next record someone waits for (0: write and sync at once); read it with
    /// [`AuditConfig::group_commit_wait`].
    #[serde(default, with = "humantime_serde")]
    group_commit_wait: Option<Duration>,
    /// Deprecated: `group_commit_wait` in microseconds.
    #[serde(default)]
    group_commit_wait_micros: Option<u64>,
    /// Where the audit log's checkpoint signing key lives: `soft` (a keystore of its own in
    /// `signing_key_dir`), or `pkcs11` / `vault` (the token or Vault server of `[keys]`, which
    /// must then use that backend; the key is kept apart from client keys).
    #[serde(default = "default_signing_key_backend")]
    pub signing_key_backend: Backend,
    /// The audit key's name in a `pkcs11` or `vault` backend: its `CKA_LABEL`, or its transit
    /// key name (outside `keys.vault.key_prefix`). Unused for `soft`.
    #[serde(default = "default_signing_key_name")]
    pub signing_key_name: String,
    /// The version of a `vault` audit key that signs (default 1, the version signerd
    /// creates): rotating the transit key does not change the key of a log.
    #[serde(default)]
    pub signing_key_version: Option<u32>,
    /// Directory of the audit log's own checkpoint signing key: a soft keystore holding only
    /// the Ed25519 key `audit-checkpoint`, never usable by clients. Must not be the
    /// `[keys.soft]` directory or inside the audit directory.
    #[serde(default = "default_signing_key_dir")]
    pub signing_key_dir: PathBuf,
    /// File holding the passphrase of the audit signing key (first line). Without it and
    /// without `signing_key_passphrase_env`, the `[keys.soft]` passphrase is used.
    pub signing_key_passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase of the audit signing key.
    pub signing_key_passphrase_env: Option<String>,
    /// systemd credential holding the audit signing key's passphrase.
    pub signing_key_passphrase_credential: Option<String>,
    /// The checkpoints' origin line, which is also the signing key's name: printable ASCII
    /// without spaces or `+`, unique to this log (for example `audit.example.com/signerd`).
    #[serde(default = "default_origin")]
    pub origin: String,
    /// A signed checkpoint after this many records.
    #[serde(default = "default_checkpoint_every_records")]
    pub checkpoint_every_records: u64,
    /// A signed checkpoint after this many seconds, if records were written since the last.
    #[serde(default = "default_checkpoint_every_seconds")]
    pub checkpoint_every_seconds: u64,
    /// The active segment is sealed and a new one started at this size, in bytes.
    #[serde(default = "default_max_segment_bytes")]
    pub max_segment_bytes: u64,
    /// The active segment is sealed and a new one started at this age, in seconds.
    #[serde(default = "default_max_segment_age_seconds")]
    pub max_segment_age_seconds: u64,
    /// Signing stops (fail closed) when the audit filesystem has less free space, in bytes
    /// (0 disables the check). Unset: 64 MiB, or a quarter of the filesystem's size if that is
    /// smaller, so that a small dedicated audit filesystem stays usable.
    #[serde(default)]
    pub min_free_bytes: Option<u64>,
    /// While the audit signing key cannot sign checkpoints (its HSM or Vault is away), records
    /// are still written; once this many wait for a checkpoint, signing stops until one is
    /// signed. Unset: ten times `checkpoint_every_records`.
    #[serde(default)]
    pub max_unattested_records: Option<u64>,
    /// Independent witnesses that cosign the log's checkpoints (`[[audit.witnesses]]`).
    #[serde(default)]
    pub witnesses: Vec<WitnessConfig>,
    /// Pause signing while a witness has not cosigned this many of the latest checkpoint's
    /// records (unset: never pause; signing goes on and the lag is reported).
    #[serde(default)]
    pub witness_max_lag: Option<u64>,
    /// Longest wait for one witness's answer; read it with [`AuditConfig::witness_timeout`].
    #[serde(default, with = "humantime_serde")]
    witness_timeout: Option<Duration>,
    /// Repeated `auth.failure`s of one certificate (or address) and reason within this window
    /// are folded into one record; read it with [`AuditConfig::auth_failure_window`].
    #[serde(default, with = "humantime_serde")]
    auth_failure_window: Option<Duration>,
    /// Benchmarks only: skip the fsync of each group commit, so a signature can be returned
    /// before its record is on disk. Never set this in production; signerd logs an error at
    /// every start while it is set.
    #[serde(default)]
    pub bench_unsafe_no_fsync: bool,
}

/// One `[[audit.witnesses]]` entry: a C2SP tlog-witness that cosigns checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// A short local name: the file `cosignatures/<name>` beside the log and the metric label
    /// (1 to 64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`).
    pub name: String,
    /// The witness's submission prefix (`http://` or `https://`); requests go to
    /// `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's public key: `<witness name>+<key id>+<base64(0x04 || key)>`.
    pub key: String,
    /// For an `https://` url: the CA certificate(s) (PEM) that issued the witness's server
    /// certificate. No other roots are trusted.
    pub ca_file: Option<PathBuf>,
}

/// Default [`AuditConfig::witness_timeout`].
pub const DEFAULT_WITNESS_TIMEOUT: Duration = Duration::from_secs(10);

impl AuditConfig {
    /// Longest wait for one witness answer (default 10 s).
    pub fn witness_timeout(&self) -> Duration {
        self.witness_timeout.unwrap_or(DEFAULT_WITNESS_TIMEOUT)
    }
    /// The window over which repeated authentication failures are folded (default 60 s).
    pub fn auth_failure_window(&self) -> Duration {
        self.auth_failure_window.unwrap_or(AUTH_FAILURE_WINDOW.0)
    }
}

fn default_max_batch() -> usize {
    1024
}
fn default_signing_key_backend() -> Backend {
    Backend::Soft
}
fn default_signing_key_name() -> String {
    "audit-checkpoint".to_owned()
}
fn default_signing_key_dir() -> PathBuf {
    PathBuf::from("audit-key")
}
fn default_origin() -> String {
    "signerd/audit".to_owned()
}
fn default_checkpoint_every_records() -> u64 {
    1000
}
fn default_checkpoint_every_seconds() -> u64 {
    60
}
fn default_max_segment_bytes() -> u64 {
    64 << 20
}
fn default_max_segment_age_seconds() -> u64 {
    86_400
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let read_err = |source| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                path: shown,
                message: format!("file is larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let src = std::fs::read_to_string(path).map_err(read_err)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&shown, &src, &base)
    }

    /// Parses `src` (named `shown` in errors), resolving relative paths against `base`.
    pub fn parse(shown: &str, src: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(src).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |s| signerd_policy::line_col(src, s.start));
            ConfigError::Syntax {
                path: shown.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        cfg.source = PathBuf::from(shown);
        cfg.resolve(base);
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: shown.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.tls.cert);
        abs(&mut self.tls.key);
        abs(&mut self.tls.client_ca);
        self.tls.crls.iter_mut().for_each(abs);
        abs(&mut self.policy.file);
        if let Some(f) = &mut self.policy.signatures {
            abs(f);
        }
        if let Some(soft) = &mut self.keys.soft {
            abs(&mut soft.dir);
            if let Some(f) = &mut soft.passphrase_file {
                abs(f);
            }
        }
        if let Some(p) = &mut self.keys.pkcs11 {
            p.resolve(base);
        }
        if let Some(vault) = &mut self.keys.vault {
            vault.resolve(base);
        }
        if !self.state.dir.as_os_str().is_empty() {
            abs(&mut self.state.dir);
        }
        if let Some(pg) = &mut self.state.postgres {
            if let Some(f) = &mut pg.password_file {
                abs(f);
            }
            if let Some(f) = &mut pg.ca_file {
                abs(f);
            }
        }
        abs(&mut self.audit.dir);
        abs(&mut self.audit.signing_key_dir);
        if let Some(f) = &mut self.audit.signing_key_passphrase_file {
            abs(f);
        }
        for w in &mut self.audit.witnesses {
            if let Some(f) = &mut w.ca_file {
                abs(f);
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.policy.trust_anchor()?;
        let s = &self.server;
        bounded(
            "server.max_message_bytes",
            s.max_message_bytes as u64,
            1024,
            64 << 20,
        )?;
        REQUEST_TIMEOUT.check(s.request_timeout, s.request_timeout_ms)?;
        HANDSHAKE_TIMEOUT.check(s.handshake_timeout, s.handshake_timeout_ms)?;
        bounded(
            "server.max_connections",
            s.max_connections as u64,
            1,
            100_000,
        )?;
        bounded(
            "server.max_concurrent_streams",
            u64::from(s.max_concurrent_streams),
            1,
            10_000,
        )?;
        if let Some(n) = s.max_in_flight {
            bounded("server.max_in_flight", n as u64, 1, MAX_IN_FLIGHT as u64)?;
        }
        check_range(
            "server.queue_timeout",
            s.queue_timeout,
            QUEUE_TIMEOUT_RANGE.0,
            QUEUE_TIMEOUT_RANGE.1,
        )?;
        if let Some(t) = s.queue_timeout {
            // A longer wait than the request's own deadline would never shed: the deadline
            // would end the request first, without telling the client to back off.
            if t >= s.request_timeout() {
                return Err(format!(
                    "server.queue_timeout = \"{}\" must be shorter than server.request_timeout \
                     (\"{}\"), or no request is ever shed",
                    humantime::format_duration(t),
                    humantime::format_duration(s.request_timeout()),
                ));
            }
        }
        check_duration("server.preface_timeout", s.preface_timeout, PREFACE_TIMEOUT)?;
        check_duration("server.idle_timeout", s.idle_timeout, IDLE_TIMEOUT)?;
        self.validate_connection_caps()?;
        bounded("audit.max_batch", self.audit.max_batch as u64, 1, 65_536)?;
        GROUP_COMMIT_WAIT.check(
            self.audit.group_commit_wait,
            self.audit.group_commit_wait_micros,
        )?;
        self.validate_audit()?;
        self.state.validate()?;

        let mut ids = std::collections::HashSet::new();
        let mut matchers = std::collections::HashSet::new();
        for ident in &self.identities {
            if crate::ids::ClientId::parse(&ident.id).is_err() {
                return Err(format!(
                    "identity: `id` must be 1 to {MAX_IDENTITY_ID_LEN} characters, without control characters"
                ));
            }
            if !ids.insert(ident.id.as_str()) {
                return Err(format!("identity `{}` is defined twice", ident.id));
            }
            let set: Vec<String> = [
                ident.subject_cn.as_ref().map(|v| format!("subject_cn={v}")),
                ident.san_uri.as_ref().map(|v| format!("san_uri={v}")),
                ident
                    .sha256
                    .as_ref()
                    .map(|v| format!("sha256={}", normalize_fingerprint(v).unwrap_or_default())),
            ]
            .into_iter()
            .flatten()
            .collect();
            if set.len() != 1 {
                return Err(format!(
                    "identity `{}`: set exactly one of `subject_cn`, `san_uri`, `sha256`",
                    ident.id
                ));
            }
            if let Some(fp) = &ident.sha256
                && normalize_fingerprint(fp).is_none()
            {
                return Err(format!(
                    "identity `{}`: `sha256` must be 32 bytes of hex (colons allowed)",
                    ident.id
                ));
            }
            if !matchers.insert(set[0].clone()) {
                return Err(format!(
                    "identity `{}`: another identity already matches {}",
                    ident.id, set[0]
                ));
            }
        }
        if self.keys.allow_weak_keys.len() > MAX_ALLOW_WEAK_KEYS {
            return Err(format!(
                "keys.allow_weak_keys: {} entries, at most {MAX_ALLOW_WEAK_KEYS}",
                self.keys.allow_weak_keys.len()
            ));
        }
        for (i, id) in self.keys.allow_weak_keys.iter().enumerate() {
            crate::ids::KeyId::parse(id).map_err(|e| format!("keys.allow_weak_keys[{i}]: {e}"))?;
            if self.keys.allow_weak_keys[..i].contains(id) {
                return Err(format!("keys.allow_weak_keys: `{id}` is listed twice"));
            }
        }
        match self.keys.backend {
            Backend::Soft => {
                let soft = self
                    .keys
                    .soft
                    .as_ref()
                    .ok_or("keys.backend = \"soft\" needs a [keys.soft] table")?;
                soft.passphrase_source().validate("keys.soft.passphrase")?;
            }
            Backend::Pkcs11 => {
                self.keys
                    .pkcs11
                    .as_ref()
                    .ok_or("keys.backend = \"pkcs11\" needs a [keys.pkcs11] table")?
                    .validate()?;
            }
            Backend::Vault => {
                self.keys
                    .vault
                    .as_ref()
                    .ok_or("keys.backend = \"vault\" needs a [keys.vault] table")?
                    .validate()?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// How much signing work runs at once (`server.max_in_flight`; by default 64, or twice
    /// the key backend's own concurrency, `keys.pkcs11.sessions` or `keys.vault.max_connections`,
    /// when that is larger) and how long a request waits for its turn
    /// (`server.queue_timeout`; by default 250 ms, or half of `server.request_timeout` when
    /// that is shorter).
    pub fn admission(&self) -> crate::service::Admission {
        let default = crate::service::Admission::DEFAULT;
        let backend = match self.keys.backend {
            Backend::Soft => 0,
            Backend::Pkcs11 => self.keys.pkcs11.as_ref().map_or(0, |p| p.sessions),
            Backend::Vault => self.keys.vault.as_ref().map_or(0, |v| v.max_connections),
        };
        let max_in_flight = self.server.max_in_flight.unwrap_or_else(|| {
            default
                .max_in_flight
                .max(backend.saturating_mul(2))
                .min(MAX_IN_FLIGHT)
        });
        let queue_timeout = self
            .server
            .queue_timeout
            .unwrap_or_else(|| default.queue_timeout.min(self.server.request_timeout() / 2));
        crate::service::Admission {
            max_in_flight,
            queue_timeout,
        }
    }

    /// One warning for each deprecated key the file uses (the integer `*_ms` and `*_micros`
    /// spellings of duration settings), to be logged at start.
    pub fn deprecations(&self) -> Vec<String> {
        let s = &self.server;
        let a = &self.audit;
        [
            REQUEST_TIMEOUT.deprecation(s.request_timeout_ms),
            HANDSHAKE_TIMEOUT.deprecation(s.handshake_timeout_ms),
            GROUP_COMMIT_WAIT.deprecation(a.group_commit_wait_micros),
            self.keys.pkcs11.as_ref().and_then(|p| p.deprecation()),
            self.keys.vault.as_ref().and_then(|v| v.deprecation()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// One identity and the unmapped certificates, each at its cap, must leave connections
    /// for everybody else (a health check included).
    fn validate_connection_caps(&self) -> Result<(), String> {
        let s = &self.server;
        if let Some(n) = s.max_connections_per_identity {
            bounded(
                "server.max_connections_per_identity",
                n as u64,
                1,
                s.max_connections as u64,
            )?;
        }
        bounded(
            "server.max_connections_unmapped",
            s.max_connections_unmapped as u64,
            0,
            s.max_connections as u64,
        )?;
        let per_identity = s.max_connections_per_identity();
        let held = per_identity.saturating_add(s.max_connections_unmapped);
        if held >= s.max_connections {
            return Err(format!(
                "server.max_connections_per_identity ({per_identity}{}) + \
                 server.max_connections_unmapped ({}) = {held} must be below \
                 server.max_connections ({}), so that one identity and the unmapped \
                 certificates together can never take every connection",
                if s.max_connections_per_identity.is_none() {
                    ", the default: a quarter of max_connections"
                } else {
                    ""
                },
                s.max_connections_unmapped,
                s.max_connections,
            ));
        }
        Ok(())
    }

    fn validate_audit(&self) -> Result<(), String> {
        let a = &self.audit;
        check_duration(
            "audit.auth_failure_window",
            a.auth_failure_window,
            AUTH_FAILURE_WINDOW,
        )?;
        bounded(
            "audit.checkpoint_every_records",
            a.checkpoint_every_records,
            1,
            1_000_000,
        )?;
        bounded(
            "audit.checkpoint_every_seconds",
            a.checkpoint_every_seconds,
            1,
            86_400,
        )?;
        bounded(
            "audit.max_segment_bytes",
            a.max_segment_bytes,
            16 << 10,
            64 << 30,
        )?;
        bounded(
            "audit.max_segment_age_seconds",
            a.max_segment_age_seconds,
            1,
            31_536_000,
        )?;
        if let Some(min) = a.min_free_bytes {
            bounded("audit.min_free_bytes", min, 0, 1 << 40)?;
        }
        signerd_auditor::note::validate_name(&a.origin)
            .map_err(|e| format!("audit.origin: {e}"))?;
        if let Some(max) = a.max_unattested_records {
            bounded(
                "audit.max_unattested_records",
                max,
                a.checkpoint_every_records,
                1 << 40,
            )?;
        }
        validate_witnesses(a)?;
        let source = a.signing_key_passphrase_source();
        match a.signing_key_backend {
            Backend::Soft => {
                if a.signing_key_version.is_some() {
                    return Err("audit.signing_key_version is for a vault audit key (transit keys have versions)".into());
                }
            }
            held @ (Backend::Pkcs11 | Backend::Vault) => {
                if self.keys.backend != held {
                    return Err(format!(
                        "audit.signing_key_backend = \"{held}\" needs keys.backend = \"{held}\": \
                         the audit key lives in the same token or Vault server as the client keys \
                         (one connection per process), apart from them"
                    ));
                }
                if source != SecretSource::default() {
                    return Err(format!(
                        "audit.signing_key_passphrase_* is for a soft audit key; the {held} audit key needs none"
                    ));
                }
                crate::keys::key_id(&a.signing_key_name)
                    .map_err(|e| format!("audit.signing_key_name: {e}"))?;
                if held != Backend::Vault && a.signing_key_version.is_some() {
                    return Err(
                        "audit.signing_key_version is for a vault audit key (transit keys have versions)".into(),
                    );
                }
                if a.signing_key_version == Some(0) {
                    return Err("audit.signing_key_version: versions start at 1".into());
                }
                if let Some(p) = &self.keys.pkcs11
                    && let Some(adopt) = p.adopt.iter().find(|ad| ad.id == a.signing_key_name)
                {
                    return Err(format!(
                        "keys.pkcs11.adopt `{}` takes the audit key's name audit.signing_key_name; \
                         the audit key is never a client key",
                        adopt.id
                    ));
                }
                if let Some(v) = &self.keys.vault
                    && (a.signing_key_name.starts_with(&v.key_prefix)
                        || v.wrapping_key.as_deref() == Some(a.signing_key_name.as_str()))
                {
                    return Err(format!(
                        "audit.signing_key_name `{}` must not start with keys.vault.key_prefix `{}` \
                         (or be the wrapping key): transit keys under the prefix are client keys",
                        a.signing_key_name, v.key_prefix
                    ));
                }
                return Ok(());
            }
        }
        if source != SecretSource::default() {
            source.validate("audit.signing_key_passphrase")?;
        } else if self.keys.soft.is_none() {
            return Err("audit: set `signing_key_passphrase_file`, `signing_key_passphrase_env` or `signing_key_passphrase_credential` (there is no [keys.soft] passphrase to reuse)".into());
        }
        let key_dir = &a.signing_key_dir;
        if key_dir.starts_with(&a.dir) || a.dir.starts_with(key_dir) {
            return Err(format!(
                "audit.signing_key_dir {} must be outside audit.dir {} (the log is shipped to auditors; its key is not)",
                key_dir.display(),
                a.dir.display()
            ));
        }
        if let Some(soft) = &self.keys.soft
            && (key_dir.starts_with(&soft.dir) || soft.dir.starts_with(key_dir))
        {
            return Err(format!(
                "audit.signing_key_dir {} must be separate from keys.soft.dir {}: the audit key is never a client signing key",
                key_dir.display(),
                soft.dir.display()
            ));
        }
        Ok(())
    }
}

impl AuditConfig {
    /// Where the audit signing key's own passphrase comes from (all unset: reuse `[keys.soft]`).
    pub fn signing_key_passphrase_source(&self) -> SecretSource {
        SecretSource {
            file: self.signing_key_passphrase_file.clone(),
            env: self.signing_key_passphrase_env.clone(),
            credential: self.signing_key_passphrase_credential.clone(),
        }
    }

    /// The longest hold of a group commit (`group_commit_wait`, default 1 ms).
    pub fn group_commit_wait(&self) -> Duration {
        GROUP_COMMIT_WAIT.value(self.group_commit_wait, self.group_commit_wait_micros)
    }
}

impl SoftKeysConfig {
    /// Where the keystore passphrase comes from.
    pub fn passphrase_source(&self) -> SecretSource {
        SecretSource {
            file: self.passphrase_file.clone(),
            env: self.passphrase_env.clone(),
            credential: self.passphrase_credential.clone(),
        }
    }

    /// Reads the keystore passphrase from its configured source.
    pub fn passphrase(&self) -> Result<SecretString, String> {
        self.passphrase_source().read("keys.soft.passphrase")
    }
}

/// `[[audit.witnesses]]` and the settings that go with them.
fn validate_witnesses(a: &AuditConfig) -> Result<(), String> {
    if a.witnesses.len() > 16 {
        return Err(format!(
            "audit.witnesses: {} witnesses; at most 16",
            a.witnesses.len()
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    for w in &a.witnesses {
        let valid = (1..=64).contains(&w.name.len())
            && !w.name.starts_with('.')
            && w.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(format!(
                "audit.witnesses: name {:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ - \
                 and not start with `.`",
                w.name
            ));
        }
        if !names.insert(w.name.as_str()) {
            return Err(format!("audit.witnesses: name {:?} is used twice", w.name));
        }
        let key = signerd_auditor::cosignature::CosignerKey::parse(&w.key)
            .map_err(|e| format!("audit.witnesses `{}`: key: {e}", w.name))?;
        if !keys.insert(key.to_string()) {
            return Err(format!(
                "audit.witnesses `{}`: the same witness key is configured twice",
                w.name
            ));
        }
        if w.url.starts_with("https://") != w.ca_file.is_some() {
            return Err(format!(
                "audit.witnesses `{}`: ca_file is required for an https:// url and only for one",
                w.name
            ));
        }
        let url = url::Url::parse(&w.url)
            .map_err(|e| format!("audit.witnesses `{}`: url {:?}: {e}", w.name, w.url))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(format!(
                "audit.witnesses `{}`: url {:?} must be http:// or https:// with a host, and no \
                 credentials, query or fragment",
                w.name, w.url
            ));
        }
    }
    if let Some(max) = a.witness_max_lag {
        if a.witnesses.is_empty() {
            return Err("audit.witness_max_lag is set but no [[audit.witnesses]] is".into());
        }
        bounded("audit.witness_max_lag", max, 0, 1 << 40)?;
    }
    if let Some(t) = a.witness_timeout
        && (t < Duration::from_millis(100) || t > Duration::from_secs(300))
    {
        return Err(format!(
            "audit.witness_timeout = {} is outside 100ms..=300s",
            humantime::format_duration(t)
        ));
    }
    Ok(())
}

fn bounded(name: &str, v: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} = {v} is outside {min}..={max}"))
    }
}

/// Lowercase hex without separators, if `s` is 32 bytes of hex.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:50051"

[tls]
cert = "pki/server.pem"
key = "pki/server-key.pem"
client_ca = "pki/ca.pem"

[[identity]]
id = "app"
roles = ["requester"]
subject_cn = "app"

[policy]
file = "policy.toml"

[keys]
backend = "soft"
[keys.soft]
dir = "keys"
passphrase_file = "keystore.pass"

[state]
dir = "state"

[audit]
dir = "audit"

[policy.trust]
threshold = 1
tighten_threshold = 1
administrators = { ops = "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" }
"#;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse("signerd.toml", src, Path::new("/etc/signerd"))
    }

    fn with_server(lines: &str) -> Result<Config, ConfigError> {
        parse(&GOOD.replace(
            "listen = \"127.0.0.1:50051\"\n",
            &format!("listen = \"127.0.0.1:50051\"\n{lines}\n"),
        ))
    }

    fn with_state(section: &str) -> Result<Config, ConfigError> {
        parse(&GOOD.replace("[state]\ndir = \"state\"\n", section))
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_postgres_state_is_checked_and_defaults_to_checked_tls() {
        let pg = "[state]\nbackend = \"postgres\"\n\n[state.postgres]\nhost = \"db\"\n\
                  user = \"signerd\"\ndbname = \"signerd\"\npassword_file = \"pg.pass\"\n";
        let c = with_state(&format!("{pg}ca_file = \"db-ca.pem\"\n")).unwrap();
        assert_eq!(c.state.backend, StateBackend::Postgres);
        let p = c.state.postgres.as_ref().unwrap();
        assert_eq!((p.port, p.pool_size, p.tls), (5432, 16, PgTls::VerifyFull));
        assert_eq!(p.timeout, Duration::from_secs(5));
        assert_eq!(
            p.password_file.as_deref(),
            Some(Path::new("/etc/signerd/pg.pass"))
        );
        assert_eq!(
            p.ca_file.as_deref(),
            Some(Path::new("/etc/signerd/db-ca.pem"))
        );
        let refused = |section: &str| with_state(section).unwrap_err().to_string();
        assert!(
            refused(pg).contains("needs `ca_file`"),
            "verify-full without authorities"
        );
        assert!(
            refused(&format!("{pg}tls = \"disable\"\nca_file = \"x.pem\"\n"))
                .contains("remove one")
        );
        assert!(
            refused(&pg.replace("password_file = \"pg.pass\"\n", "tls = \"disable\"\n"))
                .contains("set exactly one of `password_file`")
        );
        assert!(refused(&format!("{pg}tls = \"disable\"\npool_size = 1\n")).contains("pool_size"));
        assert!(
            refused(&format!("{pg}tls = \"disable\"\ntimeout = \"10m\"\n")).contains("timeout")
        );
        assert!(refused(&format!("{pg}tls = \"prefer\"\n")).contains("unknown variant"));
        assert!(refused("[state]\nbackend = \"postgres\"\n").contains("needs a [state.postgres]"));
        assert!(
            refused("[state]\ndir = \"state\"\n\n[state.postgres]\nhost = \"db\"\nuser = \"u\"\ndbname = \"d\"\npassword_env = \"P\"\ntls = \"disable\"\n")
                .contains("backend is \"sled\"")
        );
        assert!(refused("[state]\ncache_bytes = 1048576\n").contains("state.dir: missing"));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn connection_settings_default_safely() {
        let c = parse(GOOD).unwrap();
        let s = &c.server;
        assert_eq!(s.max_connections, 1024);
        assert_eq!(s.max_connections_per_identity(), 256);
        assert_eq!(s.max_connections_unmapped, 4);
        assert_eq!(s.preface_timeout(), Duration::from_secs(5));
        assert_eq!(s.idle_timeout(), Duration::from_secs(300));
        assert_eq!(c.audit.auth_failure_window(), Duration::from_secs(60));
        let c = with_server(
            "max_connections = 100\nmax_connections_per_identity = 10\n\
             max_connections_unmapped = 0\npreface_timeout = \"250ms\"\nidle_timeout = \"1m\"",
        )
        .unwrap();
        assert_eq!(c.server.max_connections_per_identity(), 10);
        assert_eq!(c.server.max_connections_unmapped, 0);
        assert_eq!(c.server.preface_timeout(), Duration::from_millis(250));
        assert_eq!(c.server.idle_timeout(), Duration::from_secs(60));
        // A small max_connections gets a per-identity default of at least one.
        let c = with_server("max_connections = 3\nmax_connections_unmapped = 1").unwrap();
        assert_eq!(c.server.max_connections_per_identity(), 1);
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn connection_caps_must_leave_room_for_everybody_else() {
        let e = with_server("max_connections = 100\nmax_connections_per_identity = 96")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "signerd.toml: server.max_connections_per_identity (96) + \
             server.max_connections_unmapped (4) = 100 must be below server.max_connections \
             (100), so that one identity and the unmapped certificates together can never take \
             every connection"
        );
        let e = with_server("max_connections = 4").unwrap_err().to_string();
        assert!(
            e.contains("(1, the default: a quarter of max_connections)"),
            "{e}"
        );
        let e = with_server("max_connections_per_identity = 0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.max_connections_per_identity = 0 is outside 1..=1024"),
            "{e}"
        );
        let e = with_server("max_connections_unmapped = 2000")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.max_connections_unmapped = 2000 is outside 0..=1024"),
            "{e}"
        );
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn connection_timeouts_are_bounded() {
        for (line, message) in [
            (
                "preface_timeout = \"50ms\"",
                "server.preface_timeout = \"50ms\" is outside \"100ms\"..=\"1m\"",
            ),
            (
                "idle_timeout = \"500ms\"",
                "server.idle_timeout = \"500ms\" is outside \"1s\"..=\"1day\"",
            ),
        ] {
            let e = with_server(line).unwrap_err().to_string();
            assert!(e.contains(message), "{e}");
        }
        let e = parse(&GOOD.replace(
            "dir = \"audit\"\n",
            "dir = \"audit\"\nauth_failure_window = \"2h\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("audit.auth_failure_window = \"2h\" is outside \"1s\"..=\"1h\""),
            "{e}"
        );
        // A misspelt key is an error with its position.
        let e = with_server("idle_timout = \"1s\"").unwrap_err().to_string();
        assert!(
            e.starts_with("signerd.toml:4:1: unknown field `idle_timout`"),
            "{e}"
        );
    }

    #[test]
    fn good_config_resolves_paths_and_defaults() {
        let c = match parse(GOOD) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.tls.cert, PathBuf::from("/etc/signerd/pki/server.pem"));
        assert_eq!(c.audit.dir, PathBuf::from("/etc/signerd/audit"));
        assert_eq!(c.server.max_message_bytes, 1024 * 1024);
        assert_eq!(c.identities[0].id, "app");
    }

    #[test]
    fn state_settings_have_defaults_and_ranges() {
        let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.state.cache_bytes, 16 << 20);
        assert_eq!(
            c.state.idempotency_retention(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(c.state.prune_interval(), Duration::from_secs(10));
        let with = |lines: &str| parse(&GOOD.replace("[state]\n", &format!("[state]\n{lines}\n")));
        let c = with(
            "cache_bytes = 1048576\nidempotency_retention = \"7days\"\nprune_interval = \"250ms\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.state.cache_bytes, 1 << 20);
        assert_eq!(
            c.state.idempotency_retention(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(c.state.prune_interval(), Duration::from_millis(250));
        for (lines, message) in [
            (
                "idempotency_retention = \"0s\"",
                "state.idempotency_retention = \"0s\" is outside \"1s\"..=\"100years\"",
            ),
            (
                "prune_interval = \"10ms\"",
                "state.prune_interval = \"10ms\" is outside \"100ms\"..=\"1h\"",
            ),
            (
                "cache_bytes = 1024",
                "state.cache_bytes = 1024 is outside 1048576..=1099511627776",
            ),
        ] {
            let e = match with(lines) {
                Ok(_) => panic!("{lines}: accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(message), "{lines}: {e}");
        }
    }

    #[test]
    fn the_policy_trust_anchor_is_required_and_checked() {
        let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.policy.signatures_path(),
            PathBuf::from("/etc/signerd/policy.toml.sig")
        );
        let g = c.policy.trust_anchor().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((g.threshold(), g.tighten_threshold()), (1, 1));
        let c = parse(&GOOD.replace(
            "file = \"policy.toml\"\n",
            "file = \"policy.toml\"\nsignatures = \"sigs/p.sig\"\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.policy.signatures_path(),
            PathBuf::from("/etc/signerd/sigs/p.sig")
        );
        let cut = GOOD.find("[policy.trust]").unwrap_or(GOOD.len());
        let e = parse(&GOOD[..cut])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("[policy.trust] is missing"), "{e}");
        let e = parse(&GOOD.replace("threshold = 1\ntighten", "threshold = 2\ntighten"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("policy.trust: `threshold` is 2"), "{e}");
        let e = parse(&GOOD.replace("ed25519:d75a", "ed25519:zz5a"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("policy.trust.administrators.ops:"), "{e}");
    }

    #[test]
    fn unknown_field_is_located() {
        let src = GOOD.replace("[audit]\n", "[audit]\nfsink = true\n");
        let e = parse(&src).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("signerd.toml:28:1: unknown field `fsink`"),
            "{e}"
        );
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let cases = [
            (
                GOOD.replace(
                    "subject_cn = \"app\"",
                    "subject_cn = \"app\"\nsan_uri = \"spiffe://x\"",
                ),
                "exactly one of",
            ),
            (
                GOOD.replace("backend = \"soft\"", "backend = \"tpm\""),
                "unknown variant `tpm`, expected one of `soft`, `pkcs11`, `vault`",
            ),
            (
                GOOD.replace("passphrase_file = \"keystore.pass\"", ""),
                "exactly one of `passphrase_file`, `passphrase_env` and `passphrase_credential`",
            ),
            (
                GOOD.replace("[server]\n", "[server]\nmax_message_bytes = 10\n"),
                "max_message_bytes = 10 is outside",
            ),
            (
                GOOD.replace("subject_cn = \"app\"", "sha256 = \"abcd\""),
                "32 bytes of hex",
            ),
            (
                format!("{GOOD}\n[[identity]]\nid = \"app\"\nsubject_cn = \"x\"\n"),
                "defined twice",
            ),
            (
                format!("{GOOD}\n[[identity]]\nid = \"app2\"\nsubject_cn = \"app\"\n"),
                "already matches",
            ),
        ];
        for (src, want) in cases {
            let e = parse(&src).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn audit_defaults_and_bounds() {
        let c = match parse(GOOD) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let a = &c.audit;
        assert_eq!(a.signing_key_dir, PathBuf::from("/etc/signerd/audit-key"));
        assert_eq!(a.origin, "signerd/audit");
        assert_eq!(a.checkpoint_every_records, 1000);
        assert_eq!(a.checkpoint_every_seconds, 60);
        assert_eq!(a.max_segment_bytes, 64 << 20);
        assert_eq!(a.max_segment_age_seconds, 86_400);
        assert_eq!(a.min_free_bytes, None);
        assert!(a.signing_key_passphrase_file.is_none());

        let custom = GOOD.replace(
            "[audit]\ndir = \"audit\"\n",
            "[audit]\ndir = \"audit\"\nsigning_key_dir = \"/secure/audit-key\"\n\
             signing_key_passphrase_file = \"audit.pass\"\norigin = \"audit.example.com/prod\"\n\
             checkpoint_every_records = 5\ncheckpoint_every_seconds = 2\n\
             max_segment_bytes = 16384\nmax_segment_age_seconds = 1\nmin_free_bytes = 0\n",
        );
        let c = match parse(&custom) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.audit.signing_key_dir, PathBuf::from("/secure/audit-key"));
        assert_eq!(
            c.audit.signing_key_passphrase_file,
            Some(PathBuf::from("/etc/signerd/audit.pass"))
        );
        assert_eq!(c.audit.origin, "audit.example.com/prod");
        assert_eq!(c.audit.checkpoint_every_records, 5);
        assert_eq!(c.audit.max_segment_bytes, 16384);
        assert_eq!(c.audit.min_free_bytes, Some(0));

        let with = |extra: &str| GOOD.replace("[audit]\n", &format!("[audit]\n{extra}\n"));
        let cases = [
            (
                with("checkpoint_every_records = 0"),
                "audit.checkpoint_every_records = 0 is outside",
            ),
            (
                with("checkpoint_every_seconds = 0"),
                "audit.checkpoint_every_seconds = 0 is outside",
            ),
            (
                with("max_segment_bytes = 1000"),
                "audit.max_segment_bytes = 1000 is outside",
            ),
            (
                with("max_segment_age_seconds = 0"),
                "audit.max_segment_age_seconds = 0 is outside",
            ),
            (
                with("min_free_bytes = 2000000000000"),
                "audit.min_free_bytes = 2000000000000 is outside",
            ),
            (with("origin = \"has space\""), "audit.origin:"),
            (with("origin = \"a+b\""), "audit.origin:"),
            (
                with("signing_key_passphrase_file = \"a\"\nsigning_key_passphrase_env = \"B\""),
                "set exactly one of `signing_key_passphrase_file`",
            ),
            (
                with("signing_key_dir = \"keys\""),
                "separate from keys.soft.dir",
            ),
            (with("signing_key_dir = \"audit/key\""), "outside audit.dir"),
            (with("signing_key_dir = \".\""), "outside audit.dir"),
            (
                with("group_commit_wait_micros = 100001"),
                "audit.group_commit_wait_micros = 100001 is outside 0..=100000",
            ),
            (
                with("max_unattested_records = 999"),
                "audit.max_unattested_records = 999 is outside 1000..=",
            ),
            (
                with("signing_key_backend = \"hsm\""),
                "unknown variant `hsm`, expected one of `soft`, `pkcs11`, `vault`",
            ),
            (
                with("signing_key_backend = \"vault\""),
                "needs keys.backend = \"vault\"",
            ),
            (
                with("signing_key_version = 2"),
                "signing_key_version is for a vault audit key",
            ),
        ];
        for (src, want) in cases {
            let e = parse(&src).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn audit_key_held_by_vault_is_kept_apart_from_client_keys() {
        let vault = GOOD.replace(
            "[keys]\nbackend = \"soft\"\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n",
            "[keys]\nbackend = \"vault\"\n\n[keys.vault]\naddress = \"https://vault.internal:8200\"\nca_file = \"vault-ca.pem\"\n\
             token_file = \"vault.token\"\nwrapping_key = \"signerd-wrap\"\nwrapped_dir = \"wrapped\"\n",
        );
        assert_ne!(vault, GOOD, "the test configuration changed shape");
        let with = |extra: &str| {
            vault.replace(
                "[audit]\n",
                &format!("[audit]\nsigning_key_backend = \"vault\"\n{extra}\n"),
            )
        };
        let c = match parse(&with("")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.audit.signing_key_backend, Backend::Vault);
        assert_eq!(c.audit.signing_key_name, "audit-checkpoint");
        assert_eq!(c.audit.signing_key_version, None);
        let c = match parse(&with(
            "signing_key_name = \"ops-audit\"\nsigning_key_version = 3",
        )) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.audit.signing_key_version, Some(3));
        let cases = [
            (
                with("signing_key_name = \"signerd-audit\""),
                "must not start with keys.vault.key_prefix `signerd-`",
            ),
            (
                with("signing_key_name = \"signerd-wrap\""),
                "must not start with keys.vault.key_prefix",
            ),
            (
                with("signing_key_name = \"a/b\""),
                "audit.signing_key_name:",
            ),
            (
                with("signing_key_passphrase_file = \"audit.pass\""),
                "is for a soft audit key",
            ),
            (with("signing_key_version = 0"), "versions start at 1"),
            (
                vault.replace("[audit]\n", "[audit]\nsigning_key_backend = \"pkcs11\"\n"),
                "needs keys.backend = \"pkcs11\"",
            ),
        ];
        for (src, want) in cases {
            let e = parse(&src).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn admission_defaults_follow_the_backend_and_bounds_are_checked() {
        let server = |lines: &str| GOOD.replace("[server]\n", &format!("[server]\n{lines}\n"));
        let admission = |src: &str| match parse(src) {
            Ok(c) => c.admission(),
            Err(e) => panic!("{e}"),
        };
        let refused = |src: &str| match parse(src) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => e.to_string(),
        };
        let a = admission(GOOD);
        assert_eq!(a.max_in_flight, 64);
        assert_eq!(a.queue_timeout, Duration::from_millis(250));
        let a = admission(&server("max_in_flight = 8\nqueue_timeout = \"40ms\""));
        assert_eq!(a.max_in_flight, 8);
        assert_eq!(a.queue_timeout, Duration::from_millis(40));
        // A short request deadline shortens the default wait, so requests are still shed.
        let a = admission(&server("request_timeout = \"200ms\""));
        assert_eq!(a.queue_timeout, Duration::from_millis(100));
        // Twice the backend's own concurrency when that is above the default.
        let vault = GOOD.replace(
            "backend = \"soft\"\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n",
            "backend = \"vault\"\n[keys.vault]\naddress = \"https://vault:8200\"\n\
             ca_file = \"vault-ca.pem\"\ntoken_file = \"vault.token\"\nmax_connections = 100\n",
        )
        .replace(
            "[audit]\ndir = \"audit\"\n",
            "[audit]\ndir = \"audit\"\nsigning_key_passphrase_file = \"audit.pass\"\n",
        );
        assert_ne!(vault, GOOD);
        assert_eq!(admission(&vault).max_in_flight, 200);

        assert_eq!(
            refused(&server("max_in_flight = 0")),
            "signerd.toml: server.max_in_flight = 0 is outside 1..=100000"
        );
        assert_eq!(
            refused(&server("queue_timeout = \"0s\"")),
            "signerd.toml: server.queue_timeout = \"0s\" is outside \"1ms\"..=\"1m\""
        );
        assert_eq!(
            refused(&server("queue_timeout = \"10s\"")),
            "signerd.toml: server.queue_timeout = \"10s\" must be shorter than \
             server.request_timeout (\"10s\"), or no request is ever shed"
        );
        assert!(
            refused(&server("queue_timeout = 250")).starts_with("signerd.toml:3:17: "),
            "{}",
            refused(&server("queue_timeout = 250"))
        );
    }

    #[test]
    fn durations_take_units_and_read_deprecated_integer_keys() {
        let ok = |src: &str| match parse(src) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let c = ok(GOOD);
        assert_eq!(c.server.request_timeout(), Duration::from_secs(10));
        assert_eq!(c.server.handshake_timeout(), Duration::from_secs(5));
        assert_eq!(c.audit.group_commit_wait(), Duration::from_millis(1));
        assert!(c.deprecations().is_empty());

        let with = |server: &str, audit: &str| {
            GOOD.replace("[server]\n", &format!("[server]\n{server}\n"))
                .replace("[audit]\n", &format!("[audit]\n{audit}\n"))
        };
        let c = ok(&with(
            "request_timeout = \"1m 30s\"\nhandshake_timeout = \"750ms\"",
            "group_commit_wait = \"0s\"",
        ));
        assert_eq!(c.server.request_timeout(), Duration::from_secs(90));
        assert_eq!(c.server.handshake_timeout(), Duration::from_millis(750));
        assert_eq!(c.audit.group_commit_wait(), Duration::ZERO);
        assert!(c.deprecations().is_empty());

        // The spellings of earlier releases still work, with a warning for each.
        let c = ok(&with(
            "request_timeout_ms = 90000\nhandshake_timeout_ms = 750",
            "group_commit_wait_micros = 2500",
        ));
        assert_eq!(c.server.request_timeout(), Duration::from_secs(90));
        assert_eq!(c.server.handshake_timeout(), Duration::from_millis(750));
        assert_eq!(c.audit.group_commit_wait(), Duration::from_micros(2500));
        assert_eq!(
            c.deprecations(),
            [
                "server.request_timeout_ms is deprecated: write request_timeout = \"1m 30s\"",
                "server.handshake_timeout_ms is deprecated: write handshake_timeout = \"750ms\"",
                "audit.group_commit_wait_micros is deprecated: write group_commit_wait = \"2ms 500us\"",
            ]
        );

        let cases = [
            (
                with("request_timeout = \"10s\"\nrequest_timeout_ms = 10000", ""),
                "signerd.toml: server: both `request_timeout` and `request_timeout_ms` are set",
            ),
            (
                with(
                    "",
                    "group_commit_wait = \"1ms\"\ngroup_commit_wait_micros = 1000",
                ),
                "audit: both `group_commit_wait` and `group_commit_wait_micros` are set",
            ),
            (
                with("request_timeout = \"11m\"", ""),
                "server.request_timeout = \"11m\" is outside \"100ms\"..=\"10m\"",
            ),
            (
                with("handshake_timeout = \"99ms\"", ""),
                "server.handshake_timeout = \"99ms\" is outside \"100ms\"..=\"1m\"",
            ),
            (
                with("request_timeout_ms = 99", ""),
                "server.request_timeout_ms = 99 is outside 100..=600000",
            ),
            (
                with("", "group_commit_wait = \"101ms\""),
                "audit.group_commit_wait = \"101ms\" is outside \"0s\"..=\"100ms\"",
            ),
            (
                with("request_timeout = 5000", ""),
                "signerd.toml:3:19: invalid type: integer `5000`, expected a duration",
            ),
            (
                with("request_timeout = \"5 parsecs\"", ""),
                "signerd.toml:3:19: invalid value: string \"5 parsecs\", expected a duration",
            ),
        ];
        for (src, want) in cases {
            let e = parse(&src).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn pkcs11_call_timeout_takes_a_unit_and_its_deprecated_key() {
        let with = |extra: &str| {
            GOOD.replace(
                "[keys]\nbackend = \"soft\"\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n",
                &format!(
                    "[keys]\nbackend = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
                     token_label = \"signerd\"\npin_env = \"PIN\"\n{extra}\n"
                ),
            )
            .replace("[audit]\n", "[audit]\nsigning_key_passphrase_env = \"AUDIT\"\n")
        };
        let ok = |src: &str| match parse(src) {
            Ok(c) => c
                .keys
                .pkcs11
                .as_ref()
                .map(|p| (p.call_timeout(), c.deprecations())),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ok(&with("")), Some((Duration::from_secs(5), vec![])));
        assert_eq!(
            ok(&with("call_timeout = \"15s\"")),
            Some((Duration::from_secs(15), vec![]))
        );
        assert_eq!(
            ok(&with("call_timeout_ms = 15000")),
            Some((
                Duration::from_secs(15),
                vec![
                    "keys.pkcs11.call_timeout_ms is deprecated: write call_timeout = \"15s\""
                        .to_owned()
                ]
            ))
        );
        for (extra, want) in [
            (
                "call_timeout = \"15s\"\ncall_timeout_ms = 15000",
                "keys.pkcs11: both `call_timeout` and `call_timeout_ms` are set",
            ),
            (
                "call_timeout = \"61s\"",
                "keys.pkcs11.call_timeout = \"1m 1s\" is outside \"100ms\"..=\"1m\"",
            ),
            (
                "call_timeout_ms = 60001",
                "keys.pkcs11.call_timeout_ms = 60001 is outside 100..=60000",
            ),
        ] {
            let e = parse(&with(extra))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    /// `keys.allow_weak_keys` holds valid key ids, each once; it is empty by default.
    #[test]
    fn weak_keys_are_allowed_by_valid_id_only() {
        let with = |list: &str| {
            GOOD.replace(
                "[keys]\nbackend = \"soft\"\n",
                &format!("[keys]\nbackend = \"soft\"\nallow_weak_keys = {list}\n"),
            )
        };
        let listed = |src: &str| match parse(src) {
            Ok(c) => c.keys.allow_weak_keys,
            Err(e) => panic!("{e}"),
        };
        assert!(listed(GOOD).is_empty());
        assert_eq!(listed(&with(r#"["legacy", "hot-2"]"#)), ["legacy", "hot-2"]);
        for (list, want) in [
            (r#"["a b"]"#, "keys.allow_weak_keys[0]: invalid key id"),
            (r#"["x", "x"]"#, "keys.allow_weak_keys: `x` is listed twice"),
        ] {
            let e = parse(&with(list))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn witnesses_are_checked() {
        let with = |extra: &str| GOOD.replace("[audit]\n", &format!("[audit]\n{extra}\n"));
        let public = ed25519_dalek::SigningKey::from_bytes(&[1; 32])
            .verifying_key()
            .to_bytes();
        let key = signerd_auditor::cosignature::CosignerKey::new("witness.example/w1", &public)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        let entry = |name: &str, url: &str, key: &str| {
            format!("{{ name = \"{name}\", url = \"{url}\", key = \"{key}\" }}")
        };
        let good = with(&format!(
            "witnesses = [{}]\nwitness_max_lag = 100\nwitness_timeout = \"2s\"",
            entry("w1", "http://127.0.0.1:7380", &key)
        ));
        let c = parse(&good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.audit.witnesses.len(), 1);
        assert_eq!(c.audit.witness_max_lag, Some(100));
        assert_eq!(c.audit.witness_timeout(), Duration::from_secs(2));
        assert_eq!(
            parse(GOOD)
                .unwrap_or_else(|e| panic!("{e}"))
                .audit
                .witness_timeout(),
            DEFAULT_WITNESS_TIMEOUT
        );
        let one = |name: &str, url: &str, key: &str| {
            with(&format!("witnesses = [{}]", entry(name, url, key)))
        };
        let as_log_key = signerd_auditor::note::VerifierKey::new("witness.example/w1", &public)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        for (text, want) in [
            (one("a/b", "http://h", &key), "name \"a/b\""),
            (one(".w", "http://h", &key), "name \".w\""),
            (one("w", "ftp://h", &key), "must be http:// or https://"),
            (one("w", "http://u:p@h", &key), "no credentials"),
            (one("w", "https://h", &key), "ca_file is required"),
            (one("w", "http://h", &as_log_key), "0x04"),
            (
                with(&format!(
                    "witnesses = [{}, {}]",
                    entry("w", "http://h", &key),
                    entry("w", "http://g", &key)
                )),
                "used twice",
            ),
            (
                with(&format!(
                    "witnesses = [{}, {}]",
                    entry("w", "http://h", &key),
                    entry("v", "http://g", &key)
                )),
                "configured twice",
            ),
            (with("witness_max_lag = 5"), "no [[audit.witnesses]]"),
            (
                with(&format!(
                    "witnesses = [{}]\nwitness_timeout = \"1ms\"",
                    entry("w", "http://h", &key)
                )),
                "outside 100ms..=300s",
            ),
        ] {
            match parse(&text) {
                Ok(_) => panic!("accepted: {want}"),
                Err(e) => assert!(e.to_string().contains(want), "{want}: {e}"),
            }
        }
    }

    #[test]
    fn fingerprints_normalize() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&fp), Some("ab".repeat(32)));
        assert_eq!(normalize_fingerprint("zz"), None);
    }
}
