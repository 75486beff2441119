//! The IR text parser: the body and what it checks are in `inceptc_suite::fuzz::ir_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inceptc_suite::fuzz::ir_text(data));
