//! Running a compiled model: the arena, the input conversion (NCHW f32 → the input buffer's NHWC
//! with halo), clearing halos, calling every step's kernel over its work items on the thread pool,
//! and reading the outputs back out. The same code serves the emitted executable and the
//! in-process (JIT) path of the compiler's tests.

use std::time::{Duration, Instant};

use crate::desc::Guard;
use crate::layout::{Layout, MapLayout, Precision};
use crate::pool::ThreadPool;

/// A generated kernel: computes work items `begin .. end` reading and writing the arena and reading
/// the packed weights.
pub type KernelFn = unsafe extern "C" fn(arena: *mut u8, weights: *const u8, begin: u64, end: u64);

/// One step of a model.
#[derive(Clone, Debug)]
pub struct Step {
    /// The kernel's name (`k12_mixed_5b_branch0`), for messages.
    pub name: String,
    /// `None` for the step that stands for the graph's input.
    pub kernel: Option<KernelFn>,
    /// Work items the kernel is called for (`0 .. items`).
    pub items: usize,
    /// Index into [`Model::blocks`].
    pub block: usize,
    /// Halos to zero before the step runs.
    pub clear_halos: Vec<MapLayout>,
    /// Whether it runs concurrently with the step before: the work items of a stage's kernels
    /// are handed out from one range, in step order.
    pub joins: bool,
}

/// Everything needed to run a compiled model.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    /// Bytes of the arena.
    pub arena_bytes: usize,
    /// The packed weights the kernels read.
    pub weights: &'a [u8],
    /// Where the input goes.
    pub input: MapLayout,
    /// Where the outputs are read from.
    pub outputs: Vec<Layout>,
    /// The steps, in execution order.
    pub steps: Vec<Step>,
    /// Block names, for per-block timing.
    pub blocks: Vec<String>,
    /// Buffers watched by the bounds check (`inceptc compile --check-bounds`); empty otherwise.
    pub guards: Vec<Guard>,
    /// How the kernels of a stage run: together, or one after another (to time each alone, or
    /// to test that their order does not matter).
    pub stages: StageOrder,
}

/// How the kernels of a stage run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StageOrder {
    /// Their work items handed out together (what executables do).
    #[default]
    Together,
    /// One kernel after another, in step order, each with its own time.
    OneByOne,
    /// One kernel after another, the last first. The outputs must not change: no kernel of a
    /// stage writes what another of it reads or writes.
    Reversed,
}

/// The canary: a NaN no kernel computes.
const CANARY: u32 = 0xFFA5_5A3C;

/// Why a model cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The input does not have the model's size.
    #[error("the input has {found} values, the model takes [{n}, {c}, {h}, {w}] = {expected}")]
    InputSize {
        /// Values given.
        found: usize,
        /// Values the model takes.
        expected: usize,
        /// The model's batch.
        n: usize,
        /// The model's input channels.
        c: usize,
        /// The model's input height.
        h: usize,
        /// The model's input width.
        w: usize,
    },
    /// The arena of this many bytes cannot be allocated.
    #[error("the arena of {0} bytes cannot be allocated")]
    Arena(usize),
    /// A kernel wrote outside its buffers (`--check-bounds`).
    #[error(
        "bounds check: kernel `{kernel}` (step {step}, block {block}) wrote out of bounds: \
         {place} of buffer `{buffer}` changed"
    )]
    OutOfBounds {
        /// The kernel's name (the names of a stage's kernels: `a` or `b`).
        kernel: String,
        /// Its step.
        step: usize,
        /// Its block.
        block: String,
        /// The buffer whose canary or halo changed.
        buffer: String,
        /// Where in the buffer.
        place: String,
    },
    /// This CPU lacks features the code uses.
    #[error("this CPU lacks {missing}, which the generated code uses (it was built for {tier})")]
    Cpu {
        /// The tier the code was built for.
        tier: &'static str,
        /// The features this CPU lacks.
        missing: String,
    },
}

/// The x86-64 feature tier generated code is built for (`inceptc compile --target-cpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tier {
    /// x86-64-v3: AVX2, FMA and what comes with them.
    #[default]
    V3,
    /// x86-64-v4: v3 and AVX-512 F, BW, CD, DQ, VL.
    V4,
}

impl Tier {
    /// `x86-64-v3` or `x86-64-v4`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::V3 => "x86-64-v3",
            Tier::V4 => "x86-64-v4",
        }
    }
}

/// A CPU feature that code of a tier uses: its name in errors, the Cranelift ISA flag that lets
/// Cranelift's code use it (`None`: only the assembled register tiles do), and its detection.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// Its name in messages (`AVX512F`).
    pub name: &'static str,
    /// The Cranelift ISA flag (`has_avx512f`), if Cranelift's code may use it.
    pub cranelift: Option<&'static str>,
    detect: fn() -> bool,
}

impl Feature {
    /// Whether this CPU has it.
    pub fn present(&self) -> bool {
        (self.detect)()
    }
}

/// `Feature` with a detection by `is_x86_feature_detected!` (never present off x86-64).
macro_rules! feature {
    ($name:literal, $cranelift:expr, $detect:tt) => {
        Feature {
            name: $name,
            cranelift: $cranelift,
            #[cfg(target_arch = "x86_64")]
            detect: || std::is_x86_feature_detected!($detect),
            #[cfg(not(target_arch = "x86_64"))]
            detect: || false,
        }
    };
}

/// x86-64-v3's features: Cranelift's code of every tier is built with all of them.
const V3_FEATURES: [Feature; 11] = [
    feature!("SSE3", Some("has_sse3"), "sse3"),
    feature!("SSSE3", Some("has_ssse3"), "ssse3"),
    feature!("SSE4.1", Some("has_sse41"), "sse4.1"),
    feature!("SSE4.2", Some("has_sse42"), "sse4.2"),
    feature!("POPCNT", Some("has_popcnt"), "popcnt"),
    feature!("AVX", Some("has_avx"), "avx"),
    feature!("AVX2", Some("has_avx2"), "avx2"),
    feature!("FMA", Some("has_fma"), "fma"),
    feature!("BMI1", Some("has_bmi1"), "bmi1"),
    feature!("BMI2", Some("has_bmi2"), "bmi2"),
    feature!("LZCNT", Some("has_lzcnt"), "lzcnt"),
];

/// What x86-64-v4 adds, for the assembled AVX-512 tiles (Cranelift's code stays on v3's).
const V4_FEATURES: [Feature; 5] = [
    feature!("AVX512F", None, "avx512f"),
    feature!("AVX512BW", None, "avx512bw"),
    feature!("AVX512CD", None, "avx512cd"),
    feature!("AVX512DQ", None, "avx512dq"),
    feature!("AVX512VL", None, "avx512vl"),
];

/// Whether CPUID says this CPU has AMX tiles with bf16 (leaf 7: EDX bits 24 and 22) and at
/// least one tile palette (leaf 0x1D: some hypervisors advertise AMX with none).
pub fn amx_present() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        let (max, leaf7) = (__cpuid_count(0, 0).eax, __cpuid_count(7, 0));
        if max < 0x1d || leaf7.edx & (1 << 24) == 0 || leaf7.edx & (1 << 22) == 0 {
            return false;
        }
        // Leaf 0x1D is at most the maximum leaf.
        __cpuid_count(0x1d, 0).eax >= 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether CPUID says this CPU's AMX tiles multiply bytes (leaf 7: EDX bit 25), besides
/// [`amx_present`].
pub fn amx_int8_present() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        amx_present() && __cpuid_count(7, 0).edx & (1 << 25) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The AMX tile registers (with a tile palette: [`amx_present`]).
const AMX_TILE: Feature = Feature {
    name: "AMX_TILE",
    cranelift: None,
    detect: amx_present,
};

/// The AMX tile claims its output lines with `prefetchw` (every CPU with AMX has it).
const PREFETCHW: Feature = Feature {
    name: "PREFETCHW",
    cranelift: None,
    detect: prefetchw_present,
};

/// What AMX tiles add to bf16 code: the tile registers and their bf16 products ([`amx_present`]
/// detects both).
const AMX_FEATURES: [Feature; 3] = [
    AMX_TILE,
    Feature {
        name: "AMX_BF16",
        cranelift: None,
        detect: amx_present,
    },
    PREFETCHW,
];

/// What AMX tiles add to int8 code: the tile registers and their byte products.
const AMX_INT8_FEATURES: [Feature; 3] = [
    AMX_TILE,
    Feature {
        name: "AMX_INT8",
        cranelift: None,
        detect: amx_int8_present,
    },
    PREFETCHW,
];

/// Whether CPUID says this CPU has `prefetchw` (leaf 0x8000_0001: ECX bit 8, PRFCHW).
fn prefetchw_present() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        __cpuid_count(0x8000_0000, 0).eax >= 0x8000_0001
            && __cpuid_count(0x8000_0001, 0).ecx & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Asks Linux for permission to use AMX tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`), for the whole process: call it before any thread runs a tile.
pub fn enable_amx() -> Result<(), RunError> {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a system call with integer arguments; it changes only the permission.
    let status = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    match status {
        0 => Ok(()),
        _ => Err(RunError::Cpu {
            tier: "x86-64-v4 with AMX",
            missing: format!(
                "the kernel's permission for AMX tile data ({})",
                std::io::Error::last_os_error()
            ),
        }),
    }
}

/// What bf16 code adds to x86-64-v4, for the `vdpbf16ps` tiles and `vcvtneps2bf16`.
const BF16_FEATURES: [Feature; 1] = [feature!("AVX512_BF16", None, "avx512bf16")];

/// What int8 code adds to x86-64-v4, for the `vpdpbusd` tiles.
const VNNI_FEATURES: [Feature; 1] = [feature!("AVX512_VNNI", None, "avx512vnni")];

/// Every feature code of `tier` uses: the one list the compiler builds Cranelift's ISA from and
/// the start-up check tests.
pub fn features(tier: Tier) -> Vec<Feature> {
    let mut all = V3_FEATURES.to_vec();
    if tier == Tier::V4 {
        all.extend(V4_FEATURES);
    }
    all
}

/// [`features`] of `tier` and what code of `precision`, with AMX tiles if `amx`, adds to them.
pub fn features_for(tier: Tier, precision: Precision, amx: bool) -> Vec<Feature> {
    let mut all = features(tier);
    match precision {
        Precision::F32 => {}
        Precision::Bf16 => all.extend(BF16_FEATURES),
        Precision::U8 => all.extend(VNNI_FEATURES),
    }
    match (amx, precision) {
        (false, _) => {}
        (true, Precision::U8) => all.extend(AMX_INT8_FEATURES),
        (true, Precision::F32 | Precision::Bf16) => all.extend(AMX_FEATURES),
    }
    all
}

/// The features of `tier` this CPU lacks, by name (empty when it runs the tier's code).
pub fn missing_features(tier: Tier) -> Vec<&'static str> {
    missing_features_for(tier, Precision::F32, false)
}

/// The features of `tier`, `precision` and AMX if `amx` this CPU lacks, by name.
pub fn missing_features_for(tier: Tier, precision: Precision, amx: bool) -> Vec<&'static str> {
    features_for(tier, precision, amx)
        .into_iter()
        .filter(|f| !f.present())
        .map(|f| f.name)
        .collect()
}

/// Checks, before anything runs, that the CPU has every feature code of `tier` and `precision`
/// (with AMX tiles if `amx`) uses, and asks for AMX's permission when it does.
pub fn check_cpu(tier: Tier, precision: Precision, amx: bool) -> Result<(), RunError> {
    let missing = missing_features_for(tier, precision, amx);
    if !missing.is_empty() {
        return Err(RunError::Cpu {
            tier: match (precision, amx) {
                (Precision::F32, _) => tier.name(),
                (Precision::Bf16, false) => "x86-64-v4 with bf16",
                (Precision::Bf16, true) => "x86-64-v4 with bf16 and AMX",
                (Precision::U8, false) => "x86-64-v4 with VNNI (int8)",
                (Precision::U8, true) => "x86-64-v4 with VNNI and AMX-INT8 (int8)",
            },
            missing: missing.join(", "),
        });
    }
    match amx {
        true => enable_amx(),
        false => Ok(()),
    }
}

/// The size of a huge page on x86-64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// `bytes` zeroed bytes (at least 64), 64-byte aligned, and their layout for [`free_memory`].
/// From 2 MiB on (the arena, the packed weights), they are a fresh mapping, 2 MiB aligned and a
/// whole number of 2 MiB, asked for in 2 MiB pages (`MADV_HUGEPAGE` before the first touch: where
/// transparent huge pages are set to `madvise`, as on the Xeon, only advised memory gets them),
/// and zero without a pass over them (a fresh mapping is; zeroing IR-v2's 234 MiB of weights
/// took 20 of the 210 ms from start to the first result). The kernels stream hundreds of MiB of
/// weights, and 4 KiB pages cost a page walk every 4 KiB: Inception-v4 and IR-v2 in f32 ran 4–6 %
/// faster on the Xeon with huge pages, on 1 and 2 threads (medians of 5 interleaved rounds).
/// Where the kernel gives no huge pages, the memory is in small ones.
pub fn zeroed_memory(bytes: usize) -> Option<(*mut u8, std::alloc::Layout)> {
    if bytes < HUGE_PAGE {
        let layout = std::alloc::Layout::from_size_align(bytes.max(64), 64).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        return (!ptr.is_null()).then_some((ptr, layout));
    }
    let size = bytes.checked_next_multiple_of(HUGE_PAGE)?;
    let layout = std::alloc::Layout::from_size_align(size, HUGE_PAGE).ok()?;
    // Mapped a huge page longer than needed, then trimmed to the aligned part.
    let span = size.checked_add(HUGE_PAGE)?;
    // SAFETY: a new private anonymous mapping; no memory in use is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let start = (base as usize).next_multiple_of(HUGE_PAGE);
    let (head, tail) = (start - base as usize, base as usize + span - (start + size));
    // SAFETY: the head and tail lie in the mapping just made, outside the part kept; the advice
    // changes only the size of the pages the first touch maps (a failure leaves small ones).
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
        libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Some((start as *mut u8, layout))
}

/// Frees what [`zeroed_memory`] gave with `layout`: a mapping if it is 2 MiB aligned.
///
/// # Safety
///
/// `ptr` and `layout` came from one call of [`zeroed_memory`], and the memory is not used again.
pub unsafe fn free_memory(ptr: *mut u8, layout: std::alloc::Layout) {
    match layout.align() {
        // SAFETY: the caller's; the mapping is exactly these bytes.
        HUGE_PAGE => unsafe {
            libc::munmap(ptr as *mut libc::c_void, layout.size());
        },
        // SAFETY: the caller's; allocated with this layout.
        _ => unsafe { std::alloc::dealloc(ptr, layout) },
    }
}

/// A zeroed, 64-byte-aligned block of memory ([`zeroed_memory`]).
pub struct Arena {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// The arena is plain memory; the executor hands disjoint work items to threads.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// `bytes` zeroed bytes, 64-byte aligned.
    pub fn new(bytes: usize) -> Result<Arena, RunError> {
        let (ptr, layout) = zeroed_memory(bytes).ok_or(RunError::Arena(bytes))?;
        Ok(Arena { ptr, layout })
    }

    /// The arena's first byte.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn bytes_mut(&mut self, offset: usize, count: usize) -> &mut [u8] {
        assert!(offset + count <= self.layout.size());
        // SAFETY: in bounds (checked), and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), count) }
    }

    fn bytes(&self, offset: usize, count: usize) -> &[u8] {
        assert!(offset + count <= self.layout.size());
        // SAFETY: in bounds (checked), shared.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), count) }
    }

    fn floats(&self, offset: usize, count: usize) -> &[f32] {
        assert!(offset.is_multiple_of(4) && offset + 4 * count <= self.layout.size());
        // SAFETY: in bounds (checked), aligned to 4 (the arena is 64-aligned, offset checked);
        // shared.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset) as *const f32, count) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { free_memory(self.ptr, self.layout) }
    }
}

/// When each step of one run started (from the start of the run) and how long it took, in step
/// order. The steps of a stage run together: the first holds the stage's time, the others none.
#[derive(Clone, Debug, Default)]
pub struct StepTimes {
    /// When each step started, from the start of the run.
    pub start: Vec<Duration>,
    /// How long each step took.
    pub duration: Vec<Duration>,
    /// The time the pool's threads spent on each step's work items, summed over the threads
    /// ([`ThreadPool::run_segments_busy`]): on N threads, N × `duration` less this is the time
    /// threads waited for others.
    pub busy: Vec<Duration>,
}

impl Model<'_> {
    /// Runs the model on `input` (NCHW f32) and returns each output, flattened: maps as NCHW,
    /// vectors as `[N, F]`.
    pub fn run(
        &self,
        arena: &mut Arena,
        input: &[f32],
        pool: &ThreadPool,
    ) -> Result<Vec<Vec<f32>>, RunError> {
        self.run_timed(arena, input, pool, None)
    }

    /// [`Model::run`], recording each step's wall time in `times` when given.
    pub fn run_timed(
        &self,
        arena: &mut Arena,
        input: &[f32],
        pool: &ThreadPool,
        mut times: Option<&mut StepTimes>,
    ) -> Result<Vec<Vec<f32>>, RunError> {
        let m = self.input;
        let expected = m.n * m.channels * m.h * m.w;
        if input.len() != expected {
            return Err(RunError::InputSize {
                found: input.len(),
                expected,
                n: m.n,
                c: m.channels,
                h: m.h,
                w: m.w,
            });
        }
        if arena.layout.size() < self.arena_bytes {
            *arena = Arena::new(self.arena_bytes)?;
        }
        let run_start = Instant::now();
        if let Some(t) = times.as_deref_mut() {
            t.start = vec![Duration::ZERO; self.steps.len()];
            t.duration = vec![Duration::ZERO; self.steps.len()];
            t.busy = vec![Duration::ZERO; self.steps.len()];
        }
        let mut first = 0;
        while first < self.steps.len() {
            let stage = first..self.stage_end(first);
            let start = Instant::now();
            for g in self.guards.iter().filter(|g| stage.contains(&g.live[0])) {
                arm(arena, g);
            }
            // The halos of the buffers the stage is the first to write, and the padding
            // channels of their pixels: cleared by the pool along with the stage's kernels
            // (which write only the pixels' own channels), a row an item.
            let mut halos: Vec<Prepare> = Vec::new();
            for step in &self.steps[stage.clone()] {
                for halo in &step.clear_halos {
                    halos.push(Prepare {
                        map: halo,
                        // The input step writes every pixel of the input map, padding channels
                        // included.
                        padding: !(step.kernel.is_none() && *halo == self.input),
                    });
                }
            }
            let timed = times.is_some();
            let mut busy = Duration::ZERO;
            if self.steps[stage.clone()].iter().any(|s| s.kernel.is_none()) {
                busy += write_map_busy(arena, &self.input, input, pool, timed);
            }
            match self.stages {
                StageOrder::Together => {
                    busy += self.run_stage(arena, stage.clone(), &halos, pool, timed);
                }
                StageOrder::OneByOne | StageOrder::Reversed => {
                    busy += self.run_stage(arena, stage.start..stage.start, &halos, pool, timed);
                    let mut order: Vec<usize> = stage.clone().collect();
                    if self.stages == StageOrder::Reversed {
                        order.reverse();
                    }
                    for s in order {
                        let alone = Instant::now();
                        let own = self.run_stage(arena, s..s + 1, &[], pool, timed);
                        if let Some(t) = times.as_deref_mut() {
                            t.start[s] = alone - run_start;
                            t.duration[s] = alone.elapsed();
                            t.busy[s] = own;
                        }
                        // Alone, a kernel that writes out of bounds is named by itself.
                        self.check_guards(arena, s..s + 1)?;
                    }
                }
            }
            if let Some(t) = times.as_deref_mut() {
                if self.stages == StageOrder::Together || stage.len() == 1 {
                    t.start[stage.start] = start - run_start;
                    t.duration[stage.start] = start.elapsed();
                    t.busy[stage.start] += busy;
                    for s in stage.clone().skip(1) {
                        t.start[s] = t.start[stage.start];
                    }
                }
            }
            // One by one, each kernel was checked as it ran.
            if self.stages == StageOrder::Together {
                self.check_guards(arena, stage.clone())?;
            }
            first = stage.end;
        }
        Ok(self.outputs.iter().map(|o| read(arena, o)).collect())
    }
}

impl Model<'_> {
    /// The end of the stage that starts at step `first` ([`stage_end`]).
    fn stage_end(&self, first: usize) -> usize {
        stage_end(first, self.steps.len(), |s| self.steps[s].joins)
    }

    /// Runs the kernels of the steps `stage` on `pool`, their work items numbered one after
    /// another, each kernel's a segment ([`ThreadPool::run_segments`]), after a segment that
    /// prepares the maps of `halos` ([`prepare_row`]), a padded row an item. Returns the
    /// threads' summed time on it if `timed` ([`ThreadPool::run_segments_busy`]), else zero.
    fn run_stage(
        &self,
        arena: &Arena,
        stage: std::ops::Range<usize>,
        halos: &[Prepare],
        pool: &ThreadPool,
        timed: bool,
    ) -> Duration {
        let kernels: Vec<(KernelFn, usize)> = self.steps[stage]
            .iter()
            .filter_map(|s| Some((s.kernel?, s.items)))
            .collect();
        let rows: Vec<usize> = halos.iter().map(prepare_rows).collect();
        let halo_items: usize = rows.iter().sum();
        let ends = crate::pool::segment_ends(
            std::iter::once(halo_items).chain(kernels.iter().map(|(_, n)| *n)),
        );
        let base = arena.as_mut_ptr() as usize;
        let size = arena.layout.size();
        let weights = self.weights.as_ptr() as usize;
        let work = |begin: usize, end: usize| {
            // The maps' rows first: item `i` of map `h` is its row `i` ([`prepare_rows`]).
            let mut first = 0;
            for (h, n) in halos.iter().zip(&rows) {
                for item in begin.max(first)..end.min(first + n) {
                    // SAFETY: the rows of a map lie in the arena (checked inside); no kernel of
                    // the stage writes their halo or padding channels, no kernel of the stage
                    // reads the map, and no other map shares those bytes.
                    unsafe { prepare_row(base as *mut u8, size, h, item - first) };
                }
                first += n;
            }
            if end <= halo_items {
                return;
            }
            zero_upper();
            let mut first = halo_items;
            for &(kernel, n) in &kernels {
                let (b, e) = (begin.max(first), end.min(first + n));
                if b < e {
                    // SAFETY: the kernel was generated for this arena and weight layout; work
                    // items write disjoint memory, and so do the kernels of a stage.
                    unsafe {
                        kernel(
                            base as *mut u8,
                            weights as *const u8,
                            (b - first) as u64,
                            (e - first) as u64,
                        )
                    }
                }
                first += n;
            }
        };
        match timed {
            true => pool.run_segments_busy(&ends, &work),
            false => {
                pool.run_segments(&ends, &work);
                Duration::ZERO
            }
        }
    }

    /// After the steps `stage`: the canaries of every guarded buffer live in it are intact and
    /// its halo is zero. A damage names the stage's kernels (which of them wrote, the run cannot
    /// tell: they ran together).
    fn check_guards(&self, arena: &Arena, stage: std::ops::Range<usize>) -> Result<(), RunError> {
        for g in self
            .guards
            .iter()
            .filter(|g| g.live[0] < stage.end && stage.start <= g.live[1])
        {
            let Some(place) = damage(arena, g) else {
                continue;
            };
            let steps = &self.steps[stage.clone()];
            let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
            return Err(RunError::OutOfBounds {
                kernel: names.join("` or `"),
                step: stage.start,
                block: self.blocks.get(steps[0].block).cloned().unwrap_or_default(),
                buffer: g.buffer.clone(),
                place,
            });
        }
        Ok(())
    }

    /// Sums step times per block, in block order.
    pub fn block_times(&self, steps: &[Duration]) -> Vec<Duration> {
        let mut blocks = vec![Duration::ZERO; self.blocks.len()];
        for (step, t) in self.steps.iter().zip(steps) {
            blocks[step.block] += *t;
        }
        blocks
    }
}

/// Clears the upper halves of the YMM registers: generated SSE/AVX-128 code runs many times slower
/// when the caller left them dirty.
fn zero_upper() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn vzeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present.
            unsafe { vzeroupper() }
        }
    }
}

/// The end of the stage that starts at step `first` of `count`: the first later step that does
/// not join it (`joins(s)`: step `s` runs together with the step before).
pub fn stage_end(first: usize, count: usize, joins: impl Fn(usize) -> bool) -> usize {
    let mut end = first + 1;
    while end < count && joins(end) {
        end += 1;
    }
    end
}

/// The padded rows of every image of `m` that hold halo (every row, when `m` has halo columns;
/// 0 without a halo).
fn halo_rows(m: &MapLayout) -> usize {
    match m.halo {
        [0, 0] => 0,
        [_, 0] => m.n * 2 * m.halo[0],
        _ => m.n * (m.h + 2 * m.halo[0]),
    }
}

/// A map a stage is the first to write, to be prepared by the pool: its halo filled and, with
/// `padding`, the padding channels of its pixels zeroed ([`MapLayout::padding_channels`]).
struct Prepare<'a> {
    map: &'a MapLayout,
    padding: bool,
}

/// Whether the pool zeroes the padding channels of `p`'s pixels (it has some, and the input
/// step does not write them).
fn zeroes_padding(p: &Prepare) -> bool {
    p.padding && !p.map.padding_channels().is_empty()
}

/// The rows [`prepare_row`] takes as items: every padded row of every image where the padding
/// channels are zeroed, else those that hold halo ([`halo_rows`]).
fn prepare_rows(p: &Prepare) -> usize {
    let m = p.map;
    match zeroes_padding(p) {
        true => m.n * (m.h + 2 * m.halo[0]),
        false => halo_rows(m),
    }
}

/// Prepares row `item` of [`prepare_rows`]: a halo row filled whole with the map's
/// [`MapLayout::halo_byte`] (0 but in a u8 map with a zero point); another row's halo columns
/// filled, and with [`zeroes_padding`] the padding channels of its pixels zeroed.
///
/// # Safety
/// `base` is an arena of `size` bytes that no other thread writes at those bytes.
unsafe fn prepare_row(base: *mut u8, size: usize, p: &Prepare, item: usize) {
    let m = p.map;
    let fill = m.halo_byte();
    let padded = m.h + 2 * m.halo[0];
    let (n, r) = match (zeroes_padding(p), m.halo[1]) {
        (false, 0) => {
            // Only the halo rows: the first `halo[0]` and the last of each image.
            let per = 2 * m.halo[0];
            let (n, k) = (item / per, item % per);
            (n, if k < m.halo[0] { k } else { m.h + k })
        }
        _ => (item / padded, item % padded),
    };
    let row = m.offset + n * m.image_stride() + r * m.row_stride();
    assert!(row + m.row_stride() <= size, "a row lies outside the arena");
    let side = m.halo[1] * m.pixel_stride();
    let right = (m.halo[1] + m.w) * m.pixel_stride();
    // SAFETY: in the arena (checked); the caller owns these bytes.
    unsafe {
        if r < m.halo[0] || r >= m.h + m.halo[0] {
            std::ptr::write_bytes(base.add(row), fill, m.row_stride());
            return;
        }
        std::ptr::write_bytes(base.add(row), fill, side);
        std::ptr::write_bytes(base.add(row + right), fill, m.row_stride() - right);
        if zeroes_padding(p) {
            let value = m.value_bytes();
            let padding = m.padding_channels();
            let (first, bytes) = (padding.start * value, padding.len() * value);
            for pixel in (side..right).step_by(m.pixel_stride()) {
                std::ptr::write_bytes(base.add(row + pixel + first), 0, bytes);
            }
        }
    }
}

/// Fills the guards of `g` with the canary.
fn arm(arena: &mut Arena, g: &Guard) {
    for start in [g.offset - g.guard, g.offset + g.bytes] {
        for word in arena.bytes_mut(start, g.guard).chunks_exact_mut(4) {
            word.copy_from_slice(&CANARY.to_le_bytes());
        }
    }
}

/// Where the guards or the halo of `g` were written, if they were.
fn damage(arena: &Arena, g: &Guard) -> Option<String> {
    let changed = |w: &[u8]| w != CANARY.to_le_bytes();
    let before: Vec<&[u8]> = arena
        .bytes(g.offset - g.guard, g.guard)
        .chunks_exact(4)
        .collect();
    let words = before.len();
    if let Some(i) = before.iter().position(|w| changed(w)) {
        return Some(format!("the {} bytes before the start", (words - i) * 4));
    }
    let after: Vec<&[u8]> = arena
        .bytes(g.offset + g.bytes, g.guard)
        .chunks_exact(4)
        .collect();
    if let Some(i) = after.iter().rposition(|w| changed(w)) {
        return Some(format!("the {} bytes after the end", (i + 1) * 4));
    }
    let m = g.halo.as_ref()?;
    let (c, value) = (m.c_total, m.value_bytes());
    for n in 0..m.n {
        for r in 0..m.h + 2 * m.halo[0] {
            let row = arena.bytes(
                m.offset + n * m.image_stride() + r * m.row_stride(),
                m.row_stride(),
            );
            let inside = r >= m.halo[0] && r < m.h + m.halo[0];
            let right = (m.halo[1] + m.w) * m.pixel_stride();
            let padding = m.padding_channels();
            if inside && !padding.is_empty() {
                let left = m.halo[1] * m.pixel_stride();
                for (x, pixel) in row[left..right].chunks_exact(m.pixel_stride()).enumerate() {
                    if let Some(c) = padding
                        .clone()
                        .find(|c| pixel[c * value..(c + 1) * value].iter().any(|b| *b != 0))
                    {
                        return Some(format!(
                            "the zero padding channel {c} (image {n}, padded row {r}, padded \
                             column {})",
                            x + m.halo[1]
                        ));
                    }
                }
            }
            let ranges = match inside {
                true => [0..m.halo[1] * m.pixel_stride(), right..row.len()],
                false => [0..row.len(), 0..0],
            };
            for range in ranges {
                let start = range.start;
                if let Some(i) = row[range].iter().position(|b| *b != m.halo_byte()) {
                    let i = (start + i) / value;
                    return Some(format!(
                        "the zero halo (image {n}, padded row {r}, padded column {}, channel {})",
                        i / c,
                        i % c
                    ));
                }
            }
        }
    }
    None
}

/// Writes an NCHW tensor into the channel range of map `m`, rounded (or quantized) to its precision, its rows
/// shared out to `pool`'s threads; the buffer's channels after the range (padding to an even
/// count in bf16) become zero.
pub fn write_map(arena: &mut Arena, m: &MapLayout, nchw: &[f32], pool: &ThreadPool) {
    write_map_busy(arena, m, nchw, pool, false);
}

/// [`write_map`], returning the threads' summed time on it if `timed`
/// ([`ThreadPool::run_segments_busy`]), else zero.
fn write_map_busy(
    arena: &mut Arena,
    m: &MapLayout,
    nchw: &[f32],
    pool: &ThreadPool,
    timed: bool,
) -> Duration {
    let (base, size) = (arena.as_mut_ptr() as usize, arena.layout.size());
    let rows = m.n * m.h;
    let work = |begin: usize, end: usize| {
        for item in begin..end {
            let (n, y) = (item / m.h, item % m.h);
            let (offset, bytes) = row_span(m, n, y);
            assert!(offset + bytes <= size);
            // SAFETY: in the arena (checked); the rows of a map are disjoint byte ranges, and
            // each item is one row, so no two threads write the same bytes.
            let row =
                unsafe { std::slice::from_raw_parts_mut((base as *mut u8).add(offset), bytes) };
            write_row(row, m, nchw, n, y);
        }
    };
    match timed {
        true => pool.run_segments_busy(&[rows], &work),
        false => {
            pool.run(rows, &work);
            Duration::ZERO
        }
    }
}

/// Where row `y` of image `n` of `m` lies in the arena: from its first pixel's value to its last
/// pixel's padding.
fn row_span(m: &MapLayout, n: usize, y: usize) -> (usize, usize) {
    let own = (m.c_total - m.channel_offset) * m.value_bytes();
    (
        m.address(n, y as isize, 0, 0),
        (m.w - 1) * m.pixel_stride() + own,
    )
}

/// Row `y` of image `n` of the NCHW tensor into `row` ([`row_span`]), channel by channel: each
/// reads a contiguous row of the tensor. Where the CPU has FMA and SSE4.1 (every host of the
/// AVX2 and AVX-512 tiers), compiled for them: int8's quantization is then a fused multiply-add
/// and a rounding instruction, not calls into the math library. The values are the same either
/// way. A 299×299 input on one thread of the Xeon: u8 0.88 ms before this and the one sweep
/// that zeroes the padding below, 0.36 ms after; bf16 0.39 and 0.27 ms; f32 (no padding)
/// 0.14 ms.
fn write_row(row: &mut [u8], m: &MapLayout, nchw: &[f32], n: usize, y: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { write_row_fma(row, m, nchw, n, y) };
    }
    write_row_any(row, m, nchw, n, y)
}

/// [`write_row_any`] compiled for FMA and SSE4.1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,sse4.1")]
fn write_row_fma(row: &mut [u8], m: &MapLayout, nchw: &[f32], n: usize, y: usize) {
    write_row_any(row, m, nchw, n, y)
}

/// [`write_row`] for any x86-64 CPU.
#[inline(always)]
fn write_row_any(row: &mut [u8], m: &MapLayout, nchw: &[f32], n: usize, y: usize) {
    let (value, stride) = (m.value_bytes(), m.pixel_stride());
    let own = (m.c_total - m.channel_offset) * value;
    let padded = m.channels * value < own;
    // With the pixels' first channels, the row holds nothing else: zero it in one sweep first
    // (a fill per pixel costs more than the values).
    let whole = padded && m.channel_offset == 0;
    if whole {
        row.fill(0);
    }
    for c in 0..m.channels {
        let from = &nchw[((n * m.channels + c) * m.h + y) * m.w..][..m.w];
        let to = row[c * value..].chunks_mut(stride);
        match m.precision {
            Precision::F32 => from
                .iter()
                .zip(to)
                .for_each(|(v, px)| px[..4].copy_from_slice(&v.to_le_bytes())),
            Precision::Bf16 => from.iter().zip(to).for_each(|(v, px)| {
                px[..2].copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes())
            }),
            Precision::U8 => from
                .iter()
                .zip(to)
                .for_each(|(v, px)| px[0] = m.quant.quantize(*v)),
        }
    }
    if padded && !whole {
        for px in row.chunks_mut(stride) {
            px[m.channels * value..own].fill(0);
        }
    }
}

/// The value of map `m` at the start of `from`.
fn get(from: &[u8], m: &MapLayout) -> f32 {
    match m.precision {
        Precision::F32 => f32::from_le_bytes([from[0], from[1], from[2], from[3]]),
        Precision::Bf16 => half::bf16::from_le_bytes([from[0], from[1]]).to_f32(),
        Precision::U8 => m.quant.dequantize(from[0]),
    }
}

/// Reads an output: a map as NCHW, a vector batch as `[N, F]`.
pub fn read(arena: &Arena, layout: &Layout) -> Vec<f32> {
    match layout {
        Layout::Map(m) => {
            let value = m.value_bytes();
            let mut out = vec![0.0; m.n * m.channels * m.h * m.w];
            for n in 0..m.n {
                for y in 0..m.h {
                    let row = arena.bytes(
                        m.address(n, y as isize, 0, 0),
                        ((m.w - 1) * m.c_total + m.channels) * value,
                    );
                    for x in 0..m.w {
                        for c in 0..m.channels {
                            out[((n * m.channels + c) * m.h + y) * m.w + x] =
                                get(&row[(x * m.c_total + c) * value..], m);
                        }
                    }
                }
            }
            out
        }
        Layout::Vector(v) => {
            let mut out = Vec::with_capacity(v.n * v.features);
            for n in 0..v.n {
                out.extend_from_slice(arena.floats(v.address(n, 0), v.features));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_zeroed_and_large_blocks_are_whole_huge_pages() {
        // Sizes no allocator can give fail cleanly.
        assert!(zeroed_memory(usize::MAX - 5).is_none());
        assert!(zeroed_memory(isize::MAX as usize).is_none());
        for bytes in [
            1,
            100,
            HUGE_PAGE - 1,
            HUGE_PAGE,
            HUGE_PAGE + 1,
            5 * HUGE_PAGE + 3,
        ] {
            let (ptr, layout) = zeroed_memory(bytes).expect("allocated");
            assert!(
                layout.size() >= bytes && (ptr as usize).is_multiple_of(64),
                "{bytes} bytes"
            );
            if bytes >= HUGE_PAGE {
                assert!((ptr as usize).is_multiple_of(HUGE_PAGE), "{bytes} bytes");
                assert!(layout.size().is_multiple_of(HUGE_PAGE), "{bytes} bytes");
            }
            // SAFETY: allocated above with this layout, zeroed, freed once.
            unsafe {
                let all = std::slice::from_raw_parts(ptr, layout.size());
                assert!(all.iter().all(|&b| b == 0), "{bytes} bytes");
                free_memory(ptr, layout);
            }
        }
    }

    /// A byte's place in a map ([`place`]).
    struct Place {
        image: usize,
        row: usize,
        column: usize,
        channel: usize,
        byte: usize,
        halo: bool,
    }

    /// Where byte `i` of an arena lies in map `m`: `None` outside its images, else the image,
    /// the padded row and column, the channel and the byte within the value, and whether the
    /// pixel is halo.
    fn place(m: &MapLayout, i: usize) -> Option<Place> {
        if !(m.offset..m.offset + m.bytes()).contains(&i) {
            return None;
        }
        let at = i - m.offset;
        let (row, column) = (
            at % m.image_stride() / m.row_stride(),
            at % m.row_stride() / m.pixel_stride(),
        );
        let [hy, hx] = m.halo;
        Some(Place {
            image: at / m.image_stride(),
            row,
            column,
            channel: at % m.pixel_stride() / m.value_bytes(),
            byte: at % m.pixel_stride() % m.value_bytes(),
            halo: row < hy || row >= m.h + hy || column < hx || column >= m.w + hx,
        })
        .filter(|p| p.image < m.n)
    }

    /// The rows the pool prepares (`prepare_row` over `prepare_rows`) fill the halo with the
    /// halo byte (a u8 map's zero point) and zero the padding channels of every pixel inside,
    /// and write nothing else; a map the input step writes (`padding: false`) keeps its
    /// padding channels, and a map without any has only its halo filled.
    #[test]
    fn prepared_rows_fill_the_halo_and_zero_the_padding_channels() {
        let f32_map = (3, 3, Precision::F32, 0);
        let u8_map = (8, 5, Precision::U8, 7);
        for (c_total, channels, precision, zero) in [f32_map, u8_map] {
            for (halo, padding) in [[1, 2], [2, 0], [0, 3], [0, 0]]
                .into_iter()
                .flat_map(|h| [(h, false), (h, true)])
            {
                let m = MapLayout {
                    offset: 64,
                    n: 2,
                    h: 5,
                    w: 4,
                    c_total,
                    channel_offset: 0,
                    channels,
                    halo,
                    precision,
                    quant: crate::layout::Quant {
                        zero,
                        ..Default::default()
                    },
                };
                let prepare = Prepare { map: &m, padding };
                let size = 64 + m.bytes() + 64;
                let mut arena = vec![0xAAu8; size];
                for item in 0..prepare_rows(&prepare) {
                    // SAFETY: the arena is `size` bytes, this thread's alone.
                    unsafe { prepare_row(arena.as_mut_ptr(), size, &prepare, item) };
                }
                for (i, byte) in arena.iter().enumerate() {
                    let want = match place(&m, i) {
                        None => 0xAA,
                        Some(p) if p.halo => zero,
                        Some(p) if padding && p.channel >= channels => 0,
                        Some(_) => 0xAA,
                    };
                    assert_eq!(
                        *byte, want,
                        "{precision:?}, halo {halo:?}, padding {padding}, byte {i}"
                    );
                }
            }
        }
    }

    /// The input step (`write_map`) writes each pixel's values in the map's precision and zeroes
    /// the channels after them up to the next pixel, and writes nothing else: not the halo, and
    /// not the channels before a map's own in a wider buffer.
    #[test]
    fn the_input_step_writes_values_and_zeroes_the_padding_after_them() {
        let quant = crate::layout::Quant {
            scale: 0.05,
            zero: 7,
        };
        let encode = |precision: Precision, v: f32| -> Vec<u8> {
            match precision {
                Precision::F32 => v.to_le_bytes().to_vec(),
                Precision::Bf16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                Precision::U8 => vec![quant.quantize(v)],
            }
        };
        let pool = ThreadPool::new(2);
        for precision in [Precision::F32, Precision::Bf16, Precision::U8] {
            for (c_total, channel_offset, halo) in [
                (3, 0, [0, 0]),
                (4, 0, [1, 2]),
                (8, 0, [0, 0]),
                (8, 2, [2, 1]),
            ] {
                let m = MapLayout {
                    offset: 64,
                    n: 2,
                    h: 5,
                    w: 7,
                    c_total,
                    channel_offset,
                    channels: 3,
                    halo,
                    precision,
                    quant,
                };
                let x: Vec<f32> = (0..2 * 3 * 5 * 7).map(|i| i as f32 * 0.37 - 9.0).collect();
                let size = 64 + m.bytes() + 64;
                let mut arena = Arena::new(size).expect("a small arena");
                // SAFETY: the arena holds `size` bytes.
                unsafe { std::ptr::write_bytes(arena.as_mut_ptr(), 0xAA, size) };
                write_map(&mut arena, &m, &x, &pool);
                // SAFETY: as above; nothing else writes it now.
                let bytes = unsafe { std::slice::from_raw_parts(arena.as_mut_ptr(), size) };
                for (i, byte) in bytes.iter().enumerate() {
                    let want = match place(&m, i) {
                        None => 0xAA,
                        Some(p) if p.halo || p.channel < channel_offset => 0xAA,
                        Some(p) if p.channel < channel_offset + 3 => {
                            let (y, xx) = (p.row - halo[0], p.column - halo[1]);
                            let c = p.channel - channel_offset;
                            let v = x[((p.image * 3 + c) * 5 + y) * 7 + xx];
                            encode(precision, v)[p.byte]
                        }
                        Some(_) => 0,
                    };
                    assert_eq!(
                        *byte, want,
                        "{precision:?}, {c_total} channels from {channel_offset}, halo {halo:?}, byte {i}"
                    );
                }
            }
        }
    }
}
