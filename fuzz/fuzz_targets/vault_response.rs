//! Vault and OpenBao response bodies as the transit calls read them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::vault_response(data));
