//! EIP-712 JSON and EIP-191 messages come from clients: never panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = signerd::chain::evm::prepare_message("k", data);
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = signerd::chain::evm::prepare_typed_data("k", json);
    }
});
