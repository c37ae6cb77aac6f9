//! Policy test-case files, run against a policy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::policy_cases(data));
