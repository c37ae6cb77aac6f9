//! Inclusion-proof JSON as `signerctl audit check-proof` reads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::audit_proof(data));
