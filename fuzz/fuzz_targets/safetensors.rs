//! Safetensors reading and binding: the body and what it checks are in `inceptc_suite::fuzz::safetensors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inceptc_suite::fuzz::safetensors(data));
