//! The object file of a compiled network: every kernel as a local function, the stored weights
//! (64-byte aligned, read-only; the runtime packs them at start-up), the model description, and the kernel table the runtime calls
//! through. Exported symbols: `inceptc_desc` / `inceptc_desc_len`, `inceptc_weights` /
//! `inceptc_weights_len`, `inceptc_kernels` (one pointer per step, null for the input step), and
//! for executables `main`, which calls the runtime's `inceptc_main`.

use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, DataDescription, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use inceptc_runtime::desc::ModelDesc;

use super::{define_kernels, emit, isa, kernel_name, CodegenError, Program};

/// Defines read-only data `name` holding `bytes`, aligned to `align`.
fn data(
    module: &mut ObjectModule,
    name: &str,
    bytes: Vec<u8>,
    align: u64,
) -> Result<(), CodegenError> {
    let id = module.declare_data(name, Linkage::Export, false, false)?;
    let mut d = DataDescription::new();
    d.define(bytes.into_boxed_slice());
    d.set_align(align);
    Ok(module.define_data(id, &d)?)
}

/// Defines `main(argc, argv)` calling the runtime's `inceptc_main(argc, argv)`.
fn entry_point(module: &mut ObjectModule) -> Result<(), CodegenError> {
    let call_conv = module.isa().default_call_conv();
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(types::I32));
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I32));
    let runtime_main = module.declare_function("inceptc_main", Linkage::Import, &sig)?;
    let main = module.declare_function("main", Linkage::Export, &sig)?;
    let mut ctx = Context::new();
    ctx.func = Function::with_name_signature(UserFuncName::user(1, 0), sig);
    let callee = module.declare_func_in_func(runtime_main, &mut ctx.func);
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let args = b.block_params(block).to_vec();
        let call = b.ins().call(callee, &args);
        let code = b.inst_results(call)[0];
        b.ins().return_(&[code]);
        b.seal_all_blocks();
        b.finalize(module.isa().frontend_config());
    }
    Ok(module.define_function(main, &mut ctx)?)
}

/// The object's bytes (ELF, x86-64, position-independent); with `entry`, it also defines the
/// executable's `main`. `defined` is called after each kernel is compiled (progress).
pub fn object(
    program: &Program,
    desc: &ModelDesc,
    entry: bool,
    defined: &dyn Fn(),
) -> Result<Vec<u8>, CodegenError> {
    let builder = ObjectBuilder::new(isa(true)?, "inceptc_model", default_libcall_names())?;
    let mut module = ObjectModule::new(builder);
    let functions = define_kernels(&mut module, program, defined)?;

    let table = module.declare_data("inceptc_kernels", Linkage::Export, false, false)?;
    let mut d = DataDescription::new();
    // Explicit zeros, not zero-init: relocations in .bss would be dropped.
    d.define(vec![0u8; 8 * functions.len().max(1)].into_boxed_slice());
    d.set_align(8);
    for (i, f) in functions.iter().enumerate() {
        if let Some(f) = f {
            let r = module.declare_func_in_data(*f, &mut d);
            d.write_function_addr((8 * i) as u32, r);
        }
    }
    module.define_data(table, &d)?;

    let encoded = desc.encode();
    let len = (encoded.len() as u64).to_le_bytes().to_vec();
    data(&mut module, "inceptc_desc", encoded, 8)?;
    data(&mut module, "inceptc_desc_len", len, 8)?;
    // The stored weights; the runtime packs them at start-up (see `inceptc_runtime::pack`).
    let stored: Vec<u8> = program
        .stored
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let weights = desc.weights_dtype.encode(stored);
    let wlen = (weights.len() as u64).to_le_bytes().to_vec();
    data(&mut module, "inceptc_weights", weights, 64)?;
    data(&mut module, "inceptc_weights_len", wlen, 8)?;
    if entry {
        entry_point(&mut module)?;
    }
    Ok(module.finish().emit()?)
}

/// What [`listing`] prints for each kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Cranelift IR, as generated.
    Clif,
    /// The x86-64 machine code Cranelift emits (its VCode disassembly).
    Asm,
}

/// The Cranelift IR or machine code of every kernel, one text per step that has a kernel: (file
/// stem, text). Each text starts with comments naming the step's nodes and block.
pub fn listing(program: &Program, what: Listing) -> Result<Vec<(String, String)>, CodegenError> {
    let isa = isa(true)?;
    let mut out = Vec::new();
    for (i, step) in program.steps.iter().enumerate() {
        let Some(kernel) = &step.kernel else { continue };
        // Assembled tiles are imported by name only (their machine code is not Cranelift's).
        let mut tiles: Vec<super::x86::TileFn> = Vec::new();
        let func = emit::function(
            kernel,
            isa.frontend_config(),
            i as u32,
            &mut |tile, func| {
                let index = match tiles.iter().position(|t| *t == tile) {
                    Some(i) => i,
                    None => {
                        tiles.push(tile.clone());
                        tiles.len() - 1
                    }
                };
                emit::import_tile(func, 1, index as u32, &tile, isa.default_call_conv())
            },
        );
        let mut text = format!(
            "; step {i} of {}, block {}\n; nodes: {}\n; work items: {}\n",
            program.name,
            program.blocks[step.block],
            step.nodes.join(", "),
            kernel.items()
        );
        for (n, tile) in tiles.iter().enumerate() {
            text.push_str(&format!(
                "; u1:{n} is the register tile {} (assembled by inceptc, see codegen/x86/)\n",
                tile.name(n)
            ));
        }
        match what {
            Listing::Clif => text.push_str(&func.display().to_string()),
            Listing::Asm => {
                let mut ctx = Context::for_function(func);
                ctx.set_disasm(true);
                let code = ctx
                    .compile(&*isa, &mut Default::default())
                    .map_err(|e| CodegenError::from(e.inner))?;
                text.push_str(code.vcode.as_deref().unwrap_or_default());
                for (n, tile) in tiles.iter().enumerate() {
                    let code = tile.code().map_err(|source| CodegenError::Assembler {
                        tile: tile.name(n),
                        source,
                    })?;
                    text.push_str(&format!("\n; u1:{n}: {}\n", tile.name(n)));
                    text.push_str(&super::x86::disassemble(&code));
                }
            }
        }
        out.push((kernel_name(i, &step.nodes[0]), text));
    }
    Ok(out)
}
