//! The operations of the graph IR, at the level of the paper's figures, with complete attribute
//! structs and the parameter tensors each op owns.

use std::fmt;

/// A pair of sizes along (height, width).
pub type Hw = [usize; 2];

/// The graph's image input: an NCHW tensor with `channels` channels.
#[derive(Clone, Debug, PartialEq)]
pub struct InputAttrs {
    /// Channels of the image (3 for RGB).
    pub channels: usize,
}

/// 2-D convolution, NCHW, symmetric zero padding (`padding` rows above and below, columns left and
/// right), no groups, no dilation.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dAttrs {
    /// Channels of the operand.
    pub in_channels: usize,
    /// Channels of the result (filters).
    pub out_channels: usize,
    /// Taps along (height, width).
    pub kernel: Hw,
    /// Step between output positions along (height, width).
    pub stride: Hw,
    /// Zero rows above and below, and columns left and right.
    pub padding: Hw,
    /// Whether the op owns a `bias` parameter of `out_channels` values.
    pub bias: bool,
}

/// Inference-mode batch normalization over channels (BatchNorm2d on maps, BatchNorm1d on vectors):
/// `y = (x − running_mean) / sqrt(running_var + eps) · weight + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormAttrs {
    /// Channels (maps) or features (vectors) normalized.
    pub channels: usize,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// Max or average pooling window; padding is symmetric like [`Conv2dAttrs::padding`]. Output size
/// is rounded down (PyTorch's `ceil_mode = False`).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolAttrs {
    /// Window size along (height, width).
    pub kernel: Hw,
    /// Step between windows along (height, width).
    pub stride: Hw,
    /// Padding rows and columns on each side (max pooling ignores them).
    pub padding: Hw,
}

/// Average pooling. With `count_include_pad = false` the divisor counts only the window's cells
/// inside the image; with `true` it counts the cells inside the padded image (PyTorch semantics).
#[derive(Clone, Debug, PartialEq)]
pub struct AvgPoolAttrs {
    /// The window.
    pub window: PoolAttrs,
    /// Whether the divisor counts padded cells.
    pub count_include_pad: bool,
    /// Set by `sink-avg-pool`: `max(0, ·)` of the mean (the ReLU of the 1×1 convolution that
    /// followed the pool and now precedes it).
    pub relu: bool,
}

/// A convolution with its epilogue, made by the `fuse-epilogue` pass: the convolution (with its
/// bias), then, with `residual`, plus a second operand of the output's shape, then, with `relu`,
/// `max(0, ·)`. The operands are the input and, with `residual`, the residual.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedConvAttrs {
    /// The convolution, with its bias.
    pub conv: Conv2dAttrs,
    /// Whether a second operand (the residual) is added.
    pub residual: bool,
    /// Whether ReLU ends the epilogue.
    pub relu: bool,
    /// Set by `plan-memory`: the result overwrites the residual operand's storage (no other reader
    /// of the residual runs after this conv).
    pub in_place: bool,
}

/// Multiplication by a constant.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleAttrs {
    /// The constant.
    pub factor: f32,
}

/// Fully connected layer on `[N, in_features]`: `y = x · weightᵀ + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearAttrs {
    /// Features of the operand.
    pub in_features: usize,
    /// Features of the result.
    pub out_features: usize,
    /// Whether the op owns a `bias` parameter of `out_features` values.
    pub bias: bool,
}

/// Row-wise L2 normalization: `y = x / max(‖x‖₂, eps)` (PyTorch's `F.normalize`).
#[derive(Clone, Debug, PartialEq)]
pub struct L2NormalizeAttrs {
    /// The smallest norm divided by.
    pub eps: f32,
}

/// One operation of the graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The image input (no operand).
    Input(InputAttrs),
    /// A convolution.
    Conv2d(Conv2dAttrs),
    /// Only after passes: a convolution with its epilogue.
    FusedConv(FusedConvAttrs),
    /// Batch normalization of a map.
    BatchNorm(BatchNormAttrs),
    /// `max(0, x)`.
    Relu,
    /// Max pooling.
    MaxPool(PoolAttrs),
    /// Average pooling.
    AvgPool(AvgPoolAttrs),
    /// Concatenation along channels, operands in order.
    Concat,
    /// Element-wise sum of two tensors of equal shape.
    Add,
    /// Multiplication by a constant (the residual scaling).
    Scale(ScaleAttrs),
    /// Mean over height and width: `[N, C, H, W]` → `[N, C]`.
    GlobalAvgPool,
    /// A fully connected layer.
    Linear(LinearAttrs),
    /// Batch normalization of vectors.
    BatchNorm1d(BatchNormAttrs),
    /// Row-wise L2 normalization.
    L2Normalize(L2NormalizeAttrs),
    /// Softmax over the features of `[N, F]`.
    Softmax,
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many operands.
    Exactly(usize),
    /// This many or more.
    AtLeast(usize),
}

impl Arity {
    /// Whether `n` operands are allowed.
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exactly(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// A parameter tensor an op owns: its role (the checkpoint key suffix) and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// The checkpoint key suffix (`weight`, `bias`, `running_mean`, …).
    pub role: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl ParamSpec {
    fn new(role: &'static str, shape: Vec<usize>) -> Self {
        ParamSpec { role, shape }
    }
}

impl Op {
    /// The op's keyword in the text format.
    pub fn keyword(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Conv2d(_) => "conv2d",
            Op::FusedConv(_) => "fused_conv",
            Op::BatchNorm(_) => "batch_norm",
            Op::Relu => "relu",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::Concat => "concat",
            Op::Add => "add",
            Op::Scale(_) => "scale",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Linear(_) => "linear",
            Op::BatchNorm1d(_) => "batch_norm_1d",
            Op::L2Normalize(_) => "l2_normalize",
            Op::Softmax => "softmax",
        }
    }

    /// How many operands the op takes.
    pub fn arity(&self) -> Arity {
        match self {
            Op::Input(_) => Arity::Exactly(0),
            Op::Concat => Arity::AtLeast(1),
            Op::Add => Arity::Exactly(2),
            Op::FusedConv(f) => Arity::Exactly(1 + f.residual as usize),
            _ => Arity::Exactly(1),
        }
    }

    /// The convolution of a `Conv2d` or `FusedConv`.
    pub fn conv(&self) -> Option<&Conv2dAttrs> {
        match self {
            Op::Conv2d(a) | Op::FusedConv(FusedConvAttrs { conv: a, .. }) => Some(a),
            _ => None,
        }
    }

    /// The parameter tensors this op owns, in the order a [`crate::Node`] stores them.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        match self {
            Op::Conv2d(a) | Op::FusedConv(FusedConvAttrs { conv: a, .. }) => {
                let mut specs = vec![ParamSpec::new(
                    "weight",
                    vec![a.out_channels, a.in_channels, a.kernel[0], a.kernel[1]],
                )];
                if a.bias {
                    specs.push(ParamSpec::new("bias", vec![a.out_channels]));
                }
                specs
            }
            Op::BatchNorm(a) | Op::BatchNorm1d(a) => {
                ["weight", "bias", "running_mean", "running_var"]
                    .into_iter()
                    .map(|role| ParamSpec::new(role, vec![a.channels]))
                    .collect()
            }
            Op::Linear(a) => {
                let mut specs = vec![ParamSpec::new(
                    "weight",
                    vec![a.out_features, a.in_features],
                )];
                if a.bias {
                    specs.push(ParamSpec::new("bias", vec![a.out_features]));
                }
                specs
            }
            _ => Vec::new(),
        }
    }

    /// Number of trainable parameters (PyTorch's `numel` over `parameters()`): BatchNorm running
    /// statistics are buffers and do not count.
    pub fn trainable_parameters(&self) -> u64 {
        self.param_specs()
            .iter()
            .filter(|s| !s.role.starts_with("running_"))
            .map(|s| s.shape.iter().product::<usize>() as u64)
            .sum()
    }
}
