//! SignDigest requests: protobuf bytes through decoding, validation and preparation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::rpc_sign_digest(data));
