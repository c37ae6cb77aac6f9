//! Policy signature files travel beside the policy and anyone who can write there writes them:
//! no input may panic the parser or the counting.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::policy_signatures(data));
