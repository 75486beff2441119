//! Image input of the executables' runtime: the body and what it checks are in `inceptc_suite::fuzz::image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inceptc_suite::fuzz::image(data));
