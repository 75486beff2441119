//! The compiler proper: graph passes over the IR and the schedule and memory plan of an optimized
//! graph (the Cranelift backend will join them here). The CLI in `main.rs` drives it.

pub mod codegen;
pub mod passes;
pub mod plan;
