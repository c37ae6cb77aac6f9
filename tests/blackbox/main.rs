//! Black-box integration tests: they start the real `signerd` and `signerctl` binaries against
//! throw-away installations and check, independently of the daemon's code, what comes back
//! (status codes, signatures, encoded transactions) and what lands in the audit log.
//!
//! One test binary, one module per area (as ripgrep does), shared fixtures in [`util`]. Every
//! test uses its own directory and an ephemeral port, so tests run in parallel; no test ever
//! leaves a daemon running or is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod address_books;
mod approvals;
mod arguments;
mod audit_crash;
mod audit_example;
mod audit_integrity;
mod audit_key;
mod audit_recheck;
mod audit_recovery;
mod audit_support;
mod audit_tamper;
mod badinput;
mod bypasses;
mod connections;
mod dev;
mod failclosed;
mod idempotency;
mod key_pins;
mod limits;
mod metrics;
mod mtls;
mod operator_tools;
mod overload;
mod pg;
mod pkcs11;
mod policy_governance;
mod policy_ops;
mod policy_tools;
mod replica_tools;
mod replicas;
mod retention;
mod secrets;
mod signing;
mod snapshots;
mod util;
mod vault;
mod witness;
