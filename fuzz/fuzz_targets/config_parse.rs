//! The daemon's configuration file: refused with an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::config_parse(data));
