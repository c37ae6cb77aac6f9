//! Vault-wrapped key files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::wrapped_key(data));
