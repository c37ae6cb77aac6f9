//! Soft key files and keystore v3 files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::keystore_file(data));
