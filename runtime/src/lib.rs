//! The runtime linked into every executable inceptc emits. It grows with the backend; today it
//! holds the `.npy` reader and writer that the executables and the `inceptc` CLI share.

pub mod npy;
