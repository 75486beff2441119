//! Differential testing of the whole compiler on random Inception-like networks: a seeded
//! generator builds stems, Inception blocks (branches of 1×1, k×1, 1×k and k×k conv-BN-ReLU chains
//! and pools, concats, concats of concats), residual blocks (concat → 1×1 up-projection → scale →
//! add → optional ReLU) and reductions (stride-2 valid branches and max pools), with odd sizes and
//! channel counts that are rarely multiples of 4; each network runs through the pass pipeline and
//! the Cranelift backend (in process) and must match the interpreter on the original graph.
//!
//! `INCEPTC_RANDOM_GRAPHS=N cargo test --release --test random_graphs` runs N networks (default 40;
//! the long run is 2,000); a failure prints the seed and the network's IR text.

use inceptc::codegen::jit::JitProgram;
use inceptc::codegen::{LowerOptions, Program};
use inceptc::passes::run_pipeline;
use inceptc_graphs::blocks::{column, pointwise, row, square, Builder, ConvSpec};
use inceptc_ir::op::{AvgPoolAttrs, Conv2dAttrs, Op, PoolAttrs, ScaleAttrs};
use inceptc_ir::{interp, text, Graph, NodeId, Tensor};
use inceptc_runtime::exec::Arena;
use inceptc_runtime::pool::ThreadPool;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

#[test]
fn random_inception_networks_compile_to_what_the_interpreter_computes() {
    let count: u64 = std::env::var("INCEPTC_RANDOM_GRAPHS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let pool = ThreadPool::new(2);
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..count {
        let (original, size) = network(seed);
        seen.extend(features(&original));
        let dump = text::print(&original);
        inceptc_ir::verify(&original).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{dump}"));
        let mut optimized = original.clone();
        run_pipeline(&mut optimized, None).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{dump}"));
        let batch = 1 + (seed % 2) as usize;
        let x = input(batch, size, seed);
        let want = interp::run(&original, &x).unwrap();
        let checked = LowerOptions {
            check_bounds: true,
            ..LowerOptions::default()
        };
        let program = Program::with_options(&optimized, batch, size, size, &checked)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{dump}"));
        let jit = JitProgram::new(program).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{dump}"));
        let model = jit.model();
        let mut arena = Arena::new(model.arena_bytes).unwrap();
        let got = model
            .run(&mut arena, x.data(), &pool)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{dump}"));
        let got = Tensor::new(want[0].shape().to_vec(), got[0].clone()).unwrap();
        let err = got.relative_error(&want[0]).unwrap();
        assert!(
            err <= TOLERANCE,
            "seed {seed}: error {err:e} at {size}×{size}, batch {batch}\n{dump}"
        );
    }
    eprintln!("{count} random networks match the interpreter; features {seen:?}");
    if count >= 40 {
        for f in FEATURES {
            assert!(seen.contains(f), "no network had `{f}`: {seen:?}");
        }
    }
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
