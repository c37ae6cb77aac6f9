//! The daemon's configuration parser must refuse, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = signerd::config::Config::parse("fuzz.toml", src, std::path::Path::new("/"));
    }
});
