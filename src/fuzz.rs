//! The bodies of the fuzz targets (fuzz/fuzz_targets/*.rs), one per reader of user files. Each
//! takes arbitrary bytes and panics only on a bug: an input is either accepted, and then must
//! satisfy the reader's promises, or refused with an error. `tests/robustness.rs` replays the
//! committed seed corpora and every reduced crash (fuzz/regressions/) through the same functions.

use std::path::Path;
use std::sync::OnceLock;

use inceptc_ir::weights::{bind, Checkpoint};
use inceptc_ir::Graph;
use inceptc_runtime::desc::Preprocess;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `cargo fuzz` knows them.
pub const TARGETS: [(&str, Target); 4] = [
    ("safetensors", safetensors),
    ("npy", npy),
    ("image", image),
    ("ir_text", ir_text),
];

/// The graph the safetensors target binds to: conv without bias, BatchNorm, ReLU, conv with
/// bias, BatchNorm. The seeds in fuzz/corpus/safetensors are its checkpoints.
const BIND_GRAPH: &str = r#"graph "fuzz" {
  %0 = input channels=3 name="input" block="b"
  %1 = conv2d %0 in=3 out=5 kernel=3x3 stride=2x2 pad=1x1 bias=false name="c1.conv" block="b"
  %2 = batch_norm %1 channels=5 eps=0.001 name="c1.bn" block="b"
  %3 = relu %2 name="c1.relu" block="b"
  %4 = conv2d %3 in=5 out=6 kernel=1x3 stride=1x1 pad=0x1 bias=true name="c2.conv" block="b"
  %5 = batch_norm %4 channels=6 eps=0.001 name="c2.bn" block="b"
  output %5
}
"#;

fn bind_graph() -> &'static Graph {
    static G: OnceLock<Graph> = OnceLock::new();
    G.get_or_init(|| inceptc_ir::text::parse(BIND_GRAPH).expect("the fuzz graph parses"))
}

/// Safetensors reading and binding: every listed tensor decodes to as many values as its shape
/// holds (or fails with an error), and a checkpoint that binds gives a graph that verifies.
pub fn safetensors(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let Ok(checkpoint) = Checkpoint::from_bytes(path, data.to_vec()) else {
        return;
    };
    let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
    for name in &names {
        let shape = checkpoint.shape(name).expect("a listed tensor has a shape");
        if let Some(Ok(tensor)) = checkpoint.tensor(name) {
            assert_eq!(tensor.len(), shape.iter().product::<usize>(), "{name}");
        }
    }
    let mut g = bind_graph().clone();
    if bind(&mut g, &checkpoint, &|_| false).is_ok() {
        inceptc_ir::verify(&g).expect("a bound graph verifies");
    }
}

/// The `.npy` reader: an accepted array holds exactly as many values as its shape.
pub fn npy(data: &[u8]) {
    if let Ok(a) = inceptc_runtime::npy::parse_f32(Path::new("fuzz.npy"), data) {
        assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
    }
}

/// Image input of the executables' runtime: a decoded image is within the size limits and both
/// preprocessings turn it into a finite tensor of the requested size.
pub fn image(data: &[u8]) {
    use inceptc_runtime::image::{decode, preprocess, MAX_SIDE};
    let Ok(img) = decode(Path::new("fuzz.png"), data) else {
        return;
    };
    assert!(img.width() >= 1 && img.height() >= 1);
    assert!(img.width() <= MAX_SIDE && img.height() <= MAX_SIDE);
    let timm = Preprocess::Timm {
        crop_pct: 0.875,
        interpolation: inceptc_runtime::resample::Filter::Bicubic,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    for how in [timm, Preprocess::Facenet] {
        let x = preprocess(&img, how, [9, 7]);
        assert_eq!(x.len(), 3 * 9 * 7);
        assert!(x.iter().all(|v| v.is_finite()));
    }
}

/// The IR text parser: what parses prints to text that parses to the same print; verification
/// and shape inference of what parses never panic.
pub fn ir_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(g) = inceptc_ir::text::parse(text) else {
        return;
    };
    let printed = inceptc_ir::text::print(&g);
    let again = inceptc_ir::text::parse(&printed)
        .unwrap_or_else(|e| panic!("printed IR does not parse: {e}\n{printed}"));
    assert_eq!(
        printed,
        inceptc_ir::text::print(&again),
        "print → parse → print differs"
    );
    if inceptc_ir::verify(&g).is_ok() {
        for (n, size) in [(1, 37), (2, 80)] {
            let _ = inceptc_ir::infer_shapes(&g, n, size, size);
        }
    }
}
