//! The runtime linked into every executable inceptc emits, also used in process by the compiler's
//! JIT path: activation layouts, the executor (arena, input conversion, halos, steps on the thread
//! pool, outputs), the thread pool, and the `.npy` reader and writer that the executables and the
//! `inceptc` CLI share.

pub mod exec;
pub mod layout;
pub mod npy;
pub mod pool;
