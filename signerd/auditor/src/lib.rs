#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! The format, in the order `docs/audit-log.md` specifies it: [`events`] (every record type,
//! typed), [`record`] (a record body and its exact bytes), [`envelope`] (reading one line), [`segments`] and [`layout`] (the files of
//! a log directory), [`merkle`] (RFC 6962 hashing and proofs), [`note`] (C2SP signed
//! checkpoints and verifier keys), [`cosignature`] (witness cosignatures and `add-checkpoint`
//! requests), [`approval`] (the message approvers sign). Reading it:
//! [`check`] (the record-by-record checks), [`verify`], [`witnessed`] (the log against its
//! witnesses' cosignatures), [`replicas`] (the logs of several replicas as one system),
//! [`prove`] and [`query`], and [`commands`] (what the `signerd-auditor` binary and
//! `signerctl audit` run, with their output).
//!
//! This crate only reads logs and verifies signatures. It must never write to a log
//! directory, hold a signing key, or depend on anything that reaches a key backend, the network
//! or an async runtime (`tests/dependencies.rs` enforces the last point).

pub mod approval;
pub mod check;
pub mod commands;
pub mod cosignature;
pub mod envelope;
pub mod events;
pub mod layout;
pub mod merkle;
pub mod note;
pub mod prove;
pub mod query;
pub mod record;
pub mod replicas;
pub mod rfc3339;
pub mod segments;
#[cfg(test)]
mod testlog;
pub mod verify;
pub mod witnessed;

pub use check::{Failure, Stats};
pub use events::{Event, Kind};
pub use note::{Checkpoint, CheckpointSigner, VerifierKey};
pub use record::{MAX_LINE_BYTES, Record, RecordError};
