//! Policy files are written by people and reloaded at run time: no input may panic the parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signerd::fuzzing::policy_parse(data));
