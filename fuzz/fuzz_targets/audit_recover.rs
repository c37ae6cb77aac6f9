//! Audit logs through the start-up scan of crash recovery.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::audit_recover(data));
