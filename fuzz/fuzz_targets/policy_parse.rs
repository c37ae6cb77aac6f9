//! Policy files are written by people and reloaded at run time: no input may panic the parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = signerd_policy::Policy::parse("fuzz.toml", src);
    }
});
