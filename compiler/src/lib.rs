//! The compiler proper: graph passes over the IR, the schedule and memory plan of an optimized
//! graph, the Cranelift backend and the linker driver. The CLI in `main.rs` (its subcommands in `cli/`) drives it.

pub mod codegen;
pub mod interrupt;
pub mod link;
pub mod passes;
pub mod plan;
