#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opennotr_fuzz_targets::quic_framing(data));
