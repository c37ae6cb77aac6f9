//! EIP-191 message bytes and EIP-712 JSON as the chain module prepares them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::evm_typed_data(data));
