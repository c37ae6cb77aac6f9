//! Blockchain encodings: turning requests into exact bytes to sign and decoded actions for the
//! policy. Nothing here holds keys or decides anything.

pub mod evm;
