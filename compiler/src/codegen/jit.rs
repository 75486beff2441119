//! Compiling a [`Program`] in process with cranelift-jit, for tests and for measuring kernels
//! without linking an executable.

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::default_libcall_names;
use inceptc_runtime::desc::{ModelDesc, OutputKind, Preprocess};
use inceptc_runtime::exec::{self, KernelFn};

use super::{define_kernels, isa, CodegenError, Program};

/// A program whose kernels are compiled into this process.
pub struct JitProgram {
    /// The program compiled.
    pub program: Program,
    /// The program's description, encoded and decoded as an executable's is: the model runs
    /// from it, so every JIT test also tests the description.
    desc: ModelDesc,
    /// The packed weights the kernels read.
    weights: Vec<u8>,
    kernels: Vec<Option<KernelFn>>,
    module: Option<JITModule>,
}

impl JitProgram {
    /// Compiles every kernel of `program` into this process.
    pub fn new(program: Program) -> Result<JitProgram, CodegenError> {
        if program.amx {
            // The kernel's permission for tile data, process-wide, before any thread runs one.
            inceptc_runtime::exec::enable_amx().map_err(|e| CodegenError::Amx(e.to_string()))?;
        }
        let builder = JITBuilder::with_isa(isa(false)?, default_libcall_names());
        let mut module = JITModule::new(builder);
        let ids = define_kernels(&mut module, &program, &|| {})?;
        module.finalize_definitions()?;
        let kernels = ids
            .into_iter()
            .map(|id| {
                id.map(|id| {
                    let code = module.get_finalized_function(id);
                    // SAFETY: every kernel is emitted with `emit::kernel_signature`, which is
                    // this C signature.
                    unsafe { std::mem::transmute::<*const u8, KernelFn>(code) }
                })
            })
            .collect();
        let described = super::describe(
            &program,
            &program.name,
            Preprocess::Facenet,
            OutputKind::Logits,
        );
        let desc = ModelDesc::decode(&described.encode())?;
        Ok(JitProgram {
            desc,
            weights: program.packed_weights(),
            program,
            kernels,
            module: Some(module),
        })
    }

    /// The runnable model; it borrows this program's code and weights.
    pub fn model(&self) -> exec::Model<'_> {
        self.desc.model(&self.weights, &self.kernels)
    }
}

impl Drop for JitProgram {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the kernels are only reachable through `self`, which is going away.
            unsafe { module.free_memory() };
        }
    }
}

/// One core's FMA throughput in GFLOP/s, measured: the best of `rounds` runs of
/// [`super::x86::fma_probe`] (zmm when `wide`, else ymm) on the calling thread. The caller must
/// run on a CPU with AVX-512 for `wide`.
pub fn fma_peak(wide: bool, rounds: usize) -> Result<f64, CodegenError> {
    use cranelift_module::{Linkage, Module};
    let code = super::x86::fma_probe(wide).map_err(|source| CodegenError::Assembler {
        tile: "fma_probe".into(),
        source,
    })?;
    let builder = JITBuilder::with_isa(isa(false)?, default_libcall_names());
    let mut module = JITModule::new(builder);
    let mut sig = module.make_signature();
    sig.params.push(cranelift_codegen::ir::AbiParam::new(
        cranelift_codegen::ir::types::I64,
    ));
    let id = module.declare_function("fma_probe", Linkage::Local, &sig)?;
    module.define_function_bytes(id, 64, &code, &[])?;
    module.finalize_definitions()?;
    // SAFETY: the probe is `extern "C" fn(u64)` and touches only vector registers and rdi.
    let probe = unsafe {
        std::mem::transmute::<*const u8, extern "C" fn(u64)>(module.get_finalized_function(id))
    };
    let iterations: u64 = 20_000_000;
    let lanes = if wide { 16.0 } else { 8.0 };
    let flop = iterations as f64 * 2.0 * super::x86::PROBE_ACCUMULATORS as f64 * lanes * 2.0;
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let start = std::time::Instant::now();
        probe(iterations);
        best = best.min(start.elapsed().as_secs_f64());
    }
    // SAFETY: `probe` is not used after this.
    unsafe { module.free_memory() };
    Ok(flop / best / 1e9)
}
