//! The compiler proper: graph passes over the IR (the memory planner and the Cranelift backend
//! will join them here). The CLI in `main.rs` drives it.

pub mod passes;
