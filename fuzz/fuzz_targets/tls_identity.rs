//! PEM certificates and CRLs into the client verifier, and certificates mapped to identities.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::tls_identity(data));
