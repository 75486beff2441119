//! Block builders shared by the networks: plain functions that append nodes to a graph and return
//! the block's output. Every name they give is the PyTorch `state_dict` key prefix of the module
//! that owns the node, so that checkpoints bind by name.

use inceptc_ir::op::*;
use inceptc_ir::{Graph, NodeId};

/// BatchNorm eps of every public Inception checkpoint (all TensorFlow ports).
pub const BN_EPS: f32 = 0.001;

/// A graph under construction and the block that new nodes belong to.
pub struct Builder {
    /// The graph built so far.
    pub graph: Graph,
    block: String,
}

/// One convolution of a branch: output channels, kernel and symmetric padding (stride 1 unless
/// given with [`ConvSpec::stride`]).
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    /// Output channels.
    pub out: usize,
    /// Taps along (height, width).
    pub kernel: Hw,
    /// Stride along both axes.
    pub stride: usize,
    /// Zero padding rows and columns on each side.
    pub padding: Hw,
}

/// A k×k convolution with padding `pad`, stride 1.
pub const fn square(out: usize, k: usize, pad: usize) -> ConvSpec {
    ConvSpec {
        out,
        kernel: [k, k],
        stride: 1,
        padding: [pad, pad],
    }
}

/// A 1×1 convolution.
pub const fn pointwise(out: usize) -> ConvSpec {
    square(out, 1, 0)
}

/// A 1×k convolution padded to keep the width.
pub const fn row(out: usize, k: usize) -> ConvSpec {
    ConvSpec {
        out,
        kernel: [1, k],
        stride: 1,
        padding: [0, k / 2],
    }
}

/// A k×1 convolution padded to keep the height.
pub const fn column(out: usize, k: usize) -> ConvSpec {
    ConvSpec {
        out,
        kernel: [k, 1],
        stride: 1,
        padding: [k / 2, 0],
    }
}

impl ConvSpec {
    /// The same convolution with `stride`.
    pub const fn stride(mut self, stride: usize) -> ConvSpec {
        self.stride = stride;
        self
    }
}

impl Builder {
    /// A graph named `name` with one image input of three channels in block `first_block`.
    pub fn new(name: &str, first_block: &str) -> (Builder, NodeId) {
        let mut graph = Graph::new(name);
        let input = graph.add(
            Op::Input(InputAttrs { channels: 3 }),
            &[],
            "input",
            first_block,
        );
        (
            Builder {
                graph,
                block: first_block.to_string(),
            },
            input,
        )
    }

    /// Nodes added from now on belong to `block`.
    pub fn block(&mut self, block: impl Into<String>) {
        self.block = block.into();
    }

    /// Adds a node of `op` on `inputs` to the current block.
    pub fn add(&mut self, op: Op, inputs: &[NodeId], name: impl Into<String>) -> NodeId {
        let block = self.block.clone();
        self.graph.add(op, inputs, name, block)
    }

    /// A plain convolution named `name`.
    pub fn conv(
        &mut self,
        x: NodeId,
        name: &str,
        in_channels: usize,
        spec: ConvSpec,
        bias: bool,
    ) -> NodeId {
        self.add(
            Op::Conv2d(Conv2dAttrs {
                in_channels,
                out_channels: spec.out,
                kernel: spec.kernel,
                stride: [spec.stride; 2],
                padding: spec.padding,
                bias,
            }),
            &[x],
            name,
        )
    }

    /// The `BasicConv2d` / `ConvNormAct` module at `prefix`: `<prefix>.conv` (no bias) →
    /// `<prefix>.bn` → `<prefix>.relu`.
    pub fn conv_bn_relu(
        &mut self,
        x: NodeId,
        prefix: &str,
        in_channels: usize,
        spec: ConvSpec,
    ) -> NodeId {
        let conv = self.conv(x, &format!("{prefix}.conv"), in_channels, spec, false);
        let bn = self.add(
            Op::BatchNorm(BatchNormAttrs {
                channels: spec.out,
                eps: BN_EPS,
            }),
            &[conv],
            format!("{prefix}.bn"),
        );
        self.add(Op::Relu, &[bn], format!("{prefix}.relu"))
    }

    /// A chain of `BasicConv2d` modules. A chain of one is the module itself at `prefix`; a longer
    /// chain is an `nn.Sequential` whose modules are `<prefix>.0`, `<prefix>.1`, ….
    pub fn branch(
        &mut self,
        x: NodeId,
        prefix: &str,
        in_channels: usize,
        chain: &[ConvSpec],
    ) -> (NodeId, usize) {
        let mut value = x;
        let mut channels = in_channels;
        for (i, spec) in chain.iter().enumerate() {
            let name = if chain.len() == 1 {
                prefix.to_string()
            } else {
                format!("{prefix}.{i}")
            };
            value = self.conv_bn_relu(value, &name, channels, *spec);
            channels = spec.out;
        }
        (value, channels)
    }

    /// `nn.MaxPool2d(3, stride=2)`, no padding.
    pub fn max_pool_3x3_s2(&mut self, x: NodeId, name: &str) -> NodeId {
        self.add(
            Op::MaxPool(PoolAttrs {
                kernel: [3, 3],
                stride: [2, 2],
                padding: [0, 0],
            }),
            &[x],
            name,
        )
    }

    /// `nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`.
    pub fn avg_pool_3x3_same(&mut self, x: NodeId, name: &str) -> NodeId {
        self.add(
            Op::AvgPool(AvgPoolAttrs {
                window: PoolAttrs {
                    kernel: [3, 3],
                    stride: [1, 1],
                    padding: [1, 1],
                },
                count_include_pad: false,
                relu: false,
            }),
            &[x],
            name,
        )
    }

    /// Concatenates `parts` along channels.
    pub fn concat(&mut self, parts: &[NodeId], name: &str) -> NodeId {
        self.add(Op::Concat, parts, name)
    }

    /// Global average pool, then the classifier `name` (a linear layer with bias) to `classes`.
    pub fn classifier_head(
        &mut self,
        x: NodeId,
        pool_name: &str,
        name: &str,
        features: usize,
        classes: usize,
    ) -> NodeId {
        let pooled = self.add(Op::GlobalAvgPool, &[x], pool_name);
        self.add(
            Op::Linear(LinearAttrs {
                in_features: features,
                out_features: classes,
                bias: true,
            }),
            &[pooled],
            name,
        )
    }

    /// Finishes the graph with `output` as its only output.
    pub fn finish(mut self, output: NodeId) -> Graph {
        self.graph.set_outputs(vec![output]);
        self.graph
    }
}

/// The first layers of the TF-slim Inception-ResNet stems (paper Fig. 14; timm and facenet
/// alike): `conv2d_1a` 3×3/2 valid 32 → `conv2d_2a` 3×3 valid 32 → `conv2d_2b` 3×3 64 →
/// `maxpool_3a` → `conv2d_3b` 1×1 80 → `conv2d_4a` 3×3 valid 192.
pub fn slim_stem(b: &mut Builder, x: NodeId) -> NodeId {
    let x = b.conv_bn_relu(x, "conv2d_1a", 3, square(32, 3, 0).stride(2));
    let x = b.conv_bn_relu(x, "conv2d_2a", 32, square(32, 3, 0));
    let x = b.conv_bn_relu(x, "conv2d_2b", 32, square(64, 3, 1));
    let x = b.max_pool_3x3_s2(x, "maxpool_3a");
    let x = b.conv_bn_relu(x, "conv2d_3b", 64, pointwise(80));
    b.conv_bn_relu(x, "conv2d_4a", 80, square(192, 3, 0))
}

/// Widths of an Inception-ResNet block: its branches (each a chain of convolutions whose first
/// reads the block input) and the block input's width, which the 1×1 up-projection restores.
pub struct ResidualSpec<'a> {
    /// The block input's channels, which the up-projection restores.
    pub channels: usize,
    /// The branches, each a chain of convolutions.
    pub branches: &'a [&'a [ConvSpec]],
    /// The residual scaling of the up-projection's output.
    pub scale: f32,
    /// Whether ReLU follows the sum.
    pub relu: bool,
}

/// An Inception-ResNet block (paper Figs. 10–13, 16–19; timm `Block35/17/8`): branches →
/// `<p>.concat` → `<p>.conv2d` (1×1 with bias, no BatchNorm) → `<p>.scale` → `<p>.add` (the
/// block input) → `<p>.relu` unless `relu` is false.
pub fn residual_block(b: &mut Builder, x: NodeId, p: &str, spec: &ResidualSpec) -> NodeId {
    let mut parts = Vec::new();
    let mut width = 0;
    for (i, chain) in spec.branches.iter().enumerate() {
        let (out, c) = b.branch(x, &format!("{p}.branch{i}"), spec.channels, chain);
        parts.push(out);
        width += c;
    }
    let cat = b.concat(&parts, &format!("{p}.concat"));
    let up = b.conv(
        cat,
        &format!("{p}.conv2d"),
        width,
        pointwise(spec.channels),
        true,
    );
    let scaled = b.add(
        Op::Scale(ScaleAttrs { factor: spec.scale }),
        &[up],
        format!("{p}.scale"),
    );
    let sum = b.add(Op::Add, &[scaled, x], format!("{p}.add"));
    if spec.relu {
        b.add(Op::Relu, &[sum], format!("{p}.relu"))
    } else {
        sum
    }
}

/// Reduction-A (paper Fig. 7; timm `ReductionA`, `Mixed_6a`): `branch0` 3×3/2 valid to `n` ‖
/// `branch1` 1×1 `k` → 3×3 `l` → 3×3/2 valid `m` ‖ `branch2` max pool 3×3/2. Returns the output and
/// its width.
pub fn reduction_a(
    b: &mut Builder,
    x: NodeId,
    p: &str,
    channels: usize,
    [k, l, m, n]: [usize; 4],
) -> (NodeId, usize) {
    let (b0, _) = b.branch(
        x,
        &format!("{p}.branch0"),
        channels,
        &[square(n, 3, 0).stride(2)],
    );
    let (b1, _) = b.branch(
        x,
        &format!("{p}.branch1"),
        channels,
        &[pointwise(k), square(l, 3, 1), square(m, 3, 0).stride(2)],
    );
    let b2 = b.max_pool_3x3_s2(x, &format!("{p}.branch2"));
    (b.concat(&[b0, b1, b2], p), n + m + channels)
}

/// The Inception-ResNet Reduction-B (paper Figs. 12 and 18; timm and facenet `Mixed_7a`): three
/// branches 1×1 → … → 3×3/2 valid, each given by its widths, ‖ `branch3` max pool 3×3/2.
pub fn reduction_b_resnet(
    b: &mut Builder,
    x: NodeId,
    p: &str,
    channels: usize,
    widths: [&[usize]; 3],
) -> (NodeId, usize) {
    let mut parts = Vec::new();
    let mut total = channels;
    for (i, w) in widths.iter().enumerate() {
        let chain: Vec<ConvSpec> = w
            .iter()
            .enumerate()
            .map(|(j, out)| match j {
                0 => pointwise(*out),
                j if j + 1 == w.len() => square(*out, 3, 0).stride(2),
                _ => square(*out, 3, 1),
            })
            .collect();
        let (out, c) = b.branch(x, &format!("{p}.branch{i}"), channels, &chain);
        parts.push(out);
        total += c;
    }
    parts.push(b.max_pool_3x3_s2(x, &format!("{p}.branch3")));
    (b.concat(&parts, p), total)
}
