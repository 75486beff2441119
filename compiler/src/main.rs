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
use inceptc_runtime::resample::Filter;

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
        #[arg(long)]
        image_size: Option<usize>,
        /// Batch size.
        #[arg(long, default_value_t = 1)]
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
        #[arg(long)]
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
    #[command(after_help = "Example:\n  inceptc plan --model inception-resnet-v2 --batch 8")]
    Plan {
        #[command(flatten)]
        model: ModelArgs,
        /// Input height and width (default: the model's own).
        #[arg(long)]
        image_size: Option<usize>,
        /// Batch size planned beside batch 1.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// List every buffer, not only the totals.
        #[arg(long)]
        buffers: bool,
    },
    /// Compile a network and its weights into a standalone executable (or its object, or the
    /// Cranelift IR of every kernel).
    #[command(
        after_help = "Example:\n  inceptc compile --model inception-v4 --weights inception_v4.safetensors -o v4\n  ./v4 cat.jpg\n  ./v4 --input x.npy --output y.npy\n  ./v4 --bench --runs 20\n  inceptc compile --model inception-v4 --emit clif -o v4-clif/\n  inceptc compile --model inception-v4 --emit lib -o v4-lib/   # object, runtime library, C header\n  inceptc compile --model inception-resnet-v1 --image-size 75 --check-bounds -o v1-checked\n  inceptc compile --model inception-v4 --report -o v4   # per kernel: algorithm, tile, predicted time"
    )]
    Compile {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch size the executable runs.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Input height and width (default: the model's own).
        #[arg(long)]
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
        /// How the executable stores the weights: f32, or f16 at half the size (converted to f32
        /// once at start-up; results change by about f16's precision).
        #[arg(long, value_enum, default_value_t = WeightsArg::F32)]
        weights_dtype: WeightsArg,
        /// How images are resized (timm's `interpolation`; the networks' own is bicubic): set
        /// it to what your checkpoint's pretrained config says. Not for inception-resnet-v1,
        /// whose face crops are resized bilinear as facenet-pytorch does.
        #[arg(long, value_enum)]
        interpolation: Option<InterpolationArg>,
        /// Print every kernel: operation, algorithm and register tile, work items, FLOPs and the
        /// time a cost model predicts for one core.
        #[arg(long)]
        report: bool,
        /// How convolutions are computed: per layer whichever the cost model predicts faster
        /// (auto), direct everywhere, or Winograd wherever a tile applies (stride 1, 3- or 7-tap
        /// kernels, input channels a multiple of 4). --report shows the choice.
        #[arg(long, value_enum, default_value_t = ConvArg::Auto)]
        conv: ConvArg,
        /// The CPUs the code is for: this machine's best tier (native), x86-64-v4 (AVX-512
        /// register tiles) or x86-64-v3 (AVX2 and FMA, for older servers). The executable checks
        /// at start-up that the CPU has every feature of its tier.
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

#[derive(Args)]
struct PassArgs {
    /// Run the pipeline up to and including this pass first (see `inceptc passes`).
    #[arg(long)]
    after: Option<String>,
    /// Print what each pass did (nodes before and after, rewrites, time) to standard error.
    #[arg(long)]
    stats: bool,
}

impl PassArgs {
    /// Whether `--after` runs the pipeline through the pass `name`.
    fn reached(&self, name: &str) -> bool {
        let position = |n: &str| inceptc::passes::PIPELINE.iter().position(|p| p.name == n);
        match (self.after.as_deref().and_then(position), position(name)) {
            (Some(after), Some(pass)) => after >= pass,
            _ => false,
        }
    }

    /// Runs the pipeline up to `--after` (nothing without it) and prints `--stats`.
    fn apply(&self, graph: &mut Graph) -> Result<()> {
        let Some(after) = &self.after else {
            return Ok(());
        };
        if inceptc::passes::find(after).is_none() {
            bail!(
                "there is no pass `{after}`; the pipeline is: {}",
                inceptc::passes::names()
            );
        }
        let reports = inceptc::passes::run_pipeline(graph, Some(after))?;
        if self.stats {
            print_stats(&reports);
        }
        Ok(())
    }
}

fn print_stats(reports: &[inceptc::passes::PassReport]) {
    eprintln!(
        "{:<24} {:>8} {:>8} {:>9} {:>10}",
        "pass", "before", "after", "rewrites", "time"
    );
    for r in reports {
        eprintln!(
            "{:<24} {:>8} {:>8} {:>9} {:>8.1}ms",
            r.pass,
            r.nodes_before,
            r.nodes_after,
            r.rewrites,
            r.elapsed.as_secs_f64() * 1e3
        );
    }
}

#[derive(Args)]
struct ModelArgs {
    /// The network.
    #[arg(long, value_enum)]
    model: ModelArg,
    /// A safetensors file with the model's PyTorch state_dict (default: seeded weights).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed of the generated weights when no --weights is given.
    #[arg(long, default_value_t = inceptc_ir::init::DEFAULT_SEED)]
    seed: u64,
    /// inception-resnet-v1: output facenet's `logits` classifier instead of the embedding.
    #[arg(long)]
    classify: bool,
    /// Classes of the classifier with seeded weights (a checkpoint's classifier decides otherwise).
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelArg {
    #[value(name = "inception-v4")]
    InceptionV4,
    #[value(name = "inception-resnet-v1")]
    InceptionResnetV1,
    #[value(name = "inception-resnet-v2")]
    InceptionResnetV2,
    #[value(name = "inception-resnet-v2-paper")]
    InceptionResnetV2Paper,
}

impl From<ModelArg> for Model {
    fn from(m: ModelArg) -> Model {
        match m {
            ModelArg::InceptionV4 => Model::InceptionV4,
            ModelArg::InceptionResnetV1 => Model::InceptionResnetV1,
            ModelArg::InceptionResnetV2 => Model::InceptionResnetV2,
            ModelArg::InceptionResnetV2Paper => Model::InceptionResnetV2Paper,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Emit {
    Exe,
    Obj,
    Lib,
    Clif,
    Asm,
}

/// `--target-cpu`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetCpu {
    Native,
    #[value(name = "x86-64-v4")]
    X86_64V4,
    #[value(name = "x86-64-v3")]
    X86_64V3,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConvArg {
    Auto,
    Direct,
    Winograd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Dot,
}

impl ModelArgs {
    fn model(&self) -> Model {
        self.model.into()
    }

    fn load(&self) -> Result<Graph> {
        let options = Options {
            classify: self.classify,
            num_classes: self.num_classes,
        };
        let weights = match &self.weights {
            Some(path) => Weights::File(path),
            None => Weights::Seeded(self.seed),
        };
        log::info!(
            "building {} ({})",
            self.model(),
            match &self.weights {
                Some(p) => format!("weights {}", p.display()),
                None => format!("seeded weights, seed {}", self.seed),
            }
        );
        let graph = inceptc_graphs::load(self.model(), weights, &options)?;
        inceptc_ir::verify(&graph)
            .with_context(|| format!("the {} graph is malformed", self.model()))?;
        Ok(graph)
    }
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
            interpolation,
            report,
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
                    TargetCpu::X86_64V4 => Tier::V4,
                    TargetCpu::X86_64V3 => Tier::V3,
                },
            };
            let target = Target {
                emit,
                output,
                report,
                weights_dtype: match weights_dtype {
                    WeightsArg::F32 => WeightsDtype::F32,
                    WeightsArg::F16 => WeightsDtype::F16,
                },
                interpolation: interpolation.map(|i| match i {
                    InterpolationArg::Bicubic => Filter::Bicubic,
                    InterpolationArg::Bilinear => Filter::Bilinear,
                }),
            };
            compile(&model, batch, image_size, &target, &options, quiet)
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

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn info(args: &ModelArgs, image_size: Option<usize>, batch: usize) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let graph = args.load()?;
    let size = image_size.unwrap_or(args.model().default_image_size());
    let shapes = infer_shapes(&graph, batch, size, size)
        .with_context(|| format!("{} at {size}×{size}", args.model()))?;
    let stats = inceptc_ir::stats::block_stats(&graph, &shapes);
    let total_macs: u64 = stats.iter().map(|s| s.macs).sum();
    let conv_macs = inceptc_ir::stats::conv_macs(&graph, &shapes);
    let output = graph.outputs().first().and_then(|o| shapes.get(o));
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "model        {}", args.model());
    let _ = writeln!(
        out,
        "weights      {}",
        match &args.weights {
            Some(p) => p.display().to_string(),
            None => format!("seeded (seed {})", args.seed),
        }
    );
    let _ = writeln!(
        out,
        "input        [{batch}, 3, {size}, {size}] float32 NCHW"
    );
    let _ = writeln!(
        out,
        "output       {} {}",
        output.map(|s| s.to_string()).unwrap_or_default(),
        args.model().output_kind(args.classify)
    );
    let _ = writeln!(out, "parameters   {}", group(graph.trainable_parameters()));
    let _ = writeln!(out, "nodes        {}", graph.len());
    let _ = writeln!(
        out,
        "MACs         {} ({:.2} GMAC; convolutions {:.2} GMAC)",
        group(total_macs),
        total_macs as f64 / 1e9,
        conv_macs as f64 / 1e9
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>22} {:>14} {:>16}",
        "block", "output", "parameters", "MACs"
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "{:<24} {:>22} {:>14} {:>16}",
            s.block,
            s.output.map(|o| o.to_string()).unwrap_or_default(),
            group(s.parameters),
            group(s.macs)
        );
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// How `dump` renders a graph.
struct View<'a> {
    format: Format,
    block: Option<&'a str>,
    image_size: Option<usize>,
}

impl View<'_> {
    fn extension(&self) -> &'static str {
        match self.format {
            Format::Text => "txt",
            Format::Dot => "dot",
        }
    }

    /// The graph as text or DOT, with shapes at the view's image size (batch 1); DOT of a graph
    /// that has been through plan-memory also gives each node's place in the arena.
    fn render(&self, args: &ModelArgs, graph: &Graph, planned: bool) -> Result<String> {
        if let Some(b) = self.block {
            if !graph.blocks().iter().any(|x| x == b) {
                bail!(
                    "{} has no block `{b}`; its blocks are: {}",
                    args.model(),
                    graph.blocks().join(", ")
                );
            }
        }
        let size = self.image_size.unwrap_or(args.model().default_image_size());
        let shapes = infer_shapes(graph, 1, size, size)
            .with_context(|| format!("{} at {size}×{size}", args.model()))?;
        Ok(match self.format {
            Format::Text => inceptc_ir::text::print_with(
                graph,
                &PrintOptions {
                    shapes: Some(&shapes),
                    block: self.block,
                },
            ),
            Format::Dot => {
                let notes = if planned {
                    let plan = inceptc::plan::plan(graph, 1, size, size)?;
                    Some(arena_notes(&plan))
                } else {
                    None
                };
                inceptc_ir::dot::to_dot(graph, Some(&shapes), notes.as_ref(), self.block)
            }
        })
    }
}

/// One line per node: where in the arena it writes.
fn arena_notes(plan: &inceptc::plan::MemoryPlan) -> HashMap<NodeId, String> {
    plan.placements
        .iter()
        .map(|(id, p)| {
            let b = &plan.buffers[p.buffer];
            let note = if p.channels == b.shape.channels() {
                format!(
                    "arena @{} ({} B)",
                    group(b.offset as u64),
                    group(b.bytes as u64)
                )
            } else {
                format!(
                    "arena @{} ch {}..{} of {}",
                    group(b.offset as u64),
                    p.channel_offset,
                    p.channel_offset + p.channels,
                    b.shape.channels()
                )
            };
            (*id, note)
        })
        .collect()
}

fn dump(args: &ModelArgs, passes: &PassArgs, view: &View, output: Option<&Path>) -> Result<()> {
    let mut graph = args.load()?;
    passes.apply(&mut graph)?;
    let planned = passes.reached("plan-memory");
    let text = view.render(args, &graph, planned)?;
    match output {
        Some(path) => write_atomically(path, text.as_bytes()),
        None => Ok(std::io::stdout().write_all(text.as_bytes())?),
    }
}

/// Writes the graph before the pipeline and after each pass into `dir`, one file each.
fn dump_all_passes(args: &ModelArgs, view: &View, dir: &Path) -> Result<()> {
    let mut graph = args.load()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ext = view.extension();
    let mut files = vec![(
        dir.join(format!("00-input.{ext}")),
        view.render(args, &graph, false)?,
    )];
    for (i, pass) in inceptc::passes::PIPELINE.iter().enumerate() {
        inceptc::passes::run_pass(pass, &mut graph)?;
        let planned = pass.name == "plan-memory";
        files.push((
            dir.join(format!("{:02}-{}.{ext}", i + 1, pass.name)),
            view.render(args, &graph, planned)?,
        ));
    }
    for (path, text) in &files {
        write_atomically(path, text.as_bytes())?;
    }
    log::info!("wrote {} files to {}", files.len(), dir.display());
    Ok(())
}

fn plan(args: &ModelArgs, image_size: Option<usize>, batch: usize, buffers: bool) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut graph = args.load()?;
    inceptc::passes::run_pipeline(&mut graph, None)?;
    let size = image_size.unwrap_or(args.model().default_image_size());
    let mut batches = vec![1];
    if batch > 1 {
        batches.push(batch);
    }
    let mut out = String::new();
    for n in batches {
        let plan = inceptc::plan::plan(&graph, n, size, size)
            .with_context(|| format!("{} at batch {n}, {size}×{size}", args.model()))?;
        if let Some((a, b)) = plan.overlapping_buffers() {
            bail!(
                "internal error: buffers `{}` and `{}` overlap while both are live",
                a.name,
                b.name
            );
        }
        if buffers {
            out.push_str(&plan.to_string());
        } else {
            out.push_str(plan.to_string().lines().last().unwrap_or_default());
            out.push('\n');
        }
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// How images become input for `model` (DESIGN.md §4).
fn preprocess(model: Model) -> Preprocess {
    // timm's pretrained configurations of these models: bicubic, Inception mean and std.
    let timm = |crop_pct| Preprocess::Timm {
        crop_pct,
        interpolation: Filter::Bicubic,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    match model {
        Model::InceptionV4 => timm(0.875),
        Model::InceptionResnetV2 | Model::InceptionResnetV2Paper => timm(0.8975),
        Model::InceptionResnetV1 => Preprocess::Facenet,
    }
}

fn compile(
    args: &ModelArgs,
    batch: usize,
    image_size: Option<usize>,
    target: &Target,
    options: &inceptc::codegen::LowerOptions,
    quiet: bool,
) -> Result<()> {
    let (emit, output) = (target.emit, target.output.as_path());
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let start = Instant::now();
    let progress = Progress::new(quiet);
    progress.stage(match args.weights {
        Some(_) => "loading and binding the weights",
        None => "building the graph with seeded weights",
    });
    let mut graph = args.load()?;
    let size = image_size.unwrap_or(args.model().default_image_size());
    infer_shapes(&graph, batch, size, size)
        .with_context(|| format!("{} at {size}×{size}", args.model()))?;
    let loaded = start.elapsed();
    progress.stage("running the passes and planning memory");
    inceptc::passes::run_pipeline(&mut graph, None)?;
    let program = inceptc::codegen::Program::with_options(&graph, batch, size, size, options)
        .with_context(|| format!("lowering {}", args.model()))?;
    let lowered = start.elapsed();
    if target.report {
        progress.stage("reporting");
        print!("{}", inceptc::codegen::cost::table(&program));
    }
    match emit {
        Emit::Clif | Emit::Asm => {
            use inceptc::codegen::object::{listing, Listing};
            let (what, ext) = match emit {
                Emit::Clif => (Listing::Clif, "clif"),
                _ => (Listing::Asm, "s"),
            };
            std::fs::create_dir_all(output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let files = listing(&program, what)?;
            for (stem, text) in &files {
                write_atomically(&output.join(format!("{stem}.{ext}")), text.as_bytes())?;
            }
            log::info!("wrote {} kernels to {}", files.len(), output.display());
            return Ok(());
        }
        Emit::Obj | Emit::Exe | Emit::Lib => {}
    }
    let output_kind = match args.model().classifier(args.classify) {
        Some(_) => OutputKind::Logits,
        None => OutputKind::Embedding,
    };
    let mut preprocessing = preprocess(args.model());
    match (&mut preprocessing, target.interpolation) {
        (_, None) => {}
        (Preprocess::Timm { interpolation, .. }, Some(filter)) => *interpolation = filter,
        (Preprocess::Facenet, Some(_)) => bail!(
            "--interpolation is for the timm networks; {} resizes face crops bilinear, as \
             facenet-pytorch does",
            args.model().name()
        ),
    }
    let mut desc =
        inceptc::codegen::describe(&program, args.model().name(), preprocessing, output_kind);
    desc.weights_dtype = target.weights_dtype;
    let kernels = program.steps.iter().filter(|s| s.kernel.is_some()).count();
    progress.counted("generating code", kernels);
    let object =
        inceptc::codegen::object::object(&program, &desc, emit == Emit::Exe, &|| progress.tick())?;
    let generated = start.elapsed();
    progress.stage(match emit {
        Emit::Exe => "linking",
        _ => "writing",
    });
    match emit {
        Emit::Obj => inceptc::link::write_file(output, &object, 0o644)?,
        Emit::Lib => {
            let out_dims = match program.outputs[0] {
                inceptc_runtime::layout::Layout::Map(m) => vec![m.n, m.channels, m.h, m.w],
                inceptc_runtime::layout::Layout::Vector(v) => vec![v.n, v.features],
            };
            let header =
                inceptc::link::header(args.model().name(), [batch, 3, size, size], &out_dims);
            inceptc::link::library(&object, output, &header)?
        }
        _ => inceptc::link::link(&object, output)?,
    }
    let total = start.elapsed();
    drop(progress);
    log::info!(
        "load {:.2} s, passes + lowering {:.2} s, code generation {:.2} s, link {:.2} s",
        loaded.as_secs_f64(),
        (lowered - loaded).as_secs_f64(),
        (generated - lowered).as_secs_f64(),
        (total - generated).as_secs_f64()
    );
    if quiet {
        return Ok(());
    }
    eprintln!(
        "compiled {} for {} (batch {batch}, {size}×{size}, {kernels} kernels, arena {:.1} MiB, \
         weights {:.1} MiB, packed to {:.1} MiB at start-up) into {} in {:.1} s",
        args.model(),
        program.tier.name(),
        program.arena_bytes as f64 / (1 << 20) as f64,
        (program.stored.len() * target.weights_dtype.size()) as f64 / (1 << 20) as f64,
        program.packed_bytes as f64 / (1 << 20) as f64,
        output.display(),
        total.as_secs_f64()
    );
    Ok(())
}

/// What `compile` writes.
struct Target {
    emit: Emit,
    output: PathBuf,
    report: bool,
    weights_dtype: WeightsDtype,
    /// `--interpolation`, when given.
    interpolation: Option<Filter>,
}

/// `--interpolation`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InterpolationArg {
    Bicubic,
    Bilinear,
}

/// `--weights-dtype`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WeightsArg {
    F32,
    F16,
}

/// Progress of a long command on standard error: a spinner naming the stage, and a bar while
/// kernels are generated. Drawn only when standard error is a terminal and without `-q`; cleared
/// when dropped.
struct Progress(indicatif::ProgressBar);

impl Progress {
    /// The line of a stage without a count.
    const SPINNER: &'static str = "{spinner} {elapsed:>3} {msg}";

    fn new(quiet: bool) -> Progress {
        let target = match quiet {
            true => indicatif::ProgressDrawTarget::hidden(),
            false => indicatif::ProgressDrawTarget::stderr(),
        };
        let bar = indicatif::ProgressBar::with_draw_target(None, target);
        bar.set_style(Self::style(Self::SPINNER));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(bar)
    }

    fn style(template: &str) -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> ")
    }

    /// A new stage without a count.
    fn stage(&self, message: &'static str) {
        self.0.set_style(Self::style(Self::SPINNER));
        self.0.set_message(message);
    }

    /// A new stage of `len` steps, advanced by [`Progress::tick`].
    fn counted(&self, message: &'static str, len: usize) {
        self.0.set_style(Self::style(
            "{spinner} {elapsed:>3} {msg} [{bar:30}] {pos}/{len}",
        ));
        self.0.set_length(len as u64);
        self.0.set_position(0);
        self.0.set_message(message);
    }

    fn tick(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".inceptc-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn interpret(args: &ModelArgs, input: &Path, output: &Path, optimized: bool) -> Result<()> {
    let x = inceptc_runtime::npy::read_f32(input)?;
    if x.shape.len() != 4 || x.shape[1] != 3 || x.shape.contains(&0) {
        bail!(
            "{}: the input has shape {:?}; expected float32 NCHW [N, 3, H, W] with N, H, W ≥ 1",
            input.display(),
            x.shape
        );
    }
    let mut graph = args.load()?;
    if optimized {
        inceptc::passes::run_pipeline(&mut graph, None)?;
    }
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
    infer_shapes(&graph, n, h, w).with_context(|| {
        format!(
            "{}: {} cannot run at {h}×{w}",
            input.display(),
            args.model()
        )
    })?;
    let tensor =
        Tensor::new(x.shape.clone(), x.data).context("input size does not match its shape")?;
    log::info!("interpreting {} on {:?}", args.model(), tensor.shape());
    let outputs = inceptc_ir::interp::run(&graph, &tensor)?;
    let y = outputs.first().context("the graph has no output")?;
    inceptc_runtime::npy::write_f32(output, y.shape(), y.data())?;
    log::info!("wrote {} {:?}", output.display(), y.shape());
    Ok(())
}
