//! The runtime linked into every executable inceptc emits, also used in process by the compiler's
//! JIT path: activation layouts, the model description an object carries, the executor (arena,
//! input conversion, halos, steps on the thread pool, outputs), the thread pool, image decoding and
//! preprocessing, the packing of the stored weights, and the `.npy` reader and writer that the executables and the `inceptc` CLI
//! share.

pub mod desc;
pub mod exec;
pub mod files;
pub mod image;
pub mod layout;
pub mod npy;
pub mod pack;
pub mod pool;
pub mod resample;
