//! Embedding a model compiled with `inceptc compile --emit lib`: the Rust API ([`Model`]) and the
//! C API over it (declared in the generated `inceptc_model.h`): create a context with a thread
//! count, query shapes, run on an input buffer, destroy. Contexts are independent (each has its
//! arena and threads); use one per thread. No C function unwinds into C: failures return an error
//! code and set [`inceptc_last_error`].

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

use inceptc_runtime::exec::{self, Arena};
use inceptc_runtime::pool::ThreadPool;

use crate::{linked_model, model, Linked};

/// The linked model with its own arena and threads: what a Rust program embeds.
///
/// ```ignore
/// let mut model = inceptc_main::Model::new(2)?;
/// let [n, c, h, w] = model.input_shape();
/// let y = model.run(&vec![0.0; n * c * h * w])?; // model.output_shape() values
/// ```
pub struct Model {
    model: exec::Model<'static>,
    arena: Arena,
    pool: ThreadPool,
}

/// The C API's context is the Rust model.
pub type Context = Model;

impl Model {
    /// The model running on `threads` threads (0: all cores). Fails when the CPU lacks a feature
    /// the kernels use, the model data is corrupt, or memory is short.
    pub fn new(threads: usize) -> Result<Model, String> {
        let linked = linked()?;
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t => t,
        };
        Ok(Model {
            model: model(linked),
            arena: Arena::new(linked.desc.arena_bytes).map_err(|e| e.to_string())?,
            pool: ThreadPool::new(threads),
        })
    }

    /// `[N, C, H, W]` of the float32 NCHW input.
    pub fn input_shape(&self) -> [usize; 4] {
        let m = self.model.input;
        [m.n, m.channels, m.h, m.w]
    }

    /// The output's shape: `[N, K]` (logits or embeddings).
    pub fn output_shape(&self) -> Vec<usize> {
        self.model.outputs[0].dims()
    }

    /// Runs on `input` (the input shape, NCHW) and returns the output (the output shape).
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, String> {
        let mut outputs = self
            .model
            .run(&mut self.arena, input, &self.pool)
            .map_err(|e| e.to_string())?;
        Ok(outputs.swap_remove(0))
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: String) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn linked() -> Result<&'static Linked, String> {
    static LINKED: OnceLock<Result<Linked, String>> = OnceLock::new();
    LINKED
        .get_or_init(|| linked_model().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `f`, turning an error or a panic into `fallback` and a message for [`inceptc_last_error`].
fn guarded<T>(fallback: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(e);
            fallback
        }
        Err(_) => {
            set_error("internal error (panic) in the inceptc runtime".into());
            fallback
        }
    }
}

/// The message of the last failure on this thread ("" if none); valid until the next call.
#[no_mangle]
pub extern "C" fn inceptc_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Creates a context running on `threads` threads (0: all cores). NULL on failure: the CPU lacks
/// AVX2 or FMA, the model data is corrupt, or memory is short.
#[no_mangle]
pub extern "C" fn inceptc_create(threads: c_int) -> *mut Context {
    guarded(std::ptr::null_mut(), || {
        let threads = usize::try_from(threads)
            .map_err(|_| format!("threads must be 0 or more, got {threads}"))?;
        Ok(Box::into_raw(Box::new(Model::new(threads)?)))
    })
}

/// Writes the input shape `[N, C, H, W]` (float32, NCHW) to `shape`; returns 4, or -1.
///
/// # Safety
/// `shape` points to 4 writable `int64_t`.
#[no_mangle]
pub unsafe extern "C" fn inceptc_input_shape(shape: *mut i64) -> c_int {
    guarded(-1, || {
        let d = &linked()?.desc;
        let dims = [d.batch, d.input.channels, d.image[0], d.image[1]];
        for (i, v) in dims.iter().enumerate() {
            // SAFETY: the caller provides 4 elements.
            unsafe { *shape.add(i) = *v as i64 };
        }
        Ok(4)
    })
}

/// Writes the output shape (`[N, K]`, float32) to `shape`, which must hold 4 values; returns the
/// rank, or -1.
///
/// # Safety
/// `shape` points to 4 writable `int64_t`.
#[no_mangle]
pub unsafe extern "C" fn inceptc_output_shape(shape: *mut i64) -> c_int {
    guarded(-1, || {
        let dims = linked()?.desc.outputs[0].dims();
        for (i, v) in dims.iter().enumerate() {
            // SAFETY: the caller provides 4 elements; the rank is at most 4.
            unsafe { *shape.add(i) = *v as i64 };
        }
        Ok(dims.len() as c_int)
    })
}

/// Runs the model on `input` (`input_len` floats, the input shape) and writes `output_len` floats
/// (the output shape) to `output`. Returns 0, or -1 with [`inceptc_last_error`] set.
///
/// # Safety
/// `context` comes from [`inceptc_create`] and is used by one thread at a time; `input` and
/// `output` point to `input_len` readable and `output_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn inceptc_run(
    context: *mut Context,
    input: *const f32,
    input_len: usize,
    output: *mut f32,
    output_len: usize,
) -> c_int {
    guarded(-1, || {
        // SAFETY: as the caller promises.
        let context = unsafe { context.as_mut() }.ok_or("the context is NULL")?;
        if input.is_null() || output.is_null() {
            return Err("the input or output buffer is NULL".into());
        }
        // SAFETY: as the caller promises.
        let x = unsafe { std::slice::from_raw_parts(input, input_len) };
        let y = context.run(x)?;
        if y.len() != output_len {
            return Err(format!(
                "the output buffer holds {output_len} floats, the output has {}",
                y.len()
            ));
        }
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(output, output_len) }.copy_from_slice(&y);
        Ok(0)
    })
}

/// Frees a context (NULL is ignored).
///
/// # Safety
/// `context` comes from [`inceptc_create`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn inceptc_destroy(context: *mut Context) {
    if !context.is_null() {
        // SAFETY: created by `Box::into_raw` in `inceptc_create`.
        drop(unsafe { Box::from_raw(context) });
    }
}
