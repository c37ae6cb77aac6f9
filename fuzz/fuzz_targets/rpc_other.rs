//! Every other RPC's request message, decoded and its identifiers validated.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::rpc_other(data));
