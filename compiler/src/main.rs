//! The `inceptc` command line: inspect a network (`info`), print its IR before or after any pass
//! (`dump`), list the pass pipeline (`passes`), print the memory plan (`plan`), run a network
//! with the reference interpreter (`interpret`) and compile it into an executable (`compile`).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use inceptc::codegen::tile::Tier;
use inceptc_graphs::{Model, Options, Weights};
use inceptc_ir::text::PrintOptions;
use inceptc_ir::{infer_shapes, Graph, NodeId, Tensor};
use inceptc_runtime::desc::{OutputKind, Preprocess, WeightsDtype};
use inceptc_runtime::layout::Precision;
use inceptc_runtime::resample::Filter;

mod cli;

use cli::{args::*, compile::*, dump::*, info::*, interpret::*};

#[derive(Parser)]
#[command(
    name = "inceptc",
    version,
    about = "Ahead-of-time compiler for the Inception family of image networks",
    after_help = "Example:\n  inceptc info --model inception-v4"
)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parameters, per-block multiply–accumulates and output shapes, input and output shapes.
    #[command(
        after_help = "Example:\n  inceptc info --model inception-resnet-v2 --image-size 299"
    )]
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Input height and width (default: the model's own).
        #[arg(long, value_parser = image_size)]
        image_size: Option<usize>,
        /// Batch size.
        #[arg(long, default_value_t = 1, value_parser = batch)]
        batch: usize,
    },
    /// Print the graph as IR text or Graphviz DOT.
    #[command(
        after_help = "Example:\n  inceptc dump --model inception-v4 --block inception_a.0 --after fold-batchnorm --stats\n  inceptc dump --model inception-v4 --format dot -o v4.dot && dot -Tsvg v4.dot -o v4.svg\n  inceptc dump --model inception-v4 --all-passes -o v4-passes/\n\nAfter plan-memory, DOT labels give each node's place in the arena (batch 1, --image-size)."
    )]
    Dump {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Print only this block (in DOT, with the values it reads from other blocks).
        #[arg(long)]
        block: Option<String>,
        /// Annotate values with their shapes at this input size (default: the model's own).
        #[arg(long, value_parser = image_size)]
        image_size: Option<usize>,
        /// Write here instead of standard output; with --all-passes, the directory to write into.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write the graph before the pipeline and after every pass, one file per pass
        /// (`00-input.txt`, `01-fold-batchnorm.txt`, …) into the directory given by -o.
        #[arg(long, conflicts_with = "after", requires = "output")]
        all_passes: bool,
        #[command(flatten)]
        passes: PassArgs,
    },
    /// Print the schedule's memory plan: every activation buffer with its arena offset, size and
    /// lifetime, the arena size and its lower bound, for batch 1 and --batch.
    ///
    /// The schedule runs the kernels level by level, each level's kernels of one block as a stage.
    /// `compile` may move a kernel that can wait into a later stage of its block, where the cost
    /// model predicts the stages faster (`compile --report` shows the stages it compiled); the
    /// buffers it touches then live longer than this plan shows.
    #[command(after_help = "Example:\n  inceptc plan --model inception-resnet-v2 --batch 8")]
    Plan {
        #[command(flatten)]
        model: ModelArgs,
        /// Input height and width (default: the model's own).
        #[arg(long, value_parser = image_size)]
        image_size: Option<usize>,
        /// Batch size planned beside batch 1.
        #[arg(long, default_value_t = 1, value_parser = batch)]
        batch: usize,
        /// List every buffer, not only the totals.
        #[arg(long)]
        buffers: bool,
    },
    /// Compile a network and its weights into a standalone executable (or its object, or the
    /// Cranelift IR of every kernel).
    #[command(
        after_help = "Example:\n  inceptc compile --model inception-v4 --weights inception_v4.safetensors -o v4\n  ./v4 cat.jpg\n  ./v4 --input x.npy --output y.npy\n  ./v4 --bench --runs 20\n  inceptc compile --model inception-v4 --emit clif -o v4-clif/\n  inceptc compile --model inception-v4 --emit lib -o v4-lib/   # object, runtime library, C header\n  inceptc compile --model inception-resnet-v1 --image-size 75 --check-bounds -o v1-checked\n  inceptc compile --model inception-v4 --report -o v4   # per kernel: algorithm, tile, predicted time\n  inceptc compile --model inception-v4 --weights inception_v4.safetensors --precision int8 --calibrate calibration-images/ -o v4-int8"
    )]
    Compile {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch size the executable runs.
        #[arg(long, default_value_t = 1, value_parser = batch)]
        batch: usize,
        /// Input height and width (default: the model's own).
        #[arg(long, value_parser = image_size)]
        image_size: Option<usize>,
        /// What to write: an executable; the object file; into the directory -o names, the
        /// object, the runtime library and a C header for embedding (lib), or one file per kernel
        /// with its Cranelift IR (clif) or machine code (asm).
        #[arg(long, value_enum, default_value_t = Emit::Exe)]
        emit: Emit,
        /// The output path.
        #[arg(short, long)]
        output: PathBuf,
        /// Debugging: canaries around every buffer of the arena, checked with the halos after
        /// every kernel; a kernel that writes out of bounds is named and the run fails.
        #[arg(long)]
        check_bounds: bool,
        /// How the executable stores the weights: f32 (the default), or f16 at half the size
        /// (converted to f32 once at start-up; results change by about f16's precision). bf16
        /// executables store bf16.
        #[arg(long, value_enum)]
        weights_dtype: Option<WeightsArg>,
        /// What the feature maps and weights are: f32, or bf16 (x86-64-v4 with AVX512-BF16):
        /// weights and activations rounded to bf16, products accumulated in f32, about half the
        /// executable's size. Input and output stay f32.
        /// int8 (x86-64-v4 with AVX512-VNNI): u8 feature maps with per-map scales from
        /// --calibrate, s8 weights per output channel, sums in i32, requantized in f32.
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
        /// With --precision int8 (required there): the inputs whose feature maps set the int8
        /// ranges, a directory of images (preprocessed as the executable does) or an .npy batch
        /// [N, 3, H, W] of preprocessed input.
        #[arg(long, value_name = "PATH")]
        calibrate: Option<PathBuf>,
        /// How calibration sets each feature map's range: its smallest and largest value
        /// (minmax), or its 0.01st and 99.99th percentiles, which ignore rare outliers.
        #[arg(long, value_enum, default_value_t = CalibrationArg::Minmax, requires = "calibrate")]
        calibration: CalibrationArg,
        /// How images are resized (timm's `interpolation`; the networks' own is bicubic): set
        /// it to what your checkpoint's pretrained config says. Not for inception-resnet-v1,
        /// whose face crops are resized bilinear as facenet-pytorch does.
        #[arg(long, value_enum)]
        interpolation: Option<InterpolationArg>,
        /// The most memory the executable may need (arena, weights, input), with a K, M, G or T
        /// suffix (binary); a compile that needs more is refused (default: this machine's
        /// memory). Raise it to build for a larger machine.
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        max_memory: Option<u64>,
        /// Print every kernel: operation, algorithm and register tile, work items, FLOPs and the
        /// time a cost model predicts for one core.
        #[arg(long)]
        report: bool,
        /// The thread count the work splits are made for: above 2, kernels with few work items
        /// (Winograd convolutions over small maps) split into more, smaller ones, where the
        /// cost model predicts it faster on that many threads. With --report, also predict each
        /// kernel's time on this many threads and per block the parallel efficiency. The
        /// executable's own --threads still chooses how many run, every count giving the same
        /// output bits (a split may pick another Winograd tile: within rounding of the default).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = threads)]
        threads: usize,
        /// How convolutions are computed: per layer whichever the cost model predicts faster
        /// (auto), direct everywhere, or Winograd wherever a tile applies (stride 1, 3- or 7-tap
        /// kernels, input channels a multiple of 4). --report shows the choice.
        #[arg(long, value_enum, default_value_t = ConvArg::Auto)]
        conv: ConvArg,
        /// The CPUs the code is for: this machine's best tier (native), x86-64-v4 (AVX-512
        /// register tiles), sapphirerapids (x86-64-v4 and, with --precision bf16 or int8, AMX tiles) or
        /// x86-64-v3 (AVX2 and FMA, for older servers). The executable checks at start-up that
        /// the CPU has every feature of its tier.
        #[arg(long, value_enum, default_value_t = TargetCpu::Native)]
        target_cpu: TargetCpu,
        /// Test-only: make the named convolution write one pixel too far (see --check-bounds).
        #[arg(long, hide = true, value_name = "NODE")]
        inject_fault: Option<String>,
    },
    /// List the optimization pipeline, one line per pass.
    #[command(after_help = "Example:\n  inceptc passes")]
    Passes,
    /// Run the network on an .npy tensor with the reference interpreter.
    #[command(
        after_help = "Example:\n  inceptc interpret --model inception-v4 --weights inception_v4.safetensors --input x.npy --output y.npy\n\nx.npy is float32 NCHW [N, 3, S, S]; y.npy is float32 [N, K]: logits, or the embedding of inception-resnet-v1."
    )]
    Interpret {
        #[command(flatten)]
        model: ModelArgs,
        /// Input tensor: float32 [N, 3, H, W].
        #[arg(long)]
        input: PathBuf,
        /// Where to write the output tensor (float32 [N, K]).
        #[arg(long)]
        output: PathBuf,
        /// Run the graph after the whole optimization pipeline instead of the original.
        #[arg(long)]
        optimized: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, _) => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("INCEPTC_LOG")
        .init();
    match run(cli.command, cli.quiet) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, quiet: bool) -> Result<()> {
    match command {
        Command::Info {
            model,
            image_size,
            batch,
        } => info(&model, image_size, batch),
        Command::Dump {
            model,
            format,
            block,
            image_size,
            output,
            all_passes,
            passes,
        } => {
            let view = View {
                format,
                block: block.as_deref(),
                image_size,
            };
            match (all_passes, output) {
                (true, Some(dir)) => dump_all_passes(&model, &view, &dir),
                (_, output) => dump(&model, &passes, &view, output.as_deref()),
            }
        }
        Command::Plan {
            model,
            image_size,
            batch,
            buffers,
        } => plan(&model, image_size, batch, buffers),
        Command::Compile {
            model,
            batch,
            image_size,
            emit,
            output,
            check_bounds,
            weights_dtype,
            precision,
            calibrate,
            calibration,
            interpolation,
            max_memory,
            report,
            threads,
            conv,
            target_cpu,
            inject_fault,
        } => {
            let options = inceptc::codegen::LowerOptions {
                check_bounds,
                inject_fault,
                conv: match conv {
                    ConvArg::Auto => inceptc::codegen::ConvAlgorithm::Auto,
                    ConvArg::Direct => inceptc::codegen::ConvAlgorithm::Direct,
                    ConvArg::Winograd => inceptc::codegen::ConvAlgorithm::Winograd,
                },
                tier: match target_cpu {
                    TargetCpu::Native => Tier::native(),
                    TargetCpu::X86_64V4 | TargetCpu::Sapphirerapids => Tier::V4,
                    TargetCpu::X86_64V3 => Tier::V3,
                },
                amx: match target_cpu {
                    // AMX where this CPU has it and its kernel grants the tile-data permission.
                    // int8 tiles need AMX-INT8 too.
                    TargetCpu::Native => {
                        inceptc_runtime::exec::amx_present()
                            && (precision != PrecisionArg::Int8
                                || inceptc_runtime::exec::amx_int8_present())
                            && inceptc_runtime::exec::enable_amx().is_ok()
                    }
                    TargetCpu::Sapphirerapids => true,
                    TargetCpu::X86_64V4 | TargetCpu::X86_64V3 => false,
                },
                precision: match precision {
                    PrecisionArg::F32 => Precision::F32,
                    PrecisionArg::Bf16 => Precision::Bf16,
                    PrecisionArg::Int8 => Precision::U8,
                },
                // Set from --calibrate once the graph is optimized.
                int8: Default::default(),
                threads,
                winograd_parts: None,
                item_order: None,
                keep_levels: false,
            };
            match (options.precision, &calibrate) {
                (Precision::U8, None) => bail!(
                    "--precision int8 needs --calibrate PATH: a directory of images or an .npy \
                     batch [N, 3, H, W] whose feature maps set the int8 ranges"
                ),
                (Precision::F32 | Precision::Bf16, Some(_)) => {
                    bail!("--calibrate is for --precision int8")
                }
                _ => {}
            }
            let weights_dtype = match (weights_dtype, options.precision) {
                (None | Some(WeightsArg::F32), Precision::F32) => WeightsDtype::F32,
                (Some(WeightsArg::F16), Precision::F32) => WeightsDtype::F16,
                (None, Precision::Bf16) => WeightsDtype::Bf16,
                (Some(_), Precision::Bf16) => {
                    bail!("--weights-dtype: a bf16 executable stores its weights as bf16")
                }
                (None, Precision::U8) => WeightsDtype::F32,
                (Some(_), Precision::U8) => {
                    bail!("--weights-dtype: an int8 executable stores its weight codes itself")
                }
            };
            let target = Target {
                emit,
                output,
                report,
                report_threads: threads,
                weights_dtype,
                calibrate: calibrate.map(|path| {
                    let method = match calibration {
                        CalibrationArg::Minmax => inceptc_ir::quant::Calibration::MinMax,
                        CalibrationArg::Percentile => inceptc_ir::quant::Calibration::Percentile,
                    };
                    (path, method)
                }),
                max_memory,
                interpolation: interpolation.map(|i| match i {
                    InterpolationArg::Bicubic => Filter::Bicubic,
                    InterpolationArg::Bilinear => Filter::Bilinear,
                }),
            };
            // An interrupted or failed compile leaves no file behind.
            inceptc::interrupt::install().context("cannot handle interruptions")?;
            inceptc::interrupt::settle(compile(&model, batch, image_size, &target, &options, quiet))
        }
        Command::Passes => {
            for pass in inceptc::passes::PIPELINE {
                println!("{:<22} {}", pass.name, pass.summary);
            }
            Ok(())
        }
        Command::Interpret {
            model,
            input,
            output,
            optimized,
        } => interpret(&model, &input, &output, optimized),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
