//! The gRPC surface: `signer.v1.Signer`, `signer.v1.Admin` and `signer.v1.Approvals` served
//! with tonic.
//!
//! This is the only place where errors become `tonic::Status`, so every status code has one
//! meaning: INVALID_ARGUMENT for bad input, NOT_FOUND for an unknown key, PERMISSION_DENIED
//! (with the rule) for a policy denial and nothing else, ABORTED for a reused `request_id`,
//! UNAUTHENTICATED without a mapped identity, UNAVAILABLE when a backend (including one that
//! refuses signerd's own credentials), the state store or the audit log cannot serve. Handlers hold no logic of their own beyond authentication.

use std::sync::Arc;

use signerd_proto::v1::{self, admin_server, approvals_server, signer_server};
use tonic::{Request, Response, Status};

pub mod wire;

use crate::keys::KeyInfo;
use crate::request::SignRequest;
use crate::service::{Caller, ServiceError, Signer, VoteRequest};
use crate::tls::ConnInfo;
use wire::SignResponse;

/// The tonic implementation of `signer.v1.Signer`.
#[derive(Debug, Clone)]
pub struct SignerApi {
    signer: Arc<Signer>,
}

impl SignerApi {
    /// Wraps the signing service.
    pub fn new(signer: Arc<Signer>) -> SignerApi {
        SignerApi { signer }
    }

    /// The caller's identity, or UNAUTHENTICATED (recorded as `auth.failure`).
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let info = req.extensions().get::<ConnInfo>();
        let peer = info.map(|i| i.peer);
        let Some(cert) = info.and_then(|i| i.cert.as_ref()) else {
            self.signer
                .record_auth_failure(peer, None, "no client certificate");
            return Err(Status::unauthenticated("a client certificate is required"));
        };
        match &cert.identity {
            Ok(identity) => Ok(Caller {
                identity: identity.clone(),
                cert_sha256: cert.sha256.clone(),
                peer,
            }),
            Err(reason) => {
                self.signer
                    .record_auth_failure(peer, Some(&cert.sha256), reason);
                Err(Status::unauthenticated(reason.clone()))
            }
        }
    }
}

impl SignerApi {
    /// Signs through the service and answers with the method's response message.
    async fn sign<R: SignResponse>(
        &self,
        caller: Caller,
        request: SignRequest,
    ) -> Result<Response<R>, Status> {
        self.signer
            .sign(caller, request)
            .await
            .map(|outcome| Response::new(R::from_outcome(outcome)))
            .map_err(status)
    }
}

/// A pipeline error as the client sees it: each variant has one status code.
impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::PermissionDenied { rule, reason } => match rule {
                Some(rule) => Status::permission_denied(format!("{reason} (rule: {rule})")),
                None => Status::permission_denied(reason),
            },
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
        }
    }
}

/// Maps a pipeline error to its status code (see the `From` impl).
pub fn status(e: ServiceError) -> Status {
    e.into()
}

fn key_proto(k: KeyInfo) -> v1::Key {
    let evm_address = match k.algorithm {
        crate::keys::Algorithm::Secp256k1 => crate::chain::evm::address_of(&k.public_key)
            .map(|a| a.to_checksum(None))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let algorithm = match k.algorithm {
        crate::keys::Algorithm::Secp256k1 => v1::Algorithm::Secp256k1,
        crate::keys::Algorithm::Ed25519 => v1::Algorithm::Ed25519,
        crate::keys::Algorithm::P256 => v1::Algorithm::P256,
    };
    v1::Key {
        id: k.id,
        algorithm: algorithm.into(),
        backend: k.backend.to_owned(),
        public_key: k.public_key,
        evm_address,
        version: k.version.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl signer_server::Signer for SignerApi {
    async fn list_keys(
        &self,
        req: Request<v1::ListKeysRequest>,
    ) -> Result<Response<v1::ListKeysResponse>, Status> {
        self.caller(&req)?;
        let keys = self
            .signer
            .keys()
            .keys()
            .into_iter()
            .map(key_proto)
            .collect();
        Ok(Response::new(v1::ListKeysResponse { keys }))
    }

    async fn get_key(&self, req: Request<v1::GetKeyRequest>) -> Result<Response<v1::Key>, Status> {
        self.caller(&req)?;
        let id = &req.get_ref().key_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("key_id: required"));
        }
        match self.signer.keys().key(id) {
            Some(k) => Ok(Response::new(key_proto(k))),
            None => Err(Status::not_found(format!("key `{id}` not found"))),
        }
    }

    async fn sign_evm_transaction(
        &self,
        req: Request<v1::SignEvmTransactionRequest>,
    ) -> Result<Response<v1::SignEvmTransactionResponse>, Status> {
        let caller = self.caller(&req)?;
        self.sign(caller, SignRequest::Transaction(req.into_inner()))
            .await
    }

    async fn sign_evm_message(
        &self,
        req: Request<v1::SignEvmMessageRequest>,
    ) -> Result<Response<v1::SignEvmMessageResponse>, Status> {
        let caller = self.caller(&req)?;
        self.sign(caller, SignRequest::Message(req.into_inner()))
            .await
    }

    async fn sign_typed_data(
        &self,
        req: Request<v1::SignTypedDataRequest>,
    ) -> Result<Response<v1::SignTypedDataResponse>, Status> {
        let caller = self.caller(&req)?;
        self.sign(caller, SignRequest::TypedData(req.into_inner()))
            .await
    }

    async fn sign_digest(
        &self,
        req: Request<v1::SignDigestRequest>,
    ) -> Result<Response<v1::SignDigestResponse>, Status> {
        let caller = self.caller(&req)?;
        self.sign(caller, SignRequest::Digest(req.into_inner()))
            .await
    }

    async fn get_sign_request(
        &self,
        req: Request<v1::GetSignRequestRequest>,
    ) -> Result<Response<v1::SignRequestState>, Status> {
        let caller = self.caller(&req)?;
        let state = self
            .signer
            .sign_request_state(&caller, &req.get_ref().request_id)
            .await
            .map_err(status)?;
        wire::request_state_proto(state)
            .map(Response::new)
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    type WatchSignRequestStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::SignRequestState, Status>> + Send>,
    >;

    async fn watch_sign_request(
        &self,
        req: Request<v1::WatchSignRequestRequest>,
    ) -> Result<Response<Self::WatchSignRequestStream>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        let rx = self
            .signer
            .watch_sign_request(caller, req.request_id, u64::from(req.max_wait_secs))
            .await
            .map_err(status)?;
        // The service reports the state at every change and every second; the client hears
        // of it only when what it sees changed.
        let mut last: Option<v1::SignRequestState> = None;
        let stream = tokio_stream::StreamExt::filter_map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            move |item| {
                let shown = item.map_err(status).and_then(|state| {
                    wire::request_state_proto(state).map_err(|e| Status::unavailable(e.to_string()))
                });
                match shown {
                    Ok(now) if last.as_ref() == Some(&now) => None,
                    Ok(now) => {
                        last = Some(now.clone());
                        Some(Ok(now))
                    }
                    Err(e) => Some(Err(e)),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The tonic implementation of `signer.v1.Approvals`: clients with the `approver` role whose
/// key the policy registers.
#[derive(Debug, Clone)]
pub struct ApprovalsApi {
    inner: SignerApi,
}

impl ApprovalsApi {
    /// Wraps the signing service.
    pub fn new(signer: Arc<Signer>) -> ApprovalsApi {
        ApprovalsApi {
            inner: SignerApi::new(signer),
        }
    }

    /// Casts an approve or reject vote: the one path both RPCs take.
    async fn vote(
        &self,
        caller: Caller,
        vote: VoteRequest,
    ) -> Result<Response<v1::ApprovalResponse>, Status> {
        self.inner
            .signer
            .vote(caller, vote)
            .await
            .map(|v| Response::new(wire::vote_proto(v)))
            .map_err(status)
    }
}

#[tonic::async_trait]
impl approvals_server::Approvals for ApprovalsApi {
    async fn list_pending(
        &self,
        req: Request<v1::ListPendingRequest>,
    ) -> Result<Response<v1::ListPendingResponse>, Status> {
        let caller = self.inner.caller(&req)?;
        self.inner
            .signer
            .list_pending(&caller)
            .await
            .map(|(open, now)| {
                let mut list = wire::pending_list_proto(&open, now);
                for (shown, rec) in list.requests.iter_mut().zip(&open) {
                    shown.summary = self.inner.signer.describe_pending(rec);
                }
                Response::new(list)
            })
            .map_err(status)
    }

    async fn approve(
        &self,
        req: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::ApprovalResponse>, Status> {
        let caller = self.inner.caller(&req)?;
        let r = req.into_inner();
        let vote = wire::approve_request(r);
        self.vote(caller, vote).await
    }

    async fn reject(
        &self,
        req: Request<v1::RejectRequest>,
    ) -> Result<Response<v1::ApprovalResponse>, Status> {
        let caller = self.inner.caller(&req)?;
        let r = req.into_inner();
        let vote = wire::reject_request(r);
        self.vote(caller, vote).await
    }
}

/// The tonic implementation of `signer.v1.Admin`: clients with the `admin` role only.
#[derive(Debug, Clone)]
pub struct AdminApi {
    inner: SignerApi,
}

impl AdminApi {
    /// Wraps the signing service.
    pub fn new(signer: Arc<Signer>) -> AdminApi {
        AdminApi {
            inner: SignerApi::new(signer),
        }
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminApi {
    async fn reload_policy(
        &self,
        req: Request<v1::ReloadPolicyRequest>,
    ) -> Result<Response<v1::ReloadPolicyResponse>, Status> {
        let caller = self.inner.caller(&req)?;
        if !caller.identity.roles.iter().any(|r| r == "admin") {
            let reason = format!(
                "ReloadPolicy needs the `admin` role; `{}` does not have it",
                caller.identity.id
            );
            self.inner.signer.record_policy_refused(
                crate::audit::events::PolicySource::Rpc,
                Some(&caller.identity.id),
                &reason,
                Vec::new(),
            );
            return Err(Status::permission_denied(reason));
        }
        self.inner
            .signer
            .reload_policy(
                crate::audit::events::PolicySource::Rpc,
                Some(&caller.identity.id),
                req.get_ref().force,
            )
            .await
            .map(|r| Response::new(wire::reload_proto(r)))
            .map_err(status)
    }
}
