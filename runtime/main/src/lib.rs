//! The runtime library linked beside every model object inceptc emits. The object defines the
//! description, the packed weights and the kernel table. An executable's `main` (generated into its
//! object) calls [`inceptc_main`], which checks the CPU, decodes the description, and runs the model
//! on images, on an `.npy` tensor, or in `--bench` mode; a library (`--emit lib`) is used through
//! the C API of [`embed`].

mod bench;
pub mod embed;
pub use embed::Model;

use bench::{bench, BenchOutputs};

use std::ffi::{c_char, c_int};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use inceptc_runtime::desc::{ModelDesc, OutputKind, WeightsDtype};
use inceptc_runtime::exec::{self, Arena, KernelFn, StepTimes};
use inceptc_runtime::pool::ThreadPool;

/// The most threads `--threads` starts (the default takes all cores up to it).
const MAX_THREADS: usize = 1024;
/// The most timed runs `--bench --runs` makes.
const MAX_RUNS: usize = 100_000;

extern "C" {
    static inceptc_desc: u8;
    static inceptc_desc_len: u64;
    static inceptc_weights: u8;
    static inceptc_weights_len: u64;
    static inceptc_kernels: Option<KernelFn>;
}

const LABELS: &str = include_str!("../../src/imagenet_labels.txt");

#[derive(Parser)]
#[command(
    about = "A network compiled by inceptc: classify images, run a tensor, or time every block",
    after_help = "Examples:\n  MODEL cat.jpg dog.png\n  MODEL --input x.npy --output y.npy\n  MODEL --bench --runs 20 --json\n  MODEL --bench --trace trace.json   # open in https://ui.perfetto.dev\n  MODEL --bench --plot latency.svg   # per-block latency as a bar chart"
)]
struct Cli {
    /// PNG or JPEG images to classify (or embed).
    images: Vec<PathBuf>,
    /// Input tensor: float32 NCHW [N, 3, S, S] with the batch and size the model was compiled for.
    #[arg(long, conflicts_with_all = ["images", "bench"])]
    input: Option<PathBuf>,
    /// Write the output tensor (float32 [N, K]) here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write the preprocessed images here, the tensor the network runs on (float32 NCHW [N, 3, S,
    /// S]): compare it with your own pipeline's.
    #[arg(long, requires = "images")]
    save_input: Option<PathBuf>,
    /// Worker threads (default: all cores; at most 1024).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64))]
    threads: Option<u16>,
    /// Time every block and the whole network on seeded input.
    #[arg(long, conflicts_with = "images")]
    bench: bool,
    /// Timed runs for --bench (after one warm-up run; at most 100000).
    #[arg(long, default_value_t = 10, requires = "bench",
          value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS as i64))]
    runs: u32,
    /// Print --bench results as JSON.
    #[arg(long, requires = "bench")]
    json: bool,
    /// With --bench: write the fastest run as a Chrome trace (open it in Perfetto or
    /// chrome://tracing): one span per block, one per kernel inside it.
    #[arg(long, requires = "bench")]
    trace: Option<PathBuf>,
    /// With --bench: draw the median latency of every block as a bar chart (SVG).
    #[arg(long, requires = "bench")]
    plot: Option<PathBuf>,
}

/// The executable's entry point, called by the `main` generated into its object.
///
/// # Safety
/// Called with the process arguments (read through `std::env`).
#[no_mangle]
pub unsafe extern "C" fn inceptc_main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    let code = std::panic::catch_unwind(|| match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    })
    .unwrap_or(101);
    let _ = std::io::stdout().flush();
    code
}

/// What the linked model object provides: its description, weights and kernel table.
pub(crate) struct Linked {
    desc: ModelDesc,
    weights: &'static [u8],
    kernels: &'static [Option<KernelFn>],
}

pub(crate) fn linked_model() -> Result<Linked> {
    // SAFETY: the model object defines these symbols with these lengths (inceptc writes them
    // together); the description is validated before use.
    let (desc, weights) = unsafe {
        (
            std::slice::from_raw_parts(&raw const inceptc_desc, inceptc_desc_len as usize),
            std::slice::from_raw_parts(&raw const inceptc_weights, inceptc_weights_len as usize),
        )
    };
    let desc = ModelDesc::decode(desc)?;
    exec::check_cpu(desc.tier, desc.precision, desc.amx)?;
    let weights = unpack(weights, &desc)?;
    // SAFETY: the kernel table has one entry per step.
    let kernels =
        unsafe { std::slice::from_raw_parts(&raw const inceptc_kernels, desc.steps.len()) };
    for (s, k) in desc.steps.iter().zip(kernels) {
        if s.has_kernel != k.is_some() {
            bail!(
                "corrupt model: the kernel table does not match step `{}`",
                s.name
            );
        }
    }
    Ok(Linked {
        desc,
        weights,
        kernels,
    })
}

/// The packed weights the kernels read, made once at start-up from the weights the executable
/// stores (see [`inceptc_runtime::pack`]) into 64-byte-aligned memory that lives as long as the
/// process. Segment by segment, on every core: f16 and bf16 weights (`inceptc compile
/// --weights-dtype f16`, `--precision bf16`) are widened to f32 first, and the pages of the
/// stored copy are handed back to the kernel once packed, so the process holds little more than
/// the packed weights at any time.
fn unpack(stored: &'static [u8], desc: &ModelDesc) -> Result<&'static [u8]> {
    use inceptc_runtime::pack;
    let dtype = desc.weights_dtype;
    let Some(floats) = dtype.values(stored.len()) else {
        bail!("corrupt model: stored weights of odd length");
    };
    if stored.as_ptr().align_offset(4) != 0 {
        bail!("corrupt model: stored weights of odd alignment");
    }
    pack::check(floats, &desc.segments, desc.packed_bytes)?;
    // An int8 executable's segments are all codes or all f32 (the f32 part is 4-aligned).
    if let WeightsDtype::Int8 { codes } = dtype {
        let straddles = |s: &pack::Segment| {
            let end = s.source + s.recipe.source_floats().unwrap_or(0);
            s.source < codes && end > codes
        };
        if desc.segments.iter().any(straddles) {
            bail!("corrupt model: a weight segment mixes codes and floats");
        }
    }
    let Some((ptr, _)) = inceptc_runtime::exec::zeroed_memory(desc.packed_bytes) else {
        bail!(
            "cannot allocate {} MiB for the weights",
            desc.packed_bytes >> 20
        );
    };
    // SAFETY: `ptr` holds `packed_bytes` zeroed bytes and is never freed (the weights live as long
    // as the process).
    let packed = unsafe { std::slice::from_raw_parts_mut(ptr, desc.packed_bytes) };
    // Each segment's own bytes of the packed weights, from its offset to the next segment's.
    let mut order: Vec<&inceptc_runtime::pack::Segment> = desc.segments.iter().collect();
    order.sort_by_key(|s| s.offset);
    let mut jobs = Vec::with_capacity(order.len());
    let (mut rest, mut at) = (&mut packed[..], 0);
    for (i, segment) in order.iter().enumerate() {
        let end = order
            .get(i + 1)
            .map_or(desc.packed_bytes, |next| next.offset);
        // `check` passed: the segment's own end lies inside the packed weights.
        let own = (segment.recipe.packed_bytes())
            .map_or(usize::MAX, |b| b.saturating_add(segment.offset));
        if own > end {
            bail!("corrupt model: weight segments overlap");
        }
        let (_, from) = std::mem::take(&mut rest).split_at_mut(segment.offset - at);
        let (head, tail) = from.split_at_mut(end - segment.offset);
        jobs.push((*segment, head));
        (rest, at) = (tail, end);
    }
    let jobs = std::sync::Mutex::new(jobs);
    let pack_one =
        |segment: &inceptc_runtime::pack::Segment, dst: &mut [u8], wide: &mut Vec<f32>| {
            let n = segment.recipe.source_floats().unwrap_or(0);
            let (first, end) = (segment.source, segment.source + n);
            let bytes = match dtype {
                // Codes, one byte each.
                WeightsDtype::Int8 { codes } if end <= codes => &stored[first..end],
                _ => &stored[dtype.offset(first)..dtype.offset(end)],
            };
            // SAFETY: `stored` is 4-aligned (checked), f32 values start at multiples of 4
            // bytes, and `bytes` holds `n` little-endian f32.
            let floats = || unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, n) };
            let source: &[f32] = match dtype {
                WeightsDtype::F32 => floats(),
                WeightsDtype::F16 => widen::<half::f16>(bytes, wide),
                WeightsDtype::Bf16 => widen::<half::bf16>(bytes, wide),
                // A segment is all codes or all f32 (the lowering keeps them apart).
                WeightsDtype::Int8 { codes } if end <= codes => {
                    wide.clear();
                    wide.extend(bytes.iter().map(|b| *b as i8 as f32));
                    wide
                }
                WeightsDtype::Int8 { .. } => floats(),
            };
            pack::pack_segment(source, &segment.recipe, dst);
            release(bytes.as_ptr() as usize, bytes.len());
        };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut wide = Vec::new();
                while let Some((segment, dst)) = jobs.lock().ok().and_then(|mut j| j.pop()) {
                    pack_one(segment, dst, &mut wide);
                }
            });
        }
    });
    Ok(packed)
}

/// The 2-byte floats (f16 or bf16) in `bytes`, widened into `wide`.
fn widen<'w, T>(bytes: &[u8], wide: &'w mut Vec<f32>) -> &'w [f32]
where
    [T]: half::slice::HalfFloatSliceExt,
{
    let n = bytes.len() / std::mem::size_of::<T>();
    // SAFETY: `bytes` is aligned to the stored size, 2 (checked in `unpack`), and holds `n`
    // values of `T` (f16 or bf16, two bytes each, any bit pattern valid).
    let halves = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, n) };
    wide.resize(n, 0.0);
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(halves, wide);
    wide
}

/// Tells the kernel that the whole pages inside `len` bytes at `addr` of the executable's
/// read-only data are not needed now (they are read back from the file if touched again).
fn release(addr: usize, len: usize) {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let start = addr.next_multiple_of(page);
    let end = (addr + len) / page * page;
    if end > start {
        // SAFETY: the range lies in a private, read-only mapping of the executable, which
        // MADV_DONTNEED drops and refills from the file on a later access; nothing else is
        // affected. A failure only leaves the pages resident.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The runnable model over the linked kernels and weights.
pub(crate) fn model(linked: &Linked) -> exec::Model<'static> {
    linked.desc.model(linked.weights, linked.kernels)
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let linked = linked_model()?;
    let model = model(&linked);
    let desc = &linked.desc;
    let threads = match cli.threads {
        Some(t) => t as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS)),
    };
    let pool = ThreadPool::try_new(threads)
        .with_context(|| format!("cannot start {threads} threads (--threads)"))?;
    let mut arena = Arena::new(desc.arena_bytes)?;
    if cli.bench {
        return bench(
            desc,
            &model,
            &pool,
            &mut arena,
            cli.runs as usize,
            &BenchOutputs {
                json: cli.json,
                trace: cli.trace.as_deref(),
                plot: cli.plot.as_deref(),
            },
        );
    }
    if let Some(input) = &cli.input {
        return tensor(desc, &model, &pool, &mut arena, input, cli.output.as_ref());
    }
    if cli.images.is_empty() {
        bail!("nothing to do: give images, --input x.npy, or --bench (see --help)");
    }
    images(
        desc,
        &model,
        &pool,
        &mut arena,
        &cli.images,
        cli.output.as_ref(),
        cli.save_input.as_ref(),
    )
}

fn tensor(
    desc: &ModelDesc,
    model: &exec::Model,
    pool: &ThreadPool,
    arena: &mut Arena,
    input: &Path,
    output: Option<&PathBuf>,
) -> Result<()> {
    let x = inceptc_runtime::npy::read_f32(input)?;
    let want = [
        desc.batch,
        desc.input.channels,
        desc.image[0],
        desc.image[1],
    ];
    if x.shape != want {
        bail!(
            "{}: the input has shape {:?}; this model was compiled for float32 NCHW {:?} \
             (compile with --batch and --image-size for others)",
            input.display(),
            x.shape,
            want
        );
    }
    let outputs = model.run(arena, &x.data, pool)?;
    let dims = desc.outputs[0].dims();
    match output {
        Some(path) => inceptc_runtime::npy::write_f32(path, &dims, &outputs[0])?,
        None => {
            let k = dims[1..].iter().product::<usize>();
            for (n, row) in outputs[0].chunks(k).enumerate() {
                print_result(desc, &format!("{}[{n}]", input.display()), row)
                    .context("cannot write the results to standard output")?;
            }
        }
    }
    Ok(())
}

fn images(
    desc: &ModelDesc,
    model: &exec::Model,
    pool: &ThreadPool,
    arena: &mut Arena,
    paths: &[PathBuf],
    output: Option<&PathBuf>,
    save_input: Option<&PathBuf>,
) -> Result<()> {
    let per_image = desc.input.channels * desc.image[0] * desc.image[1];
    let mut decoded = Vec::with_capacity(paths.len());
    for p in paths {
        let img = inceptc_runtime::image::load(p)?;
        decoded.push(inceptc_runtime::image::preprocess(
            &img,
            desc.preprocess,
            desc.image,
        ));
    }
    if let Some(path) = save_input {
        let dims = [
            paths.len(),
            desc.input.channels,
            desc.image[0],
            desc.image[1],
        ];
        inceptc_runtime::npy::write_f32(path, &dims, &decoded.concat())?;
    }
    let dims = desc.outputs[0].dims();
    let k: usize = dims[1..].iter().product();
    let mut all = Vec::with_capacity(paths.len() * k);
    for (chunk, names) in decoded.chunks(desc.batch).zip(paths.chunks(desc.batch)) {
        let mut x = vec![0.0f32; desc.batch * per_image];
        for (i, img) in chunk.iter().enumerate() {
            x[i * per_image..(i + 1) * per_image].copy_from_slice(img);
        }
        let y = model.run(arena, &x, pool)?;
        for (name, row) in names.iter().zip(y[0].chunks(k)) {
            print_result(desc, &name.display().to_string(), row)
                .context("cannot write the results to standard output")?;
            all.extend_from_slice(row);
        }
    }
    if let Some(path) = output {
        let mut dims = dims;
        dims[0] = paths.len();
        inceptc_runtime::npy::write_f32(path, &dims, &all)?;
    }
    Ok(())
}

/// Top-5 classes with probabilities, or the first values of an embedding.
fn print_result(desc: &ModelDesc, name: &str, row: &[f32]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{name}")?;
    match desc.output_kind {
        OutputKind::Logits => {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
            let sum: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
            let labels: Vec<&str> = LABELS.lines().collect();
            for &i in order.iter().take(5) {
                let p = (row[i] as f64 - max).exp() / sum;
                let label = match labels.len() == row.len() {
                    true => labels[i].to_string(),
                    false => format!("class {i}"),
                };
                writeln!(out, "  {p:.4}  {i:>4}  {label}")?;
            }
        }
        OutputKind::Embedding => {
            let head: Vec<String> = row.iter().take(8).map(|v| format!("{v:.4}")).collect();
            writeln!(out, "  embedding [{}]: {} …", row.len(), head.join(" "))?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
