//! Audit logs an auditor does not trust, through `signerctl audit verify`, `prove` and `query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::audit_verify(data));
