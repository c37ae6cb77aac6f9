//! Approve and Reject requests: decoding, field checks, and the vote checked against a pending
//! request, signature included.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::rpc_vote(data));
