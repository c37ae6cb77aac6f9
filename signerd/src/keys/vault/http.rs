//! The HTTP transport of every Vault call: rustify's reqwest client (which `vaultrs` uses),
//! except that a response body is read only up to [`MAX_RESPONSE_BYTES`] and a larger one is
//! refused before anything parses it.
//!
//! `vaultrs`'s own functions read whole bodies into memory whatever their size, so signerd
//! builds `vaultrs`'s endpoints itself and runs them here, with the same error mapping as
//! `vaultrs`. This module must never buffer more than the bound, and never log a request or a
//! response: they carry the token, AppRole secrets and wrapped key material.

use rustify::endpoint::Endpoint;
use rustify::errors::ClientError as RestClientError;
use vaultrs::api::{AuthInfo, EndpointMiddleware, EndpointResult};
use vaultrs::error::ClientError;

/// Largest response body read from Vault, in bytes. Transit answers are a few KiB (a key with
/// many versions lists one public key per version); anything larger is refused.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// rustify's reqwest client with a bounded response body.
#[derive(Debug, Clone)]
pub(crate) struct BoundedHttp {
    http: reqwest::Client,
    base: String,
}

impl BoundedHttp {
    /// A client for the Vault server at `base` (its address) over the pooled `http`.
    pub(crate) fn new(base: &str, http: reqwest::Client) -> BoundedHttp {
        BoundedHttp {
            http,
            base: base.to_owned(),
        }
    }
}

fn too_large(len: impl std::fmt::Display) -> RestClientError {
    RestClientError::ResponseError {
        source: anyhow::anyhow!(
            "the response body is {len} bytes, more than the {MAX_RESPONSE_BYTES} bytes signerd \
             reads from Vault; refused"
        ),
    }
}

/// Reads `response`'s body, refusing it as soon as it exceeds [`MAX_RESPONSE_BYTES`].
async fn read_body(response: &mut reqwest::Response) -> Result<Vec<u8>, RestClientError> {
    if let Some(len) = response.content_length()
        && len > MAX_RESPONSE_BYTES as u64
    {
        return Err(too_large(len));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| RestClientError::ResponseError { source: e.into() })?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large(format!("more than {}", body.len() + chunk.len())));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[async_trait::async_trait]
impl rustify::client::Client for BoundedHttp {
    fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, RestClientError> {
        let request = reqwest::Request::try_from(req)
            .map_err(|e| RestClientError::ReqwestBuildError { source: e })?;
        let url = request.url().to_string();
        let method = request.method().to_string();
        let mut response =
            self.http
                .execute(request)
                .await
                .map_err(|e| RestClientError::RequestError {
                    source: e.into(),
                    url,
                    method,
                })?;
        let mut out = http::Response::builder().status(response.status().as_u16());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        let body = read_body(&mut response).await?;
        out.body(body)
            .map_err(|e| RestClientError::ResponseError { source: e.into() })
    }
}

/// An endpoint that could not be built (a builder missing a field: a bug in signerd).
pub(crate) fn build_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::RestClientError {
        source: RestClientError::EndpointBuildError {
            source: anyhow::anyhow!("{e}"),
        },
    }
}

/// As `vaultrs`: a server error whose body lists Vault's errors becomes
/// [`ClientError::APIError`]; anything else stays rustify's error.
fn parse_err(e: RestClientError) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    if let RestClientError::ServerResponseError {
        code,
        content: Some(c),
    } = &e
        && let Ok(err) = serde_json::from_str::<Errors>(c)
    {
        return ClientError::APIError {
            code: *code,
            errors: err.errors,
        };
    }
    ClientError::from(e)
}

/// Runs `endpoint` and returns the `data` of Vault's answer (an answer without is an error).
pub(crate) async fn exec<E: Endpoint>(
    http: &BoundedHttp,
    middle: &EndpointMiddleware,
    endpoint: E,
) -> Result<E::Response, ClientError> {
    endpoint
        .with_middleware(middle)
        .exec(http)
        .await
        .map_err(parse_err)?
        .wrap::<EndpointResult<_>>()
        .map_err(ClientError::from)?
        .data
        .ok_or(ClientError::ResponseDataEmptyError)
}

/// Runs `endpoint`, whose answer carries nothing signerd reads.
pub(crate) async fn exec_empty<E: Endpoint>(
    http: &BoundedHttp,
    middle: &EndpointMiddleware,
    endpoint: E,
) -> Result<(), ClientError> {
    endpoint
        .with_middleware(middle)
        .exec(http)
        .await
        .map_err(parse_err)
        .map(|_| ())
}

/// Runs an authentication `endpoint` and returns the `auth` of Vault's answer.
pub(crate) async fn auth<E: Endpoint<Response = ()>>(
    http: &BoundedHttp,
    middle: &EndpointMiddleware,
    endpoint: E,
) -> Result<AuthInfo, ClientError> {
    let r: EndpointResult<()> = endpoint
        .with_middleware(middle)
        .exec(http)
        .await
        .map_err(parse_err)?
        .wrap::<EndpointResult<_>>()
        .map_err(ClientError::from)?;
    r.auth.ok_or(ClientError::ResponseEmptyError)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use vaultrs::api::transit::requests::ListKeysRequest;

    use super::*;

    /// Serves one request with `head` (status line and headers) and `body`, then closes.
    async fn serve_once(head: String, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        });
        format!("http://{addr}")
    }

    async fn list(base: &str) -> Result<Vec<String>, ClientError> {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let http = BoundedHttp::new(base, client);
        let middle = EndpointMiddleware {
            token: "t".into(),
            version: "v1".into(),
            wrap: None,
            namespace: None,
        };
        let endpoint = ListKeysRequest::builder().mount("transit").build().unwrap();
        exec(&http, &middle, endpoint).await.map(|r| r.keys)
    }

    fn answer(keys: usize) -> Vec<u8> {
        let names: Vec<String> = (0..keys).map(|i| format!("key-{i:08}")).collect();
        serde_json::to_vec(&serde_json::json!({
            "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": {"keys": names}, "wrap_info": null, "warnings": null, "auth": null,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn answers_within_the_bound_are_read() {
        let body = answer(3);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let base = serve_once(head, body).await;
        assert_eq!(list(&base).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn larger_answers_are_refused_by_their_length() {
        let body = answer(MAX_RESPONSE_BYTES / 10);
        assert!(body.len() > MAX_RESPONSE_BYTES);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let base = serve_once(head, body).await;
        let err = list(&base).await.unwrap_err();
        let shown = crate::keys::vault::client::classify("list transit keys", &err).to_string();
        assert!(shown.contains("more than the 1048576 bytes"), "{shown}");
    }

    #[tokio::test]
    async fn larger_answers_without_a_length_are_cut_off() {
        let body = answer(MAX_RESPONSE_BYTES / 10);
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".into();
        let base = serve_once(head, body).await;
        let err = list(&base).await.unwrap_err();
        let shown = crate::keys::vault::client::classify("list transit keys", &err).to_string();
        assert!(shown.contains("more than the 1048576 bytes"), "{shown}");
    }

    #[tokio::test]
    async fn vault_errors_keep_their_status_and_messages() {
        let body = br#"{"errors":["permission denied"]}"#.to_vec();
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let base = serve_once(head, body).await;
        match list(&base).await.unwrap_err() {
            ClientError::APIError { code, errors } => {
                assert_eq!(code, 403);
                assert_eq!(errors, ["permission denied"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
