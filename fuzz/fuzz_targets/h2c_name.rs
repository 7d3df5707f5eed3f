#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opennotr_fuzz_targets::h2c_name(data));
