//! Helpers shared by the integration tests: golden files that print a unified diff on mismatch and
//! are rewritten with `BLESS=1`, safetensors checkpoints written from a graph's parameters, and the
//! bodies of the fuzz targets, and a run of a model with the kernels of each stage reversed.

use std::path::{Path, PathBuf};

pub mod fuzz;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the golden file `path` (relative to the repository root).
///
/// With `BLESS=1` the file is (re)written instead. A missing file is written too, except under
/// `CI=true`, where a missing snapshot is an error.
pub fn check_golden(path: impl AsRef<Path>, actual: &str) -> Result<(), String> {
    let path = root().join(path);
    let bless = std::env::var_os("BLESS").is_some_and(|v| v != "0");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => Ok(()),
        Ok(_) | Err(_) if bless => write(&path, actual),
        Err(_) if !ci => write(&path, actual),
        Err(e) => Err(format!(
            "golden file {} cannot be read ({e}); run with BLESS=1 to create it",
            path.display()
        )),
        Ok(expected) => {
            let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
                .unified_diff()
                .context_radius(3)
                .header("expected", "actual")
                .to_string();
            Err(format!(
                "{} differs from the output (BLESS=1 rewrites it):\n{diff}",
                path.display()
            ))
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One tensor of a safetensors file to write: name, dtype, shape, raw little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// `values` encoded as `dtype` (F32, F16, BF16 or F64).
    pub fn encode(
        name: &str,
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        values: &[f32],
    ) -> RawTensor {
        use safetensors::Dtype;
        let bytes = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::F64 => values
                .iter()
                .flat_map(|v| (*v as f64).to_le_bytes())
                .collect(),
            other => panic!("RawTensor::encode does not encode {other:?}"),
        };
        RawTensor {
            name: name.to_string(),
            dtype,
            shape,
            bytes,
        }
    }
}

/// Serializes tensors in the safetensors format.
pub fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .expect("shape and bytes agree");
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serializable")
}

/// The graph's bound parameters as state_dict entries `(key, shape, values)`.
pub fn state_dict(graph: &inceptc_ir::Graph) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut entries = Vec::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        for (spec, t) in node.op.param_specs().iter().zip(&node.params) {
            entries.push((
                node.param_key(spec.role),
                t.shape().to_vec(),
                t.data().to_vec(),
            ));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// One fused convolution `conv` of the input as IR text; with `residual` it adds a 1×1 `skip`
/// conv of the same input in place (stride 1 and "same" padding, bias on).
#[allow(clippy::too_many_arguments)]
pub fn conv_graph(
    ic: usize,
    oc: usize,
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [ph, pw]: [usize; 2],
    bias: bool,
    relu: bool,
    residual: bool,
) -> String {
    if residual {
        format!(
            r#"graph "t" {{
  %0 = input channels={ic} name="input" block="b"
  %1 = fused_conv %0 in={ic} out={oc} kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=false name="skip" block="b"
  %2 = fused_conv %0, %1 in={ic} out={oc} kernel={kh}x{kw} stride={sh}x{sw} pad={ph}x{pw} bias=true residual=true relu={relu} in_place=true name="conv" block="b"
  output %2
}}"#
        )
    } else {
        format!(
            r#"graph "t" {{
  %0 = input channels={ic} name="input" block="b"
  %1 = fused_conv %0 in={ic} out={oc} kernel={kh}x{kw} stride={sh}x{sw} pad={ph}x{pw} bias={bias} residual=false relu={relu} name="conv" block="b"
  output %1
}}"#
        )
    }
}

/// One random convolution: its graph text ([`conv_graph`]) and input shape `[n, ic, h, w]`.
pub struct ConvCase {
    /// The graph.
    pub body: String,
    /// The input's shape.
    pub shape: [usize; 4],
}

/// A random convolution: 1–7 taps along each axis, strides 1–2, any padding below the kernel,
/// 1–2 images of up to 13 × 17, 1 ..= `outputs` output channels, ReLU and bias drawn, and in
/// about a third of the cases that keep the size a residual. Input channels: with `block`, a
/// multiple of it (up to 3, for the AMX tiles) in 40 % of the cases; else 1 ..= `inputs`.
pub fn random_conv(
    rng: &mut impl rand::Rng,
    block: Option<usize>,
    inputs: usize,
    outputs: usize,
) -> ConvCase {
    let kh: usize = rng.gen_range(1..=7);
    let kw: usize = if rng.gen_bool(0.5) {
        kh
    } else {
        rng.gen_range(1..=7)
    };
    let (sh, sw) = (rng.gen_range(1..=2), rng.gen_range(1..=2));
    let (ph, pw) = (rng.gen_range(0..kh), rng.gen_range(0..kw));
    let h = rng.gen_range(kh.saturating_sub(2 * ph).max(1)..=13);
    let w = rng.gen_range(kw.saturating_sub(2 * pw).max(1)..=17);
    let ic = match block {
        Some(block) if rng.gen_bool(0.4) => block * rng.gen_range(1..=3),
        _ => rng.gen_range(1..=inputs),
    };
    let oc = rng.gen_range(1..=outputs);
    let n = rng.gen_range(1..=2);
    let relu = rng.gen_bool(0.5);
    // A residual needs the output's shape: stride 1 and "same" padding of an odd kernel.
    let residual = sh == 1
        && sw == 1
        && kh % 2 == 1
        && kw % 2 == 1
        && ph == kh / 2
        && pw == kw / 2
        && rng.gen_bool(0.6);
    let bias = residual || rng.gen_bool(0.8);
    ConvCase {
        body: conv_graph(ic, oc, [kh, kw], [sh, sw], [ph, pw], bias, relu, residual),
        shape: [n, ic, h, w],
    }
}

/// A seeded `[n, 3, size, size]` tensor uniform in [-1, 1): the range of a preprocessed image.
pub fn random_input(n: usize, size: usize, seed: u32) -> inceptc_ir::Tensor {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let data = (0..n * 3 * size * size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    inceptc_ir::Tensor::new(vec![n, 3, size, size], data).expect("sizes agree")
}

/// A version-1 `.npy` file whose header is the dict literal `header` (padded as numpy pads it),
/// followed by `data` zero bytes: for files the writer would not produce (other dtypes, headers
/// that lie about their data).
pub fn npy_bytes(header: &str, data: usize) -> Vec<u8> {
    let padded = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    bytes.resize(bytes.len() + data, 0);
    bytes
}

/// Runs `program` with `args` under at most 2 GiB of address space and 60 seconds (`ulimit -v`,
/// `timeout`): exit code, standard output, standard error. Hostile input must be refused within
/// bounded memory and time, so an allocation a file's header asks for fails (abort), as does a
/// hang (exit 124).
pub fn run_bounded(program: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 2097152 && exec timeout 60 "$0" "$@""#)
        .arg(program)
        .args(args)
        .output()
        .expect("sh starts");
    outcome(out)
}

/// A finished process as the tests read it: exit code (-1 when killed by a signal), standard
/// output, standard error.
pub fn outcome(out: std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a test compiles its convolutions' work items panel-major (`true`) or group-major
/// (`LowerOptions::item_order`): by the sign of the input's first value, so that a test's
/// random cases cover both numberings (the compiler picks group-major for every layer as small
/// as a test's; the executable tests run its own choice on whole networks).
pub fn panel_major_for(input: &[f32]) -> bool {
    input.first().is_some_and(|v| *v < 0.0)
}

/// Runs `model` on `input` as it runs, and again with every stage's kernels one after another,
/// the last first ([`inceptc_runtime::exec::StageOrder::Reversed`]); returns the outputs, or
/// where the two runs differ. The kernels of a stage run concurrently: were any of them to write
/// what another reads or writes, the reversed order would change the outputs.
pub fn run_in_both_orders(
    model: &inceptc_runtime::exec::Model<'_>,
    arena: &mut inceptc_runtime::exec::Arena,
    input: &[f32],
    pool: &inceptc_runtime::pool::ThreadPool,
) -> Result<Vec<Vec<f32>>, String> {
    let got = model.run(arena, input, pool).map_err(|e| e.to_string())?;
    let reversed = inceptc_runtime::exec::Model {
        stages: inceptc_runtime::exec::StageOrder::Reversed,
        ..model.clone()
    };
    let again = reversed
        .run(arena, input, pool)
        .map_err(|e| e.to_string())?;
    for (o, (a, b)) in got.iter().zip(&again).enumerate() {
        if let Some(i) = (0..a.len()).find(|i| a[*i].to_bits() != b[*i].to_bits()) {
            return Err(format!(
                "output {o} value {i}: {} with the stages' kernels together, {} with them one \
                 after another in reverse",
                a[i], b[i]
            ));
        }
    }
    Ok(got)
}
