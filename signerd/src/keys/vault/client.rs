//! The connection to Vault or OpenBao: one pooled HTTP client, per-call deadlines and a bound
//! on calls in flight, authentication (token or AppRole) with renewal, and the mapping of
//! every failure to [`KeyError`].
//!
//! The token lives in a [`SecretString`]; the copy the `vaultrs` client needs for its request
//! header is zeroized when that client is replaced or dropped. Nothing here may log, format
//! or return the token or the AppRole secret id; errors name the operation and Vault's status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustify::endpoint::Endpoint;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{RwLock, Semaphore};
use vaultrs::api::auth::approle::requests::LoginWithApproleRequest;
use vaultrs::api::token::requests::{LookupTokenSelfRequest, RenewTokenSelfRequest};
use vaultrs::api::{AuthInfo, EndpointMiddleware};
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;
use zeroize::Zeroize;

use super::config::{AuthMethod, VaultKeysConfig};
use super::http::{BoundedHttp, build_err};
use crate::keys::KeyError;

/// Renew the token when less than this fraction of its last TTL remains.
const RENEW_FRACTION: f64 = 0.5;

/// A `vaultrs` client carrying one token, and the bounded transport its calls run on; the
/// token's plain copies are zeroized on drop.
pub(crate) struct TokenClient(VaultClient, BoundedHttp);

impl TokenClient {
    /// Runs `endpoint` and returns the `data` of Vault's answer.
    pub(crate) async fn exec<E: Endpoint>(&self, endpoint: E) -> Result<E::Response, ClientError> {
        super::http::exec(&self.1, &self.0.middle, endpoint).await
    }

    /// Runs `endpoint`, whose answer carries nothing signerd reads.
    pub(crate) async fn exec_empty<E: Endpoint>(&self, endpoint: E) -> Result<(), ClientError> {
        super::http::exec_empty(&self.1, &self.0.middle, endpoint).await
    }

    /// Runs an authentication `endpoint` and returns the `auth` of Vault's answer.
    pub(crate) async fn auth<E: Endpoint<Response = ()>>(
        &self,
        endpoint: E,
    ) -> Result<AuthInfo, ClientError> {
        super::http::auth(&self.1, &self.0.middle, endpoint).await
    }
}

impl Drop for TokenClient {
    fn drop(&mut self) {
        self.0.middle.token.zeroize();
        self.0.settings.token.zeroize();
    }
}

/// Token state: the secret, the client built from it, and when to renew it.
struct TokenState {
    token: SecretString,
    client: Arc<TokenClient>,
    /// `None`: the token does not expire (or cannot be renewed); no renewal scheduled.
    renew_at: Option<Instant>,
    /// The TTL the token had when it was obtained, in seconds.
    ttl: u64,
    /// The token has reached its maximum TTL: at `renew_at`, log in again instead of renewing.
    capped: bool,
}

/// A shared connection to one Vault server.
pub(crate) struct Connection {
    address: String,
    http: reqwest::Client,
    auth: AuthMethod,
    timeout: Duration,
    permits: Semaphore,
    state: RwLock<TokenState>,
    /// `None` while Vault answers the health probe and accepts the token; otherwise the
    /// probe's failure, with which signing is refused at once until a probe succeeds. Only
    /// the probe sets it: a call that fails for one key (an audit key below its minimum
    /// version) must not stop the others.
    down: std::sync::Mutex<Option<KeyError>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Builds the HTTP client: rustls with the ring provider, the configured CA only, pooled
/// connections, and the per-call deadline.
fn http_client(cfg: &VaultKeysConfig) -> Result<reqwest::Client, KeyError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_file {
        let certs = crate::tls::load_certs(ca)
            .map_err(|e| KeyError::Keystore(format!("keys.vault.ca_file: {e}")))?;
        for c in certs {
            roots.add(c).map_err(|e| {
                KeyError::Keystore(format!("keys.vault.ca_file {}: {e}", ca.display()))
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| KeyError::Keystore(format!("keys.vault: TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(cfg.timeout())
        .connect_timeout(cfg.timeout())
        .pool_max_idle_per_host(cfg.max_connections)
        // Never follow a redirect with the token to somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| KeyError::Keystore(format!("keys.vault: HTTP client set-up: {e}")))
}

/// Longest text from Vault that reaches a log line or an error message, in characters.
pub(crate) const MAX_VAULT_TEXT: usize = 300;

/// Text that came from Vault (or from the HTTP stack talking to it), made safe for one log line:
/// control characters (newlines included) are escaped as `\n`, `\u{1b}`, ..., and the result
/// is cut to [`MAX_VAULT_TEXT`] characters, ending with `…` when cut.
pub(crate) fn vault_text(s: &str) -> String {
    let mut out = String::new();
    let mut len = 0;
    for c in s.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        let n = piece.chars().count();
        if len + n > MAX_VAULT_TEXT {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        len += n;
    }
    out
}

/// Maps a `vaultrs` error to a [`KeyError`]; `what` names the operation. Vault's text is made
/// single-line and bounded ([`vault_text`]) before it enters the error.
pub(crate) fn classify(what: &str, e: &ClientError) -> KeyError {
    match e {
        ClientError::APIError { code, errors } => {
            // Vault's error strings describe the request, never the token.
            let detail = vault_text(&errors.join("; "));
            match code {
                401 | 403 => KeyError::CredentialsRefused(format!(
                    "vault {what}: Vault refused the token or the operation (HTTP {code}): {detail}"
                )),
                503 if detail.contains("sealed") => {
                    KeyError::Unavailable(format!("vault {what}: Vault is sealed"))
                }
                500.. => KeyError::Unavailable(format!("vault {what}: HTTP {code}: {detail}")),
                404 => KeyError::Keystore(format!("vault {what}: not found (HTTP 404): {detail}")),
                _ => KeyError::Keystore(format!("vault {what}: HTTP {code}: {detail}")),
            }
        }
        ClientError::RestClientError { source } => {
            let mut msg = source.to_string();
            let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(source);
            while let Some(c) = cause {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cause = c.source();
            }
            // A 4xx/5xx that rustify reports as a server error carries the status code.
            if let rustify::errors::ClientError::ServerResponseError { code, content } = source {
                let content = content.as_deref().unwrap_or("");
                if matches!(code, 401 | 403) {
                    return KeyError::CredentialsRefused(format!(
                        "vault {what}: Vault refused the token or the operation (HTTP {code})"
                    ));
                }
                if content.contains("sealed") {
                    return KeyError::Unavailable(format!("vault {what}: Vault is sealed"));
                }
            }
            KeyError::Unavailable(format!("vault {what}: {}", vault_text(&msg)))
        }
        other => KeyError::Unavailable(format!("vault {what}: {}", vault_text(&other.to_string()))),
    }
}

impl Connection {
    /// Builds the client and logs in (AppRole) or checks the token, within the call deadline.
    pub(crate) async fn open(cfg: &VaultKeysConfig) -> Result<Arc<Connection>, KeyError> {
        let http = http_client(cfg)?;
        let auth = cfg.auth();
        let address = cfg.address.trim_end_matches('/').to_owned();
        let placeholder = SecretString::from(String::new());
        let client = Arc::new(build_client(&address, &http, cfg.timeout(), &placeholder)?);
        let conn = Arc::new(Connection {
            address,
            http,
            auth,
            timeout: cfg.timeout(),
            permits: Semaphore::new(cfg.max_connections),
            state: RwLock::new(TokenState {
                token: placeholder,
                client,
                renew_at: None,
                ttl: 0,
                capped: false,
            }),
            down: std::sync::Mutex::new(None),
        });
        conn.authenticate().await?;
        Ok(conn)
    }

    /// Whether the last health probe reached Vault and was allowed.
    pub(crate) fn healthy(&self) -> bool {
        self.failure().is_none()
    }

    /// Why Vault cannot sign, when the last health probe failed.
    pub(crate) fn failure(&self) -> Option<KeyError> {
        self.down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records health: up, or down for this reason.
    fn set_down(&self, why: Option<KeyError>) {
        *self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Runs one authenticated call with a permit and the deadline.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, KeyError>
    where
        F: FnOnce(Arc<TokenClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        tokio::time::timeout(self.timeout, async {
            let _permit = self.permits.acquire().await.map_err(|_| {
                KeyError::Unavailable(format!("vault {what}: connection is closing"))
            })?;
            let client = self.state.read().await.client.clone();
            f(client).await.map_err(|e| classify(what, &e))
        })
        .await
        .unwrap_or_else(|_| {
            Err(KeyError::Unavailable(format!(
                "vault {what}: no answer within {} ms",
                self.timeout.as_millis()
            )))
        })
    }

    /// Gets a token (reads it, or logs in with AppRole), checks it with a self-lookup and
    /// schedules its renewal.
    async fn authenticate(&self) -> Result<(), KeyError> {
        let (token, lease) = match &self.auth {
            AuthMethod::Token(source) => {
                let token = source
                    .read("keys.vault.token")
                    .map_err(KeyError::Keystore)?;
                if self.state.read().await.token.expose_secret() == token.expose_secret() {
                    tracing::info!("vault token source unchanged; checking the same token again");
                }
                (token, None)
            }
            AuthMethod::AppRole {
                role_id,
                mount,
                secret_id,
            } => {
                let secret = secret_id
                    .read("keys.vault.approle.secret_id")
                    .map_err(KeyError::Keystore)?;
                let anon = build_client(
                    &self.address,
                    &self.http,
                    self.timeout,
                    &SecretString::from(String::new()),
                )?;
                let mut info = tokio::time::timeout(self.timeout, async {
                    let endpoint = LoginWithApproleRequest::builder()
                        .mount(mount)
                        .role_id(role_id)
                        .secret_id(secret.expose_secret())
                        .build()
                        .map_err(build_err)?;
                    anon.auth(endpoint).await
                })
                .await
                .map_err(|_| KeyError::Unavailable("vault AppRole login: timed out".into()))?
                .map_err(|e| classify("AppRole login", &e))?;
                if info.client_token.is_empty() || info.client_token.chars().any(char::is_control) {
                    return Err(KeyError::Unavailable(
                        "vault AppRole login: the token in the answer is empty or has a control character"
                            .into(),
                    ));
                }
                let token = SecretString::from(std::mem::take(&mut info.client_token));
                (token, Some(info.lease_duration))
            }
        };
        let client = Arc::new(build_client(
            &self.address,
            &self.http,
            self.timeout,
            &token,
        )?);
        let ttl = match lease {
            Some(l) => l,
            None => {
                let looked =
                    tokio::time::timeout(self.timeout, client.exec(LookupTokenSelfRequest {}))
                        .await
                        .map_err(|_| KeyError::Unavailable("vault token lookup: timed out".into()))?
                        .map_err(|e| classify("token lookup", &e))?;
                if looked.renewable == Some(false) {
                    0
                } else {
                    looked.ttl
                }
            }
        };
        let mut state = self.state.write().await;
        *state = TokenState {
            token,
            client,
            renew_at: renew_deadline(ttl),
            ttl,
            capped: false,
        };
        Ok(())
    }

    /// One maintenance round: renews or replaces the token when due, then probes Vault with
    /// a token self-lookup (which fails when Vault is down or sealed, or the token is revoked)
    /// and records the result as health.
    pub(crate) async fn maintain(&self) {
        let due = self
            .state
            .read()
            .await
            .renew_at
            .is_some_and(|at| Instant::now() >= at);
        if due && let Err(e) = self.renew().await {
            tracing::warn!(error = %e, "vault token renewal failed");
        }
        let probe = self
            .call("health probe", |c| async move {
                c.exec(LookupTokenSelfRequest {}).await
            })
            .await;
        match probe {
            Ok(_) => self.set_down(None),
            Err(refused @ KeyError::CredentialsRefused(_)) => {
                // A revoked or expired token: get a new one (AppRole) or re-read the source
                // (a token file an agent rotates). Health stays down until that works.
                tracing::warn!(error = %refused, "vault token is no longer accepted; re-authenticating");
                self.set_down(Some(refused));
                match self.authenticate().await {
                    Ok(()) => {
                        tracing::info!("vault re-authentication succeeded");
                        self.set_down(None);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "vault re-authentication failed");
                        self.set_down(Some(e));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "vault is unavailable");
                self.set_down(Some(e));
            }
        }
    }

    /// Renews the token. AppRole logs in again when renewal is refused, or ahead of expiry once
    /// a renewal came back shorter than the token's TTL (its maximum TTL is near).
    async fn renew(&self) -> Result<(), KeyError> {
        let approle = matches!(self.auth, AuthMethod::AppRole { .. });
        let (ttl, capped) = {
            let st = self.state.read().await;
            (st.ttl, st.capped)
        };
        if capped && approle {
            tracing::info!("vault token is near its maximum TTL; logging in again");
            return self.authenticate().await;
        }
        let renewed = self
            .call("token renewal", |c| async move {
                let endpoint = RenewTokenSelfRequest::builder()
                    .build()
                    .map_err(build_err)?;
                c.auth(endpoint).await
            })
            .await;
        match renewed {
            Ok(info) if info.lease_duration > 0 => {
                tracing::info!(ttl_seconds = info.lease_duration, "vault token renewed");
                let mut st = self.state.write().await;
                st.renew_at = renew_deadline(info.lease_duration);
                st.capped = info.lease_duration < ttl;
                Ok(())
            }
            other => {
                if approle {
                    tracing::info!("vault token cannot be renewed; logging in again");
                    self.authenticate().await
                } else {
                    // Nothing more to do for a fixed token; keep probing so health tells.
                    self.state.write().await.renew_at = None;
                    other.map(|_| ())
                }
            }
        }
    }
}

/// When to renew a token or lease of `ttl_seconds`; none for 0 (no expiry). A TTL beyond any
/// real one (Vault's are at most years) is renewed after a year rather than overflow.
fn renew_deadline(ttl_seconds: u64) -> Option<Instant> {
    const MAX_WAIT_SECS: f64 = 365.0 * 86_400.0;
    (ttl_seconds > 0).then(|| {
        let secs = (ttl_seconds as f64 * RENEW_FRACTION).clamp(1.0, MAX_WAIT_SECS);
        Instant::now() + Duration::from_secs_f64(secs)
    })
}

/// A `vaultrs` client over the shared pooled HTTP client, with `token` in its header.
///
/// Every setting is explicit so that `VAULT_*` environment variables never change where
/// signerd connects or whether it checks certificates.
fn build_client(
    address: &str,
    http: &reqwest::Client,
    timeout: Duration,
    token: &SecretString,
) -> Result<TokenClient, KeyError> {
    let url = url::Url::parse(address)
        .map_err(|e| KeyError::Keystore(format!("keys.vault.address: {e}")))?;
    Ok(TokenClient(
        VaultClient {
            http: rustify::clients::reqwest::Client::new(address, http.clone()),
            middle: EndpointMiddleware {
                token: token.expose_secret().to_owned(),
                version: "v1".to_owned(),
                wrap: None,
                namespace: None,
            },
            settings: VaultClientSettings {
                address: url,
                ca_certs: Vec::new(),
                identity: None,
                timeout: Some(timeout),
                token: String::new(),
                verify: true,
                version: 1,
                wrapping: false,
                namespace: None,
                proxy: None,
            },
        },
        BoundedHttp::new(address, http.clone()),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn api(code: u16, errors: &[&str]) -> ClientError {
        ClientError::APIError {
            code,
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn renew_deadlines_are_bounded() {
        assert_eq!(renew_deadline(0), None);
        let now = Instant::now();
        let soon = renew_deadline(10).unwrap();
        assert!(soon >= now + Duration::from_secs(1) && soon <= now + Duration::from_secs(10));
        // A TTL no real Vault sends must not overflow the clock.
        let far = renew_deadline(u64::MAX).unwrap();
        assert!(far <= Instant::now() + Duration::from_secs(366 * 86_400));
    }

    #[test]
    fn vault_errors_map_to_the_right_kind() {
        let e = classify("sign", &api(403, &["permission denied"]));
        assert!(
            matches!(&e, KeyError::CredentialsRefused(m) if m.contains("vault sign: Vault refused the token or the operation (HTTP 403)")),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("key backend refused its credentials: "),
            "{e}"
        );
        let e = classify("sign", &api(503, &["Vault is sealed"]));
        assert!(
            matches!(&e, KeyError::Unavailable(m) if m.contains("sealed")),
            "{e}"
        );
        let e = classify("sign", &api(500, &["internal error"]));
        assert!(matches!(e, KeyError::Unavailable(_)));
        let e = classify("list", &api(404, &["no handler for route \"x\""]));
        assert!(
            matches!(&e, KeyError::Keystore(m) if m.contains("HTTP 404") && m.contains("no handler"))
        );
        let e = classify("sign", &api(400, &["invalid key version"]));
        assert!(matches!(&e, KeyError::Keystore(m) if m.contains("invalid key version")));
    }

    #[test]
    fn vault_text_is_one_bounded_line() {
        let e = classify(
            "sign",
            &api(
                400,
                &["1 error occurred:\n\t* bad input\r\n\u{1b}[31m", "second"],
            ),
        );
        assert_eq!(
            e.to_string(),
            KeyError::Keystore(
                "vault sign: HTTP 400: 1 error occurred:\\n\\t* bad input\\r\\n\\u{1b}[31m; second"
                    .to_owned()
            )
            .to_string()
        );
        let long = "x\n".repeat(1000);
        let KeyError::Unavailable(e) = classify("sign", &api(500, &[&long])) else {
            panic!("HTTP 500 is unavailable");
        };
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
        assert!(e.ends_with('…'), "{e}");
        assert!(e.chars().count() <= "vault sign: HTTP 500: ".len() + MAX_VAULT_TEXT + 1);
        assert_eq!(vault_text("ok"), "ok");
        assert_eq!(
            vault_text(&"é".repeat(400)).chars().count(),
            MAX_VAULT_TEXT + 1
        );
    }
}
