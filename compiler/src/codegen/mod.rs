//! The Cranelift backend: lowering a planned graph to kernels ([`lower`]), emitting each kernel as
//! a Cranelift function ([`emit`]), and compiling them in process ([`jit`]) or into an object.
//!
//! Cranelift generates code for x86-64 with the ISA flags set explicitly (AVX2 and FMA, 128-bit
//! vectors), at `opt_level = none`: the kernels are written register-blocked already, and the
//! optimizer's rematerialization spilled accumulators in measurements (DESIGN.md §6). The register
//! tiles ([`tile`]) of the AVX2 and AVX-512 tiers are assembled by [`x86`].

pub mod cost;
pub mod emit;
pub mod jit;
pub mod lower;
pub mod object;
pub mod report;
pub mod tile;
pub mod winograd;
pub mod x86;

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};

pub use lower::{ConvAlgorithm, ItemOrder, Kernel, LowerOptions, Program, Step};

/// Why a graph could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// No memory plan could be made.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Shapes could not be inferred.
    #[error(transparent)]
    Shape(#[from] inceptc_ir::ShapeError),
    /// A node has no kernel (the passes did not run).
    #[error(
        "node `{node}`: the backend has no kernel for `{op}`; run the whole pass pipeline first"
    )]
    Unsupported {
        /// The node.
        node: String,
        /// Its op's keyword.
        op: &'static str,
    },
    /// This node's weights are not bound.
    #[error("node `{0}` has no bound weights")]
    Unbound(String),
    /// A value's layout is not what its kernel needs.
    #[error("node `{node}`: expected {expected}, found {found}")]
    Layout {
        /// The node.
        node: String,
        /// The layout the kernel needs.
        expected: String,
        /// The layout it has.
        found: String,
    },
    /// The graph has no input.
    #[error("the graph has no input node")]
    NoInput,
    /// `--inject-fault` names no fused convolution.
    #[error("--inject-fault: no fused convolution is named `{0}`")]
    NoSuchFault(String),
    /// A Cranelift setting was refused.
    #[error("Cranelift settings: {0}")]
    Settings(#[from] settings::SetError),
    /// Cranelift has no x86-64 backend.
    #[error("Cranelift target: {0}")]
    Target(#[from] cranelift_codegen::isa::LookupError),
    /// Cranelift could not compile a function.
    #[error("Cranelift: {0}")]
    Codegen(Box<cranelift_codegen::CodegenError>),
    /// Declaring, defining or finalizing a function or data failed.
    #[error("Cranelift module: {0}")]
    Module(Box<cranelift_module::ModuleError>),
    /// Compiling one kernel failed (Cranelift's verifier errors show with `{:?}`).
    #[error("kernel {kernel}: {source:?}")]
    Kernel {
        /// Its symbol name.
        kernel: String,
        /// Cranelift's error.
        source: Box<cranelift_module::ModuleError>,
    },
    /// The object file could not be written.
    #[error("writing the object file: {0}")]
    Object(#[from] cranelift_object::object::write::Error),
    /// iced-x86 refused a register tile's code.
    #[error("assembling the register tile {tile}: {source}")]
    Assembler {
        /// The tile's name.
        tile: String,
        /// The assembler's error.
        source: iced_x86::IcedError,
    },
    /// This precision has no kernels on this tier.
    #[error(
        "--precision {precision} needs --target-cpu x86-64-v4 (its tiles are AVX-512), not {tier}"
    )]
    Precision {
        /// The precision's name.
        precision: &'static str,
        /// The tier's name.
        tier: &'static str,
    },
    /// An int8 program without the u8 parameters of one of its feature maps.
    #[error("--precision int8: node `{0}` has no u8 parameters (calibrate the optimized graph)")]
    Uncalibrated(String),
    /// Two int8 values with different zero points share a buffer whose halo must hold one.
    #[error(
        "--precision int8: `{}` and `{}` share buffer {buffer}, whose halo a padded layer reads, \
         but their zero points differ ({} and {})",
        values[0], values[1], zeros[0], zeros[1]
    )]
    HaloZeroPoints {
        /// The buffer.
        buffer: String,
        /// Two of its values.
        values: [String; 2],
        /// Their zero points.
        zeros: [u8; 2],
    },
    /// AMX tiles cannot run in this process.
    #[error("{0}")]
    Amx(String),
    /// The description does not decode (a bug: it was just encoded).
    #[error("the model description does not decode: {0}")]
    Description(#[from] inceptc_runtime::desc::DescError),
}

impl From<cranelift_codegen::CodegenError> for CodegenError {
    fn from(e: cranelift_codegen::CodegenError) -> Self {
        CodegenError::Codegen(Box::new(e))
    }
}

impl From<cranelift_module::ModuleError> for CodegenError {
    fn from(e: cranelift_module::ModuleError) -> Self {
        CodegenError::Module(Box::new(e))
    }
}

/// The Cranelift ISA flags of the features Cranelift's code uses: x86-64-v3's, from the list the
/// runtime checks at start-up for every tier ([`inceptc_runtime::exec::features`]).
pub fn x86_flags() -> Vec<&'static str> {
    inceptc_runtime::exec::features(inceptc_runtime::exec::Tier::V3)
        .iter()
        .filter_map(|f| f.cranelift)
        .collect()
}

/// The target: x86-64 System V with [`x86_flags`]; position-independent when `pic` (objects for
/// executables), absolute for in-process code.
pub fn isa(pic: bool) -> Result<OwnedTargetIsa, CodegenError> {
    let mut shared = settings::builder();
    shared.set("opt_level", "none")?;
    shared.set("is_pic", if pic { "true" } else { "false" })?;
    shared.set("use_colocated_libcalls", "false")?;
    let mut builder = cranelift_codegen::isa::lookup_by_name("x86_64-unknown-linux-gnu")?;
    for flag in x86_flags() {
        builder.enable(flag)?;
    }
    Ok(builder.finish(settings::Flags::new(shared))?)
}

/// Declares and defines the kernel of every step in `module` (local functions named by
/// [`kernel_name`]) and the wide register tiles they call, calling `defined` after each kernel;
/// returns each step's function, `None` for the input step.
pub fn define_kernels<M: cranelift_module::Module>(
    module: &mut M,
    program: &Program,
    defined: &dyn Fn(),
) -> Result<Vec<Option<cranelift_module::FuncId>>, CodegenError> {
    let call_conv = module.isa().default_call_conv();
    let mut ctx = cranelift_codegen::Context::new();
    let mut ids = Vec::with_capacity(program.steps.len());
    let mut tiles: std::collections::BTreeMap<x86::TileFn, cranelift_module::FuncId> =
        Default::default();
    for (i, step) in program.steps.iter().enumerate() {
        let Some(kernel) = &step.kernel else {
            ids.push(None);
            continue;
        };
        let name = kernel_name(i, &step.nodes[0]);
        let id = module.declare_function(
            &name,
            cranelift_module::Linkage::Local,
            &emit::kernel_signature(call_conv),
        )?;
        let config = module.isa().frontend_config();
        let mut new_tiles = Vec::new();
        let mut failed = None;
        ctx.func = emit::function(kernel, config, i as u32, &mut |tile, func| {
            let id = match tiles.get(&tile) {
                Some(id) => *id,
                None => match module.declare_function(
                    &tile.name(tiles.len()),
                    cranelift_module::Linkage::Local,
                    &emit::tile_signature(&tile, call_conv),
                ) {
                    Ok(id) => {
                        tiles.insert(tile.clone(), id);
                        new_tiles.push((tile, id));
                        id
                    }
                    Err(e) => {
                        failed.get_or_insert(e.into());
                        // A name only; the error below stops the compilation before it is used.
                        return emit::import_tile(func, 1, 0, &tile, call_conv);
                    }
                },
            };
            module.declare_func_in_func(id, func)
        });
        if let Some(e) = failed {
            return Err(e);
        }
        for (tile, id) in new_tiles {
            let code = tile.code().map_err(|source| CodegenError::Assembler {
                tile: tile.name(0),
                source,
            })?;
            module.define_function_bytes(id, 64, &code, &[])?;
        }
        module
            .define_function(id, &mut ctx)
            .map_err(|source| CodegenError::Kernel {
                kernel: name,
                source: Box::new(source),
            })?;
        module.clear_context(&mut ctx);
        ids.push(Some(id));
        defined();
    }
    Ok(ids)
}

/// The description an executable carries for `program` (see [`inceptc_runtime::desc`]).
pub fn describe(
    program: &Program,
    model: &str,
    preprocess: inceptc_runtime::desc::Preprocess,
    output_kind: inceptc_runtime::desc::OutputKind,
) -> inceptc_runtime::desc::ModelDesc {
    use inceptc_runtime::desc::{ModelDesc, StepDesc};
    ModelDesc {
        model: model.to_string(),
        batch: program.batch,
        image: program.image,
        preprocess,
        output_kind,
        arena_bytes: program.arena_bytes,
        // bf16 code stores its weights as the bf16 it packs them to, every parameter alike.
        weights_dtype: match program.precision {
            inceptc_runtime::layout::Precision::F32 => Default::default(),
            // int8 code stores its weight codes as bytes, its requantization tables as f32.
            inceptc_runtime::layout::Precision::U8 => inceptc_runtime::desc::WeightsDtype::Int8 {
                codes: program.codes,
            },
            inceptc_runtime::layout::Precision::Bf16 => inceptc_runtime::desc::WeightsDtype::Bf16,
        },
        tier: program.tier.runtime(),
        precision: program.precision,
        amx: program.amx,
        input: program.input,
        outputs: program.outputs.clone(),
        blocks: program.blocks.clone(),
        steps: program
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepDesc {
                name: kernel_name(i, &s.nodes[0]),
                has_kernel: s.kernel.is_some(),
                items: s.kernel.as_ref().map_or(0, |k| k.items()),
                block: s.block,
                clear_halos: s.clear_halos.clone(),
                joins: s.joins,
            })
            .collect(),
        guards: program.guards.clone(),
        segments: program.segments.clone(),
        packed_bytes: program.packed_bytes,
    }
}

/// A symbol-safe name for step `index` running `node`: `k<index>_<node with dots as _>`.
pub fn kernel_name(index: usize, node: &str) -> String {
    let clean: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("k{index}_{clean}")
}

#[cfg(test)]
mod tests {
    /// Every CPU feature Cranelift's ISA is built with is one the executable's start-up check
    /// tests (the assembled tiles' are checked in `x86`'s tests).
    #[test]
    fn cranelift_uses_only_features_the_start_up_check_tests() {
        let isa = super::isa(true).unwrap();
        let checked: Vec<&str> = inceptc_runtime::exec::features(inceptc_runtime::exec::Tier::V3)
            .iter()
            .filter_map(|f| f.cranelift)
            .collect();
        let mut enabled = Vec::new();
        for flag in isa.isa_flags() {
            if flag.name.starts_with("has_") && flag.as_bool() == Some(true) {
                enabled.push(flag.name);
                assert!(
                    checked.contains(&flag.name),
                    "Cranelift's ISA has {} on, which the start-up check does not test",
                    flag.name
                );
            }
        }
        assert_eq!(
            enabled.len(),
            checked.len(),
            "{enabled:?} against {checked:?}"
        );
    }
}
