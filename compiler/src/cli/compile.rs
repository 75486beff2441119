//! `inceptc compile`: an executable, its object, a library for embedding, or listings, with the
//! progress display and the atomic writes they share.

use crate::*;

/// How images become input for `model` (DESIGN.md §4).
pub(crate) fn preprocess(model: Model) -> Preprocess {
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

/// How the executable preprocesses images: the model's own, with `--interpolation`.
fn preprocessing(args: &ModelArgs, target: &Target) -> Result<Preprocess> {
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
    Ok(preprocessing)
}

/// The calibration inputs at `path`, one tensor `[1, C, H, W]` each: the images of a directory
/// (sorted by name; other files are an error), preprocessed with `how` at `size`, or the images
/// of an .npy batch `[N, C, H, W]`.
fn calibration_inputs(
    path: &Path,
    how: Preprocess,
    size: usize,
    graph: &inceptc_ir::Graph,
) -> Result<Vec<inceptc_ir::Tensor>> {
    let channels = graph
        .inputs_of_graph()
        .first()
        .and_then(|id| match &graph.node(*id).op {
            inceptc_ir::Op::Input(a) => Some(a.channels),
            _ => None,
        })
        .unwrap_or(3);
    let tensor = |data: Vec<f32>, h: usize, w: usize| {
        inceptc_ir::Tensor::new(vec![1, channels, h, w], data).expect("sized for its shape")
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("--calibrate: cannot read the directory {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("--calibrate: cannot read the directory {}", path.display())
            })?;
        files.retain(|f| f.is_file());
        files.sort();
        if files.is_empty() {
            bail!(
                "--calibrate: the directory {} has no images",
                path.display()
            );
        }
        return files
            .iter()
            .map(|f| {
                let img = inceptc_runtime::image::load(f)
                    .with_context(|| format!("--calibrate: {}", f.display()))?;
                let data = inceptc_runtime::image::preprocess(&img, how, [size, size]);
                Ok(tensor(data, size, size))
            })
            .collect();
    }
    let a = inceptc_runtime::npy::read_f32(path).context("--calibrate")?;
    let [n, c, h, w] = a.shape[..] else {
        bail!(
            "--calibrate: {} holds a tensor of shape {:?}, expected [N, {channels}, H, W]",
            path.display(),
            a.shape
        );
    };
    if c != channels || n == 0 || h == 0 || w == 0 {
        bail!(
            "--calibrate: {} holds a tensor of shape {:?}, expected [N, {channels}, H, W] with N, \
             H, W ≥ 1",
            path.display(),
            a.shape
        );
    }
    if let Some(bad) = a.data.iter().find(|v| !v.is_finite()) {
        bail!(
            "--calibrate: {} holds a non-finite value ({bad})",
            path.display()
        );
    }
    Ok(a.data
        .chunks(c * h * w)
        .map(|image| tensor(image.to_vec(), h, w))
        .collect())
}

/// Per block, the SQNR of its output and its worst convolution, and the network's outputs'.
fn sqnr_table(
    graph: &inceptc_ir::Graph,
    sqnr: &std::collections::HashMap<inceptc_ir::NodeId, f64>,
    inputs: usize,
) -> String {
    use std::fmt::Write;
    let order = graph.topo_order().unwrap_or_default();
    /// A block's name, its last value, and its worst convolution's SQNR and name.
    type Row = (String, Option<inceptc_ir::NodeId>, Option<(f64, String)>);
    let mut blocks: Vec<Row> = Vec::new();
    for id in order {
        let node = graph.node(id);
        if matches!(node.op, inceptc_ir::Op::Input(_)) {
            continue;
        }
        let Some(db) = sqnr.get(&id).copied() else {
            continue;
        };
        if blocks.last().is_none_or(|b| b.0 != node.block) {
            blocks.push((node.block.clone(), None, None));
        }
        let block = blocks.last_mut().expect("pushed");
        block.1 = Some(id);
        if matches!(node.op, inceptc_ir::Op::FusedConv(_))
            && block.2.as_ref().is_none_or(|(worst, _)| db < *worst)
        {
            block.2 = Some((db, node.name.clone()));
        }
    }
    let mut out = format!(
        "\nint8 SQNR against f32 over the {inputs} calibration input(s), in dB (signal power over \
         the power of the difference), at each value's output (errors accumulate from the \
         input):\n{:<28} {:>8}   worst convolution\n",
        "block", "output"
    );
    for (name, last, worst) in &blocks {
        let db = last
            .and_then(|id| sqnr.get(&id))
            .copied()
            .unwrap_or(f64::NAN);
        let worst = worst
            .as_ref()
            .map_or(String::new(), |(db, node)| format!("{db:>6.1}  {node}"));
        let _ = writeln!(out, "{name:<28} {db:>8.1}   {worst}");
    }
    for o in graph.outputs() {
        if let Some(db) = sqnr.get(o) {
            let _ = writeln!(
                out,
                "{:<28} {db:>8.1}",
                format!("output {}", graph.node(*o).name)
            );
        }
    }
    out
}

/// Compiles; every file is written through `inceptc::interrupt` workspaces.
pub(crate) fn compile(
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
    let preprocessing = preprocessing(args, target)?;
    let mut options = options.clone();
    if let Some((path, method)) = &target.calibrate {
        progress.stage("calibrating int8 ranges with the interpreter");
        let inputs = calibration_inputs(path, preprocessing, size, &graph)?;
        let ranges = inceptc_ir::quant::calibrate(&graph, &inputs, *method)
            .with_context(|| format!("calibrating on {}", path.display()))?;
        options.int8 = inceptc_ir::quant::Int8Params::new(&graph, &ranges)
            .with_context(|| format!("quantizing {}", args.model()))?;
        if target.report {
            progress.stage("measuring int8 SQNR against f32");
            let sqnr = inceptc_ir::quant::measure_sqnr(&graph, &inputs, &options.int8)
                .context("measuring the int8 SQNR")?;
            print!("{}", sqnr_table(&graph, &sqnr, inputs.len()));
        }
    }
    let program = inceptc::codegen::Program::with_options(&graph, batch, size, size, &options)
        .with_context(|| format!("lowering {}", args.model()))?;
    check_memory(&program, target.max_memory)?;
    let lowered = start.elapsed();
    if target.report {
        progress.stage("reporting");
        print!(
            "{}",
            inceptc::codegen::report::table(&program, target.report_threads)
        );
    }
    match emit {
        Emit::Clif | Emit::Asm => {
            use inceptc::codegen::object::{listing, Listing};
            let (what, ext) = match emit {
                Emit::Clif => (Listing::Clif, "clif"),
                _ => (Listing::Asm, "s"),
            };
            inceptc::interrupt::create_dir_all(output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let files = listing(&program, what)?;
            let work = inceptc::interrupt::Workspace::new_in(output)
                .with_context(|| format!("cannot write in {}", output.display()))?;
            for (stem, text) in &files {
                let path = output.join(format!("{stem}.{ext}"));
                inceptc::link::write_through(&work, &path, text.as_bytes(), 0o644)?;
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
    let mut desc =
        inceptc::codegen::describe(&program, args.model().name(), preprocessing, output_kind);
    // int8 code stores its weight codes as bytes (the description says how many); the others
    // as --weights-dtype or their precision says.
    if program.codes == 0 {
        desc.weights_dtype = target.weights_dtype;
    }
    let weights_dtype = desc.weights_dtype;
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
            let out_dims = program.outputs[0].dims();
            let header =
                inceptc::link::header(args.model().name(), [batch, 3, size, size], &out_dims);
            inceptc::link::library(&object, output, &header)?
        }
        _ => inceptc::link::link(&object, output)?,
    }
    // What linking added to the object: the runtime library and what it pulls in.
    let runtime = match emit {
        Emit::Exe => std::fs::metadata(output)
            .ok()
            .map(|m| m.len().saturating_sub(object.len() as u64)),
        _ => None,
    };
    if let (true, Some(bytes)) = (target.report, runtime) {
        println!(
            "runtime: {:.2} MiB of the executable beside the kernels and weights (the runtime \
             library: start-up, image decoding, the thread pool, --bench and its chart)",
            bytes as f64 / (1 << 20) as f64
        );
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
        "compiled {} for {}{} (batch {batch}, {size}×{size}, {kernels} kernels, arena {:.1} MiB, \
         weights {:.1} MiB, packed to {:.1} MiB at start-up{}) into {} in {:.1} s",
        args.model(),
        program.tier.name(),
        match (program.precision, program.amx) {
            (inceptc_runtime::layout::Precision::F32, _) => "",
            (inceptc_runtime::layout::Precision::Bf16, false) => " in bf16",
            (inceptc_runtime::layout::Precision::Bf16, true) => " in bf16 with AMX tiles",
            (inceptc_runtime::layout::Precision::U8, false) => " in int8",
            (inceptc_runtime::layout::Precision::U8, true) => " in int8 with AMX tiles",
        },
        program.arena_bytes as f64 / (1 << 20) as f64,
        weights_dtype.offset(program.stored.len()) as f64 / (1 << 20) as f64,
        program.packed_bytes as f64 / (1 << 20) as f64,
        runtime.map_or(String::new(), |b| format!(
            ", runtime {:.1} MiB",
            b as f64 / (1 << 20) as f64
        )),
        output.display(),
        total.as_secs_f64()
    );
    Ok(())
}

/// What `compile` writes.
pub(crate) struct Target {
    pub(crate) emit: Emit,
    pub(crate) output: PathBuf,
    pub(crate) report: bool,
    /// `--threads`: the thread count the report predicts for, besides one.
    pub(crate) report_threads: usize,
    pub(crate) weights_dtype: WeightsDtype,
    /// `--calibrate` and `--calibration` (int8).
    pub(crate) calibrate: Option<(PathBuf, inceptc_ir::quant::Calibration)>,
    /// `--interpolation`, when given.
    pub(crate) interpolation: Option<Filter>,
    /// `--max-memory`, when given.
    pub(crate) max_memory: Option<u64>,
}

/// A byte count with an optional binary suffix: `512`, `64K`, `1.5G`, `2T`.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{text:?}: the suffix is K, M, G or T")),
            };
            (&t[..i], scale)
        }
        _ => (t, 1),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes (e.g. 512, 64M, 1.5G)"))?;
    let bytes = value * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!(
            "{text:?}: expected at least 1 byte and at most 16 EiB"
        ));
    }
    Ok(bytes as u64)
}

/// This machine's physical memory, from /proc/meminfo (None where it cannot be read).
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Refuses a program whose executable would need more memory than `limit` (or, by default, than
/// this machine has): such an executable could only fail at start-up.
fn check_memory(program: &inceptc::codegen::Program, limit: Option<u64>) -> Result<()> {
    let input = program.batch * program.input.channels * program.image[0] * program.image[1] * 4;
    let weights = program.stored.len() * 4 + program.packed_bytes;
    let needed = (program.arena_bytes + input + weights) as u64;
    let (limit, whose) = match (limit, physical_memory()) {
        (Some(l), _) => (l, "--max-memory"),
        (None, Some(m)) => (m, "this machine's memory"),
        (None, None) => return Ok(()),
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if needed > limit {
        bail!(
            "the executable would need {:.1} GiB (arena {:.1} GiB for batch {} at {}×{}, weights \
             {:.1} GiB), more than {whose} ({:.1} GiB); use a smaller --batch or --image-size, \
             or raise --max-memory to build it for a larger machine",
            gib(needed),
            gib(program.arena_bytes as u64),
            program.batch,
            program.image[0],
            program.image[1],
            gib(weights as u64),
            gib(limit)
        );
    }
    Ok(())
}

/// Progress of a long command on standard error: a spinner naming the stage, and a bar while
/// kernels are generated. Drawn only when standard error is a terminal and without `-q`; cleared
/// when dropped.
pub(crate) struct Progress(indicatif::ProgressBar);

impl Progress {
    /// The line of a stage without a count.
    const SPINNER: &'static str = "{spinner} {elapsed:>3} {msg}";

    pub(crate) fn new(quiet: bool) -> Progress {
        let target = match quiet {
            true => indicatif::ProgressDrawTarget::hidden(),
            false => indicatif::ProgressDrawTarget::stderr(),
        };
        let bar = indicatif::ProgressBar::with_draw_target(None, target);
        bar.set_style(Self::style(Self::SPINNER));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(bar)
    }

    pub(crate) fn style(template: &str) -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> ")
    }

    /// A new stage without a count.
    pub(crate) fn stage(&self, message: &'static str) {
        log::info!("{message}");
        self.0.set_style(Self::style(Self::SPINNER));
        self.0.set_message(message);
    }

    /// A new stage of `len` steps, advanced by [`Progress::tick`].
    pub(crate) fn counted(&self, message: &'static str, len: usize) {
        log::info!("{message}: {len}");
        self.0.set_style(Self::style(
            "{spinner} {elapsed:>3} {msg} [{bar:30}] {pos}/{len}",
        ));
        self.0.set_length(len as u64);
        self.0.set_position(0);
        self.0.set_message(message);
    }

    pub(crate) fn tick(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    inceptc_runtime::files::write_atomically(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
