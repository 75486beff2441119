//! Differential testing of the whole compiler on random Inception-like networks: a seeded
//! generator builds stems, Inception blocks (branches of 1×1, k×1, 1×k and k×k conv-BN-ReLU chains
//! and pools, concats, concats of concats), residual blocks (concat → 1×1 up-projection → scale →
//! add → optional ReLU) and reductions (stride-2 valid branches and max pools), with odd sizes and
//! channel counts that are rarely multiples of 4; each network runs through the pass pipeline and
//! the Cranelift backend (in process) and must match the interpreter on the original graph.
//!
//! Every comparison runs under the bounds check (`--check-bounds`). A failing network is reduced
//! (to the earliest node that fails on its own, then bypassing nodes while it still fails) and
//! saved as IR text under target/random-graph-failures/; once fixed it goes into
//! tests/ir/regressions/, which this test replays first.
//!
//! `INCEPTC_RANDOM_GRAPHS=N cargo test --release --test random_graphs` runs N networks (default 40;
//! the long run is 2,000).

use inceptc::codegen::jit::JitProgram;
use inceptc::codegen::tile::Tier;
use inceptc::codegen::{ItemOrder, LowerOptions, Program};
use inceptc::passes::run_pipeline;
use inceptc_graphs::blocks::{column, pointwise, row, square, Builder, ConvSpec};
use inceptc_ir::op::{AvgPoolAttrs, Conv2dAttrs, Op, PoolAttrs, ScaleAttrs};
use inceptc_ir::quant::{calibrate, Calibration, Int8Params};
use inceptc_ir::{interp, text, Graph, NodeId, Tensor};
use inceptc_runtime::exec::missing_features_for;
use inceptc_runtime::exec::Arena;
use inceptc_runtime::layout::Precision;
use inceptc_runtime::pool::ThreadPool;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::Cell;

/// max |compiled − interpreter| / max |interpreter| allowed.
const TOLERANCE: f64 = 1e-4;

struct Gen {
    rng: ChaCha8Rng,
    b: Builder,
    names: usize,
}

impl Gen {
    fn name(&mut self, what: &str) -> String {
        self.names += 1;
        format!("{what}{}", self.names)
    }

    fn channels(&mut self) -> usize {
        self.rng.gen_range(1..=13)
    }

    /// A "same"-size conv-BN-ReLU: 1×1, k×k, 1×k or k×1 with odd k.
    fn same_conv(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        let out = self.channels();
        let k = [3, 5, 7][self.rng.gen_range(0..3)];
        let spec = match self.rng.gen_range(0..4) {
            0 => pointwise(out),
            1 => square(out, 3, 1),
            2 => row(out, k),
            _ => column(out, k),
        };
        let name = self.name("conv");
        (self.b.conv_bn_relu(x, &name, c, spec), out)
    }

    /// A stride-2 "valid" conv-BN-ReLU (3×3), or a 3×3/2 max pool.
    fn reduce(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        if self.rng.gen_bool(0.3) {
            let name = self.name("pool");
            return (self.b.max_pool_3x3_s2(x, &name), c);
        }
        let out = self.channels();
        let name = self.name("conv");
        let spec: ConvSpec = square(out, 3, 0).stride(2);
        (self.b.conv_bn_relu(x, &name, c, spec), out)
    }

    /// One branch of an Inception block: a chain of same-size convs, a pool then a 1×1, or a
    /// split into two convs that are concatenated (Inception-C).
    fn branch(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        match self.rng.gen_range(0..6) {
            0 => {
                let name = self.name("avg");
                let include = self.rng.gen_bool(0.2);
                let pooled = self.b.add(
                    Op::AvgPool(AvgPoolAttrs {
                        window: PoolAttrs {
                            kernel: [3, 3],
                            stride: [1, 1],
                            padding: [1, 1],
                        },
                        count_include_pad: include,
                        relu: false,
                    }),
                    &[x],
                    name,
                );
                self.same_conv_pointwise(pooled, c)
            }
            1 => {
                let (y, cy) = self.same_conv(x, c);
                let (a, ca) = self.same_conv(y, cy);
                let (b, cb) = self.same_conv(y, cy);
                let name = self.name("split");
                (self.b.concat(&[a, b], &name), ca + cb)
            }
            _ => {
                let (mut y, mut cy) = (x, c);
                for _ in 0..self.rng.gen_range(1..=3) {
                    (y, cy) = self.same_conv(y, cy);
                }
                (y, cy)
            }
        }
    }

    fn same_conv_pointwise(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        let out = self.channels();
        let name = self.name("conv");
        (self.b.conv_bn_relu(x, &name, c, pointwise(out)), out)
    }

    fn inception(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        let mut parts = Vec::new();
        let mut total = 0;
        for _ in 0..self.rng.gen_range(1..=4) {
            let (y, cy) = self.branch(x, c);
            parts.push(y);
            total += cy;
        }
        let name = self.name("cat");
        (self.b.concat(&parts, &name), total)
    }

    fn residual(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        let (cat, ccat) = self.inception(x, c);
        let up = self.name("up");
        let up = self.b.add(
            Op::Conv2d(Conv2dAttrs {
                in_channels: ccat,
                out_channels: c,
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
                bias: true,
            }),
            &[cat],
            up,
        );
        let factor = [0.1f32, 0.17, 0.2, 1.0][self.rng.gen_range(0..4)];
        let scaled = self.name("scale");
        let scaled = self.b.add(Op::Scale(ScaleAttrs { factor }), &[up], scaled);
        let add = self.name("add");
        let sum = self.b.add(Op::Add, &[x, scaled], add);
        if self.rng.gen_bool(0.7) {
            let relu = self.name("relu");
            (self.b.add(Op::Relu, &[sum], relu), c)
        } else {
            (sum, c)
        }
    }

    fn reduction(&mut self, x: NodeId, c: usize) -> (NodeId, usize) {
        let mut parts = Vec::new();
        let mut total = 0;
        for _ in 0..self.rng.gen_range(1..=3) {
            let (mut y, mut cy) = (x, c);
            if self.rng.gen_bool(0.4) {
                (y, cy) = self.same_conv(y, cy);
            }
            let (y, cy) = self.reduce(y, cy);
            parts.push(y);
            total += cy;
        }
        let name = self.name("red");
        (self.b.concat(&parts, &name), total)
    }
}

/// A random network and an input size it accepts.
fn network(seed: u64) -> (Graph, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let size = rng.gen_range(13..=27);
    let (b, input) = Builder::new("random", "stem");
    let mut g = Gen { rng, b, names: 0 };
    let (mut x, mut c) = g.same_conv(input, 3);
    let mut reductions = 0;
    for i in 0..g.rng.gen_range(1..=4) {
        g.b.block(format!("block.{i}"));
        (x, c) = match g.rng.gen_range(0..3) {
            0 => g.inception(x, c),
            1 => g.residual(x, c),
            _ if reductions < 2 => {
                reductions += 1;
                g.reduction(x, c)
            }
            _ => g.inception(x, c),
        };
    }
    g.b.block("head");
    let classes = g.rng.gen_range(1..=11);
    let out = g.b.classifier_head(x, "pool", "fc", c, classes);
    let mut graph = g.b.finish(out);
    inceptc_ir::init::seed_weights(&mut graph, seed);
    (graph, size)
}

fn input(n: usize, size: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let data = (0..n * 3 * size * size)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    Tensor::new(vec![n, 3, size, size], data).unwrap()
}

/// Optimizes and compiles `original` (weights bound) for every register-tile tier this machine
/// runs, runs it under the bounds check on a seeded input and compares with the interpreter on
/// `original`; `Err` says what went wrong and on which tier (a panic anywhere counts).
fn check(original: &Graph, batch: usize, size: usize, seed: u64) -> Result<(), String> {
    for tier in Tier::ALL.into_iter().filter(|t| t.runs_here()) {
        let options = LowerOptions {
            tier,
            ..LowerOptions::default()
        };
        check_with(original, batch, size, seed, &options)
            .map_err(|e| format!("{e} on {}", tier.name()))?;
    }
    // bf16 on the tile families this machine runs, bit for bit against the interpreter's bf16
    // mode (which sums the AMX tiles' convolutions as AMX does).
    for amx in bf16_families() {
        let options = LowerOptions {
            tier: Tier::V4,
            precision: Precision::Bf16,
            amx,
            ..LowerOptions::default()
        };
        let family = if amx { "AMX" } else { "zmm" };
        check_with(original, batch, size, seed, &options)
            .map_err(|e| format!("{e} in bf16 with {family} tiles"))?;
    }
    // int8 bit for bit against the interpreter's int8 mode, calibrated on the input itself, on
    // the zmm tiles and (where the host has AMX-INT8) the AMX ones.
    for amx in [false, true] {
        if !missing_features_for(Tier::V4.runtime(), Precision::U8, amx).is_empty() {
            continue;
        }
        let options = LowerOptions {
            tier: Tier::V4,
            precision: Precision::U8,
            amx,
            ..LowerOptions::default()
        };
        let family = if amx { "AMX" } else { "zmm" };
        check_with(original, batch, size, seed, &options)
            .map_err(|e| format!("{e} in int8 with {family} tiles"))?;
    }
    Ok(())
}

// Networks checked in int8, per test thread (each test counts its own).
thread_local! {
    static INT8_CHECKED: Cell<usize> = const { Cell::new(0) };
}

/// The bf16 tile families this CPU runs: zmm (`false`) and AMX (`true`).
fn bf16_families() -> Vec<bool> {
    [false, true]
        .into_iter()
        .filter(|&amx| missing_features_for(Tier::V4.runtime(), Precision::Bf16, amx).is_empty())
        .collect()
}

fn check_with(
    original: &Graph,
    batch: usize,
    size: usize,
    seed: u64,
    options: &LowerOptions,
) -> Result<(), String> {
    let outcome = std::panic::catch_unwind(|| -> Result<(), String> {
        inceptc_ir::verify(original).map_err(|e| e.to_string())?;
        let mut optimized = original.clone();
        run_pipeline(&mut optimized, None).map_err(|e| e.to_string())?;
        // Signed: the input has a zero point, which the padded stems read from its halo.
        let x = input(batch, size, seed);
        let mut options = LowerOptions {
            check_bounds: true,
            item_order: Some(match inceptc_suite::panel_major_for(x.data()) {
                true => ItemOrder::PanelMajor,
                false => ItemOrder::GroupMajor,
            }),
            ..options.clone()
        };
        let lower = |options: &LowerOptions| {
            Program::with_options(&optimized, batch, size, size, options).map_err(|e| e.to_string())
        };
        let (want, tolerance) = match options.precision {
            Precision::F32 => (interp::run(original, &x), TOLERANCE),
            // With AMX tiles, the interpreter sums their convolutions as AMX does.
            Precision::Bf16 => {
                let amx = lower(&options)?.amx_nodes();
                let on_amx = |id| amx.contains(&optimized.node(id).name);
                (interp::run_bf16_amx(&optimized, &x, &on_amx), 0.0)
            }
            Precision::U8 => {
                let ranges = calibrate(&optimized, std::slice::from_ref(&x), Calibration::MinMax)
                    .map_err(|e| e.to_string())?;
                options.int8 = Int8Params::new(&optimized, &ranges).map_err(|e| e.to_string())?;
                if !options.amx {
                    INT8_CHECKED.set(INT8_CHECKED.get() + 1);
                }
                (interp::run_int8(&optimized, &x, &options.int8), 0.0)
            }
        };
        let want = want.map_err(|e| e.to_string())?;
        let program = lower(&options)?;
        let jit = JitProgram::new(program).map_err(|e| e.to_string())?;
        let model = jit.model();
        let mut arena = Arena::new(model.arena_bytes).map_err(|e| e.to_string())?;
        let got =
            inceptc_suite::run_in_both_orders(&model, &mut arena, x.data(), &ThreadPool::new(2))?;
        for (g, w) in got.iter().zip(&want) {
            let g = Tensor::new(w.shape().to_vec(), g.clone()).ok_or("output size")?;
            let err = g.relative_error(w).ok_or("no error measure")?;
            if err > tolerance {
                return Err(format!("error {err:e} at {size}×{size}, batch {batch}"));
            }
        }
        Ok(())
    });
    outcome.unwrap_or_else(|_| Err("panicked".into()))
}

/// Keeps only `output` and what it depends on (and the input).
fn truncated(g: &Graph, output: NodeId) -> Graph {
    let mut t = g.clone();
    let mut keep = t.ancestors(output);
    keep.insert(output);
    let drop: Vec<NodeId> = t
        .node_ids()
        .filter(|id| !keep.contains(id) && !matches!(t.node(*id).op, Op::Input(_)))
        .collect();
    t.set_outputs(vec![output]);
    for id in drop {
        t.remove(id);
    }
    t
}

/// Shrinks a graph on which `fails` holds to a small one on which it still holds: first to the
/// earliest node (in topological order) whose value alone fails, then by bypassing, one at a time
/// and while it still fails, every node whose result has its first operand's shape (BatchNorm,
/// ReLU, scales, same-size convolutions and pools).
fn reduce(g: &Graph, batch: usize, size: usize, fails: &dyn Fn(&Graph) -> bool) -> Graph {
    let order = g.topo_order().expect("acyclic");
    let mut best = order
        .iter()
        .filter(|id| !matches!(g.node(**id).op, Op::Input(_)))
        .map(|id| truncated(g, *id))
        .find(|t| fails(t))
        .unwrap_or_else(|| g.clone());
    loop {
        let shapes = inceptc_ir::infer_shapes(&best, batch, size, size).expect("shapes");
        let output = best.outputs()[0];
        let candidates: Vec<NodeId> = best
            .topo_order()
            .expect("acyclic")
            .into_iter()
            .filter(|id| *id != output)
            .filter(|id| {
                let inputs = best.inputs(*id);
                !inputs.is_empty() && shapes[&inputs[0]] == shapes[id]
            })
            .collect();
        let smaller = candidates.into_iter().find_map(|id| {
            let mut t = best.clone();
            let operand = t.inputs(id)[0];
            t.replace_uses(id, operand);
            let t = truncated(&t, t.outputs()[0]);
            (inceptc_ir::verify(&t).is_ok() && fails(&t)).then_some(t)
        });
        match smaller {
            Some(t) => best = t,
            None => return best,
        }
    }
}

/// A reduced failing graph as a regression file for tests/ir/regressions/: the IR text with a
/// first line that says how to run it.
fn regression_text(g: &Graph, batch: usize, size: usize, seed: u64, why: &str) -> String {
    format!(
        "# regression: batch {batch} size {size} seed {seed}\n# found by random_graphs: {why}\n{}",
        text::print(g)
    )
}

/// Runs a regression file: its first line gives the batch, input size and seed (of the weights
/// and the input).
fn check_regression(source: &str) -> Result<(), String> {
    let header = source.lines().next().unwrap_or_default();
    let words: Vec<&str> = header.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let at = words.iter().position(|w| *w == name)?;
        words.get(at + 1)?.parse().ok()
    };
    let (Some(batch), Some(size), Some(seed)) = (field("batch"), field("size"), field("seed"))
    else {
        return Err(format!(
            "the first line must be `# regression: batch N size S seed K`, not `{header}`"
        ));
    };
    let mut g = text::parse(source).map_err(|e| e.to_string())?;
    inceptc_ir::init::seed_weights(&mut g, seed);
    check(&g, batch as usize, size as usize, seed)
}

#[test]
fn random_inception_networks_compile_to_what_the_interpreter_computes() {
    // First every reduced failure found before, then the random networks.
    let dir = inceptc_suite::root().join("tests/ir/regressions");
    let mut regressions = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        check_regression(&source).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        regressions += 1;
    }
    let count: u64 = std::env::var("INCEPTC_RANDOM_GRAPHS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut seen = std::collections::BTreeSet::new();
    let int8 = missing_features_for(Tier::V4.runtime(), Precision::U8, false).is_empty();
    let checked = INT8_CHECKED.get();
    for seed in 0..count {
        let (original, size) = network(seed);
        seen.extend(features(&original));
        let batch = 1 + (seed % 2) as usize;
        let Err(why) = check(&original, batch, size, seed) else {
            continue;
        };
        let reduced = reduce(&original, batch, size, &|g| {
            check(g, batch, size, seed).is_err()
        });
        let text = regression_text(&reduced, batch, size, seed, &why);
        let saved =
            inceptc_suite::root().join(format!("target/random-graph-failures/seed-{seed}.txt"));
        std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
        std::fs::write(&saved, &text).unwrap();
        panic!(
            "seed {seed}: {why}; reduced from {} to {} nodes, saved as {} (copy it into \
             tests/ir/regressions/ once fixed):\n{text}",
            original.len(),
            reduced.len(),
            saved.display()
        );
    }
    let tiers: Vec<String> = Tier::ALL
        .iter()
        .map(|t| match t.runs_here() {
            true => t.name().to_string(),
            false => format!("not {} (this CPU cannot run it)", t.name()),
        })
        .collect();
    let families: Vec<&str> = bf16_families()
        .into_iter()
        .map(|amx| if amx { "bf16 AMX" } else { "bf16 zmm" })
        .collect();
    eprintln!(
        "{regressions} regressions and {count} random networks match the interpreter on {tiers:?} \
         and {families:?}; features {seen:?}"
    );
    match int8 {
        true => {
            let checked = INT8_CHECKED.get() - checked;
            let amx = missing_features_for(Tier::V4.runtime(), Precision::U8, true).is_empty();
            let families = if amx {
                "zmm and AMX"
            } else {
                "zmm (no AMX-INT8 here)"
            };
            eprintln!(
                "int8: {checked} of {count} random networks match the int8 interpreter on {families} \
                 tiles"
            );
            assert_eq!(checked, count as usize, "every network runs in int8");
        }
        false => eprintln!("SKIPPED int8: this CPU lacks AVX512-VNNI"),
    }
    if count >= 40 {
        for f in FEATURES {
            assert!(seen.contains(f), "no network had `{f}`: {seen:?}");
        }
    }
}

/// The reducer on a real miscompilation: a convolution deep in a random network made to write
/// one pixel too far (the backend's test-only fault). The reduced graph still fails, ends at that
/// convolution (nothing after it is needed) and is much smaller; its regression text parses back
/// to the same failure.
#[test]
fn a_failing_network_is_reduced_to_a_small_regression() {
    let (original, size) = network(5);
    let (batch, seed) = (1, 5);
    let convs: Vec<String> = original
        .topo_order()
        .unwrap()
        .into_iter()
        .filter(|id| matches!(original.node(*id).op, Op::Conv2d(_)))
        .map(|id| original.node(id).name.clone())
        .collect();
    let victim = convs[convs.len() * 2 / 3].clone();
    let fault = LowerOptions {
        check_bounds: true,
        inject_fault: Some(victim.clone()),
        ..LowerOptions::default()
    };
    let fails = |g: &Graph| {
        // The fault lands on the fused convolution that keeps the conv's name; a graph without
        // it cannot fail this way.
        g.find(&victim).is_some()
            && check_with(g, batch, size, seed, &fault).is_err_and(|e| e.contains("bounds check"))
    };
    assert!(check(&original, batch, size, seed).is_ok());
    assert!(
        fails(&original),
        "the injected fault is caught on the whole network"
    );
    let reduced = reduce(&original, batch, size, &fails);
    assert!(fails(&reduced));
    let out = reduced.outputs()[0];
    assert_eq!(reduced.node(out).name, victim, "{}", text::print(&reduced));
    assert!(
        reduced.len() * 2 < original.len(),
        "{} of {} nodes left:\n{}",
        reduced.len(),
        original.len(),
        text::print(&reduced)
    );
    let saved = regression_text(&reduced, batch, size, seed, "injected fault");
    let mut back = text::parse(&saved).unwrap();
    inceptc_ir::init::seed_weights(&mut back, seed);
    assert!(fails(&back), "the regression text reproduces the failure");
    assert!(
        check_regression(&saved).is_ok(),
        "without the fault it passes"
    );
    eprintln!(
        "reduced {} → {} nodes:\n{saved}",
        original.len(),
        reduced.len()
    );
}

/// What the generator must produce across a run of 40 or more networks.
const FEATURES: &[&str] = &[
    "residual add",
    "scale",
    "avg pool",
    "max pool",
    "concat of concats",
    "stride 2",
    "1×k",
    "k×1",
    "3×3",
];

fn features(g: &Graph) -> Vec<&'static str> {
    let mut out = Vec::new();
    for id in g.node_ids() {
        let node = g.node(id);
        match &node.op {
            Op::Add => out.push("residual add"),
            Op::Scale(_) => out.push("scale"),
            Op::AvgPool(_) => out.push("avg pool"),
            Op::MaxPool(_) => out.push("max pool"),
            Op::Concat
                if g.inputs(id)
                    .iter()
                    .any(|i| matches!(g.node(*i).op, Op::Concat)) =>
            {
                out.push("concat of concats")
            }
            Op::Conv2d(a) => out.push(match (a.kernel, a.stride) {
                (_, [2, 2]) => "stride 2",
                ([1, k], _) if k > 1 => "1×k",
                ([k, 1], _) if k > 1 => "k×1",
                ([3, 3], _) => "3×3",
                _ => "1×1",
            }),
            _ => {}
        }
    }
    out
}
