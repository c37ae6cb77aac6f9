//! C2SP checkpoints, signed notes and verifier keys.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::audit_note(data));
