//! signerd: a self-hosted custody and signing daemon.
//!
//! Backend services ask signerd over mutually authenticated gRPC to sign EVM transactions and
//! messages. Every request is decoded into a canonical action, checked against the declarative
//! policy, signed by a key backend and written to an append-only audit log before the answer
//! leaves the process. Every failure on that path fails closed: nothing is signed.
//!
//! One folder per concern: [`api`] (the only place errors become `tonic::Status`), [`tls`],
//! [`keys`], [`chain`], [`state`], [`audit`], [`config`]; [`service`] is the signing pipeline
//! that ties them together. The audit log's format, reader and verifier are a crate of their
//! own, `signerd-auditor` (`signerd/auditor`), that auditors build without the daemon.

pub mod api;
pub mod approvals;
pub mod audit;
pub mod chain;
pub mod client;
pub mod config;
pub mod dev;
#[doc(hidden)]
pub mod fuzzing;
pub mod hardening;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod policy_file;
pub mod request;
pub mod server;
pub mod service;
pub mod state;
pub mod tasks;
pub mod tls;
pub mod witness;
