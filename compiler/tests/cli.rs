//! The `inceptc` CLI on good and bad input: every bad checkpoint, tensor file or option gets a
//! clear message naming the file, tensor or node, and exit code 1, never a panic. (These tests live
//! in the `inceptc` package so that Cargo builds the binary for them.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_suite::{npy_bytes, run_bounded, safetensors_bytes, state_dict, RawTensor};
use safetensors::Dtype;

/// Runs this build's `inceptc` with `args`: exit code, standard output, standard error.
fn run_inceptc<I, S>(args: I) -> (i32, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inceptc"))
        .args(args)
        .output()
        .expect("inceptc starts");
    inceptc_suite::outcome(out)
}

/// facenet's InceptionResnetV1 with seeded weights, as f16 tensors plus the bookkeeping and the
/// `logits` classifier that real facenet checkpoints carry.
fn base_tensors() -> &'static Vec<RawTensor> {
    static BASE: OnceLock<Vec<RawTensor>> = OnceLock::new();
    BASE.get_or_init(|| {
        let graph = load(
            Model::InceptionResnetV1,
            Weights::Seeded(5),
            &Options::default(),
        )
        .unwrap();
        let mut tensors: Vec<RawTensor> = state_dict(&graph)
            .iter()
            .map(|(name, shape, values)| RawTensor::encode(name, Dtype::F16, shape.clone(), values))
            .collect();
        tensors.push(RawTensor {
            name: "conv2d_1a.bn.num_batches_tracked".into(),
            dtype: Dtype::I64,
            shape: vec![],
            bytes: 7i64.to_le_bytes().to_vec(),
        });
        let logits: Vec<f32> = (0..512 * 7)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        tensors.push(RawTensor::encode(
            "logits.weight",
            Dtype::F32,
            vec![7, 512],
            &logits,
        ));
        tensors.push(RawTensor::encode(
            "logits.bias",
            Dtype::F32,
            vec![7],
            &[0.1; 7],
        ));
        tensors
    })
}

/// Writes the base checkpoint after `edit` into a fresh temporary directory.
fn checkpoint(edit: impl FnOnce(&mut Vec<RawTensor>)) -> (tempfile::TempDir, PathBuf) {
    let mut tensors: Vec<RawTensor> = base_tensors()
        .iter()
        .map(|t| RawTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            bytes: t.bytes.clone(),
        })
        .collect();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("facenet.safetensors");
    std::fs::write(&path, safetensors_bytes(&tensors)).unwrap();
    (dir, path)
}

fn tensor<'a>(tensors: &'a mut [RawTensor], name: &str) -> &'a mut RawTensor {
    tensors.iter_mut().find(|t| t.name == name).unwrap()
}

/// Runs `inceptc` and checks that it failed cleanly with a message containing every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, stderr) = run_inceptc(args);
    assert_eq!(code, 1, "exit code for {args:?}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected `{needle}` in:\n{stderr}");
    }
}

fn info_with(path: &Path, needles: &[&str]) {
    let p = path.to_str().unwrap();
    fails_with(
        &["info", "--model", "inception-resnet-v1", "--weights", p],
        needles,
    );
}

fn write_npy(dir: &Path, name: &str, shape: &[usize]) -> PathBuf {
    let path = dir.join(name);
    let n = shape.iter().product();
    inceptc_runtime::npy::write_f32(&path, shape, &vec![0.25; n]).unwrap();
    path
}

#[test]
fn a_facenet_checkpoint_with_logits_and_bookkeeping_binds() {
    let (dir, path) = checkpoint(|_| {});
    let (code, stdout, stderr) = run_inceptc([
        "info",
        "--model",
        "inception-resnet-v1",
        "--weights",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("parameters   23,482,624"), "{stdout}");
    let x = write_npy(dir.path(), "x.npy", &[2, 3, 80, 80]);
    let y = dir.path().join("y.npy");
    let weights = path.to_str().unwrap();
    let (code, _, stderr) = run_inceptc([
        "interpret",
        "--model",
        "inception-resnet-v1",
        "--weights",
        weights,
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let out = inceptc_runtime::npy::read_f32(&y).unwrap();
    assert_eq!(out.shape, vec![2, 512]);
    // With --classify the same file yields the 7-way logits.
    let (code, stdout, stderr) = run_inceptc([
        "info",
        "--model",
        "inception-resnet-v1",
        "--classify",
        "--weights",
        weights,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("[1, 7] logits"), "{stdout}");
}

#[test]
fn a_missing_tensor_is_named_with_its_expected_shape() {
    let (_dir, path) = checkpoint(|t| t.retain(|t| t.name != "repeat_1.0.conv2d.bias"));
    info_with(
        &path,
        &[
            "missing tensor `repeat_1.0.conv2d.bias` (expected shape [256])",
            "facenet.safetensors",
        ],
    );
}

#[test]
fn unexpected_tensors_are_listed() {
    let (_dir, path) = checkpoint(|t| {
        t.push(RawTensor::encode(
            "extra.weight",
            Dtype::F32,
            vec![2],
            &[1.0, 2.0],
        ));
        t.push(RawTensor::encode(
            "head.fc.bias",
            Dtype::F32,
            vec![1],
            &[1.0],
        ));
    });
    info_with(
        &path,
        &[
            "unexpected tensor `extra.weight` of shape [2]",
            "unexpected tensor `head.fc.bias` of shape [1]",
        ],
    );
}

#[test]
fn a_wrong_shape_names_the_tensor_expected_and_found() {
    let (_dir, path) = checkpoint(|t| {
        let w = tensor(t, "last_linear.weight");
        w.shape = vec![512, 896, 2];
    });
    info_with(
        &path,
        &["tensor `last_linear.weight` has shape [512, 896, 2], expected [512, 1792]"],
    );
}

#[test]
fn an_unsupported_dtype_is_named() {
    let (_dir, path) = checkpoint(|t| {
        let w = tensor(t, "conv2d_1a.conv.weight");
        w.dtype = Dtype::I16;
    });
    info_with(
        &path,
        &[
            "tensor `conv2d_1a.conv.weight` has dtype I16",
            "F32, F16, BF16 and F64",
        ],
    );
}

#[test]
fn a_truncated_file_is_reported() {
    let (_dir, path) = checkpoint(|_| {});
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    info_with(&path, &["not a valid safetensors file", "truncated"]);
    std::fs::write(&path, &bytes[..5]).unwrap();
    info_with(&path, &["not a valid safetensors file"]);
    std::fs::write(&path, b"").unwrap();
    info_with(
        &path,
        &["not a valid safetensors file: the file is empty (0 bytes)"],
    );
}

/// Hostile checkpoints and tensors: headers with overlapping or out-of-range offsets, a header
/// length of 2^60, tensors whose shape disagrees with their bytes, `.npy` headers that lie about
/// the data, zero-byte files and directories: each is refused with a message naming the file and
/// exit code 1, within 2 GiB and 60 s.
#[test]
fn hostile_files_are_refused_within_bounded_memory_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inceptc = Path::new(env!("CARGO_BIN_EXE_inceptc"));
    let expect = |args: &[&str], needles: &[&str]| {
        let start = std::time::Instant::now();
        let (code, _, stderr) = run_bounded(inceptc, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: expected `{n}` in\n{stderr}");
        }
        assert!(
            start.elapsed().as_secs() < 30,
            "{args:?}: {:?}",
            start.elapsed()
        );
    };
    let safetensors = |name: &str, header: &str, data: usize| {
        let path = d.join(name);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let weights = |path: &str, needles: &[&str]| {
        expect(
            &["info", "--model", "inception-resnet-v1", "--weights", path],
            needles,
        );
    };
    let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    weights(
        &safetensors("overlap.safetensors", overlap, 12),
        &["overlap.safetensors: not a valid safetensors file: invalid offset for tensor `b`"],
    );
    let beyond = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    weights(
        &safetensors("beyond.safetensors", beyond, 8),
        &[
            "beyond.safetensors: not a valid safetensors file",
            "truncated?",
        ],
    );
    let huge = r#"{"a":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4000000000000]}}"#;
    weights(
        &safetensors("huge.safetensors", huge, 16),
        &["huge.safetensors: not a valid safetensors file"],
    );
    let disagree = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    weights(
        &safetensors("shape.safetensors", disagree, 8),
        &["shape.safetensors: not a valid safetensors file: invalid shape, data type, or offset"],
    );
    let long = d.join("long.safetensors");
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&long, bytes).unwrap();
    weights(
        long.to_str().unwrap(),
        &["long.safetensors: not a valid safetensors file: header too large"],
    );
    std::fs::write(d.join("zero.safetensors"), b"").unwrap();
    weights(
        d.join("zero.safetensors").to_str().unwrap(),
        &["zero.safetensors: not a valid safetensors file: the file is empty (0 bytes)"],
    );
    weights(
        d.to_str().unwrap(),
        &["cannot read weights file", "it is a directory"],
    );

    let npy = |name: &str, header: &str, data: usize| {
        let path = d.join(name);
        std::fs::write(&path, npy_bytes(header, data)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let out = d.join("y.npy");
    let interpret = |input: &str, needles: &[&str]| {
        let args = [
            "interpret",
            "--model",
            "inception-resnet-v1",
            "--input",
            input,
            "--output",
        ];
        expect(&[&args[..], &[out.to_str().unwrap()]].concat(), needles);
        assert!(!out.exists(), "a refused input leaves no output");
    };
    let lying = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 80, 80), }";
    interpret(
        &npy("lying.npy", lying, 400),
        &["lying.npy: not a valid .npy file: the header's shape [1, 3, 80, 80] needs 76800 bytes of data, the file holds 400"],
    );
    let giant = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }";
    interpret(
        &npy("giant.npy", giant, 16),
        &["giant.npy: not a valid .npy file: the header's shape [100000, 100000, 100000] needs 4000000000000000 bytes"],
    );
    let nested = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}1,), }}",
        "[".repeat(40)
    );
    interpret(
        &npy("nested.npy", &nested, 4),
        &["nested.npy: not a valid .npy file: expected a dimension at byte 51 of the header"],
    );
    std::fs::write(d.join("zero.npy"), b"").unwrap();
    interpret(
        d.join("zero.npy").to_str().unwrap(),
        &["zero.npy: not a valid .npy file: the file is empty (0 bytes)"],
    );
    interpret(d.to_str().unwrap(), &["cannot read", "it is a directory"]);
}

#[test]
fn a_corrupt_header_is_reported() {
    let (_dir, path) = checkpoint(|_| {});
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..19].copy_from_slice(b"{\"x\": [1, 2");
    std::fs::write(&path, &bytes).unwrap();
    info_with(
        &path,
        &["facenet.safetensors: not a valid safetensors file"],
    );
}

#[test]
fn nan_and_inf_weights_are_named() {
    let (_dir, path) = checkpoint(|t| {
        let w = tensor(t, "mixed_6a.branch0.conv.weight");
        w.bytes[10..12].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    info_with(
        &path,
        &[
            "tensor `mixed_6a.branch0.conv.weight` holds NaN at flat index 5",
            "must be finite",
        ],
    );
    let (_dir, path) = checkpoint(|t| {
        let w = tensor(t, "last_bn.running_var");
        w.bytes[0..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    });
    info_with(
        &path,
        &["tensor `last_bn.running_var` holds inf at flat index 0"],
    );
}

#[test]
fn missing_files_and_directories_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    info_with(&missing, &["cannot read weights file", "nope.safetensors"]);
    info_with(dir.path(), &["cannot read weights file", "directory"]);
}

#[test]
fn classify_needs_logits_and_applies_to_facenet_only() {
    let (_dir, path) = checkpoint(|t| t.retain(|t| !t.name.starts_with("logits.")));
    fails_with(
        &[
            "info",
            "--model",
            "inception-resnet-v1",
            "--classify",
            "--weights",
            path.to_str().unwrap(),
        ],
        &[
            "--classify needs facenet's classifier",
            "no `logits.weight`",
        ],
    );
    fails_with(
        &["info", "--model", "inception-v4", "--classify"],
        &["--classify applies to inception-resnet-v1 only"],
    );
}

fn interpret_with(x: &Path, out: &Path, needles: &[&str]) {
    fails_with(
        &[
            "interpret",
            "--model",
            "inception-resnet-v1",
            "--input",
            x.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        needles,
    );
    assert!(
        !out.exists(),
        "a failed run must not write {}",
        out.display()
    );
}

#[test]
fn bad_input_tensors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("y.npy");
    let rank3 = write_npy(dir.path(), "rank3.npy", &[3, 80, 80]);
    interpret_with(
        &rank3,
        &out,
        &["rank3.npy: the input has shape [3, 80, 80]", "[N, 3, H, W]"],
    );
    let four = write_npy(dir.path(), "four.npy", &[1, 4, 80, 80]);
    interpret_with(
        &four,
        &out,
        &["four.npy: the input has shape [1, 4, 80, 80]"],
    );
    let small = write_npy(dir.path(), "small.npy", &[1, 3, 74, 74]);
    interpret_with(
        &small,
        &out,
        &[
            "small.npy",
            "cannot run at 74×74",
            "input too small: node `",
        ],
    );
    // float64 data: write a valid .npy by hand.
    let f64_path = dir.path().join("f64.npy");
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 2, 2), }";
    std::fs::write(&f64_path, npy_bytes(header, 8 * 12)).unwrap();
    interpret_with(
        &f64_path,
        &out,
        &["f64.npy: the array has dtype '<f8'", "float32"],
    );
    let missing = dir.path().join("missing.npy");
    interpret_with(&missing, &out, &["cannot read", "missing.npy"]);
    interpret_with(dir.path(), &out, &["cannot read", "directory"]);
    std::fs::write(dir.path().join("junk.npy"), b"not numpy at all").unwrap();
    interpret_with(
        &dir.path().join("junk.npy"),
        &out,
        &["junk.npy: not a valid .npy file"],
    );
}

#[test]
fn an_unwritable_output_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let x = write_npy(dir.path(), "x.npy", &[1, 3, 75, 75]);
    let out = dir.path().join("no/such/dir/y.npy");
    interpret_with(&x, &out, &["cannot write", "y.npy"]);
}

#[test]
fn every_command_help_shows_an_example() {
    for command in [
        vec!["--help"],
        vec!["info", "--help"],
        vec!["dump", "--help"],
        vec!["interpret", "--help"],
        vec!["plan", "--help"],
        vec!["compile", "--help"],
        vec!["passes", "--help"],
    ] {
        let (code, stdout, _) = run_inceptc(&command);
        assert_eq!(code, 0);
        assert!(
            stdout.contains("Example:\n  inceptc "),
            "{command:?}:\n{stdout}"
        );
    }
}

#[test]
fn dump_writes_text_dot_and_rejects_unknown_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let dot = dir.path().join("v1.dot");
    let (code, _, stderr) = run_inceptc([
        "dump",
        "--model",
        "inception-resnet-v1",
        "--format",
        "dot",
        "-o",
        dot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&dot).unwrap();
    assert!(text.starts_with("digraph \"inception-resnet-v1\""));
    assert!(
        text.contains("label=\"inception_resnet_b.3\""),
        "blocks are clusters"
    );
    let (code, stdout, _) = run_inceptc(["dump", "--model", "inception-v4", "--block", "head"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("name=\"last_linear\""));
    fails_with(
        &[
            "dump",
            "--model",
            "inception-v4",
            "--block",
            "inception_z.0",
        ],
        &["no block `inception_z.0`", "inception_a.0"],
    );
    // DOT of one block: its cluster only, with what it reads from the stem as a grey ellipse.
    let (code, dot, stderr) = run_inceptc([
        "dump",
        "--model",
        "inception-v4",
        "--after",
        "plan-memory",
        "--format",
        "dot",
        "--block",
        "inception_a.0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dot.matches("subgraph cluster_").count(), 1, "{dot}");
    assert!(dot.contains("label=\"inception_a.0\""), "{dot}");
    assert!(
        dot.contains("features.5.maxpool\\n(stem)\", shape=ellipse"),
        "{dot}"
    );
    assert!(
        !dot.contains("features.7"),
        "nothing of the next block: {dot}"
    );
    assert!(dot.contains("tile @0 of a new 384-channel buffer"), "{dot}");
    assert!(dot.contains("arena @"), "{dot}");
}

#[test]
fn info_prints_the_published_sizes() {
    for (model, params, gmac) in [
        ("inception-v4", "42,679,816", "convolutions 12.25 GMAC"),
        (
            "inception-resnet-v2",
            "55,843,464",
            "convolutions 13.15 GMAC",
        ),
        (
            "inception-resnet-v1",
            "23,482,624",
            "convolutions 1.42 GMAC",
        ),
    ] {
        let (code, stdout, stderr) = run_inceptc(["info", "--model", model]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains(&format!("parameters   {params}\n")),
            "{model}:\n{stdout}"
        );
        assert!(stdout.contains(gmac), "{model}:\n{stdout}");
    }
    let (_, stdout, _) = run_inceptc([
        "info",
        "--model",
        "inception-v4",
        "--batch",
        "2",
        "--image-size",
        "331",
    ]);
    assert!(stdout.contains("input        [2, 3, 331, 331]"), "{stdout}");
    assert!(stdout.contains("[2, 1536, 9, 9]"), "{stdout}");
}

#[test]
fn passes_are_listed_dumpable_and_interpretable() {
    let (code, stdout, _) = run_inceptc(["passes"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("fold-batchnorm "), "{stdout}");
    let (code, stdout, stderr) = run_inceptc([
        "dump",
        "--model",
        "inception-v4",
        "--block",
        "head",
        "--after",
        "fold-batchnorm",
        "--stats",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("name=\"last_linear\""), "{stdout}");
    assert!(
        stderr.contains("fold-batchnorm") && stderr.contains("rewrites"),
        "{stderr}"
    );
    fails_with(
        &[
            "dump",
            "--model",
            "inception-v4",
            "--after",
            "fuse-everything",
        ],
        &["there is no pass `fuse-everything`", "fold-batchnorm"],
    );
    let dir = tempfile::tempdir().unwrap();
    let x = write_npy(dir.path(), "x.npy", &[1, 3, 79, 83]);
    for model in [
        "inception-v4",
        "inception-resnet-v1",
        "inception-resnet-v2",
        "inception-resnet-v2-paper",
    ] {
        let outputs: Vec<Vec<f32>> = [false, true]
            .iter()
            .map(|optimized| {
                let y = dir.path().join(format!("{model}-{optimized}.npy"));
                let mut args = vec![
                    "interpret",
                    "--model",
                    model,
                    "--input",
                    x.to_str().unwrap(),
                    "--output",
                    y.to_str().unwrap(),
                ];
                if *optimized {
                    args.push("--optimized");
                }
                let (code, _, stderr) = run_inceptc(&args);
                assert_eq!(code, 0, "{model}: {stderr}");
                inceptc_runtime::npy::read_f32(&y).unwrap().data
            })
            .collect();
        let max_ref = outputs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_diff = outputs[0]
            .iter()
            .zip(&outputs[1])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            max_diff / max_ref <= 1e-5,
            "{model}: optimized differs: {max_diff} / {max_ref}"
        );
    }
}

#[test]
fn all_passes_dumps_one_file_per_pass_and_dot_shows_the_arena() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v1-passes");
    let (code, _, stderr) = run_inceptc([
        "dump",
        "--model",
        "inception-resnet-v1",
        "--all-passes",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected = vec!["00-input.txt".to_string()];
    for (i, pass) in inceptc::passes::PIPELINE.iter().enumerate() {
        expected.push(format!("{:02}-{}.txt", i + 1, pass.name));
    }
    assert_eq!(files, expected);
    let tiled = std::fs::read_to_string(out.join(&expected[5])).unwrap();
    assert!(expected[5].ends_with("tile-concat.txt") && tiled.contains(" tile=0/"));
    assert!(!tiled.contains(" = concat "), "every concat is tiled");

    let (code, stdout, stderr) = run_inceptc([
        "dump",
        "--model",
        "inception-resnet-v1",
        "--format",
        "dot",
        "--after",
        "plan-memory",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("arena @"), "DOT gives arena offsets");
    assert!(stdout.contains("tile @"), "DOT shows concat tiles");
    assert!(stdout.contains("kernel repeat_1.0.1x1"), "{stdout}");
    // A usage error: clap's exit code 2.
    let (code, _, stderr) = run_inceptc(["dump", "--model", "inception-v4", "--all-passes"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--output"), "{stderr}");
}

#[test]
fn plan_reports_the_arena_for_batch_one_and_n() {
    let (code, stdout, stderr) = run_inceptc([
        "plan",
        "--model",
        "inception-resnet-v1",
        "--batch",
        "3",
        "--image-size",
        "99",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("batch 1 at 99×99:"), "{stdout}");
    assert!(lines[1].starts_with("batch 3 at 99×99:"), "{stdout}");
    assert!(stdout.contains("lower bound"), "{stdout}");
    let (code, stdout, _) = run_inceptc(["plan", "--model", "inception-v4", "--buffers"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("features.0.conv"), "{stdout}");
    let (code, _, stderr) = run_inceptc(["plan", "--model", "inception-v4", "--batch", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("0 is outside 1..=65536"), "{stderr}");
    fails_with(
        &["plan", "--model", "inception-v4", "--image-size", "60"],
        &["input too small"],
    );
}

/// The messages users meet most, as they read them: each command's standard error and exit code,
/// with the temporary directory shown as `$DIR`, compared with tests/snapshots/cli-errors.txt
/// (`BLESS=1` rewrites it; read the diff as a user would).
#[test]
fn common_error_messages_read_well() {
    let (dir, good) = checkpoint(|_| {});
    let d = dir.path();
    let (_keep_missing, missing) =
        checkpoint(|t| t.retain(|t| t.name != "mixed_6a.branch0.conv.weight"));
    let missing_copy = d.join("missing-one.safetensors");
    std::fs::copy(&missing, &missing_copy).unwrap();
    let (_keep_reshaped, reshaped) = checkpoint(|t| {
        let w = tensor(t, "conv2d_1a.conv.weight");
        w.shape = vec![32, 3, 3, 1];
        w.bytes.truncate(32 * 3 * 3 * 2);
    });
    let reshaped_copy = d.join("reshaped.safetensors");
    std::fs::copy(&reshaped, &reshaped_copy).unwrap();
    let truncated = d.join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let rank3 = write_npy(d, "rank3.npy", &[3, 80, 80]);
    let small = write_npy(d, "small.npy", &[1, 3, 40, 40]);
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let out = p(&d.join("y.npy"));
    let cases: Vec<Vec<String>> = [
        vec!["compile", "--model", "inception-v5", "-o", "x"],
        vec![
            "info",
            "--model",
            "inception-resnet-v1",
            "--weights",
            &p(&d.join("nope.safetensors")),
        ],
        vec!["info", "--model", "inception-resnet-v1", "--weights", &p(d)],
        vec![
            "info",
            "--model",
            "inception-resnet-v1",
            "--weights",
            &p(&missing_copy),
        ],
        vec![
            "info",
            "--model",
            "inception-resnet-v1",
            "--weights",
            &p(&reshaped_copy),
        ],
        vec![
            "info",
            "--model",
            "inception-resnet-v1",
            "--weights",
            &p(&truncated),
        ],
        vec!["info", "--model", "inception-v4", "--weights", &p(&good)],
        vec![
            "interpret",
            "--model",
            "inception-resnet-v1",
            "--input",
            &p(&rank3),
            "--output",
            &out,
        ],
        vec![
            "interpret",
            "--model",
            "inception-resnet-v1",
            "--input",
            &p(&small),
            "--output",
            &out,
        ],
        vec!["dump", "--model", "inception-v4", "--block", "mixed_9z"],
        vec![
            "dump",
            "--model",
            "inception-v4",
            "--after",
            "fuse-everything",
        ],
        vec![
            "compile",
            "--model",
            "inception-resnet-v1",
            "--batch",
            "0",
            "-o",
            "x",
        ],
    ]
    .iter()
    .map(|c| c.iter().map(|s| s.to_string()).collect())
    .collect();
    let mut snapshot = String::new();
    for args in &cases {
        let (code, _, stderr) = run_inceptc(args);
        let shown = args.join(" ").replace(&p(d), "$DIR");
        let stderr = stderr.replace(&p(d), "$DIR");
        snapshot.push_str(&format!("$ inceptc {shown}\n{stderr}[exit {code}]\n\n"));
    }
    if let Err(e) = inceptc_suite::check_golden("tests/snapshots/cli-errors.txt", &snapshot) {
        panic!("{e}");
    }
}

#[test]
fn report_lists_every_kernel_with_algorithm_tile_and_predicted_time() {
    for tier in ["x86-64-v3", "x86-64-v4"] {
        report_for(tier);
    }
}

/// `--report --threads 16`: each kernel's predicted time on 16 threads, at least its one-thread
/// time over 16 and at most its one-thread time; per block and in all, the parallel efficiency.
/// (`--threads` also chooses the splits; `executable.rs` checks the outputs stay the same.)
#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn report_predicts_time_on_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("v1.o");
    let obj = obj.to_str().unwrap();
    let (code, stdout, stderr) = run_inceptc([
        "compile",
        "--model",
        "inception-resnet-v1",
        "--emit",
        "obj",
        "--report",
        "--threads",
        "16",
        "--target-cpu",
        "x86-64-v4",
        "-q",
        "-o",
        obj,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].trim_end().ends_with("16 threads"), "{}", lines[0]);
    let ms = |text: &str| -> f64 { text.trim().trim_end_matches("ms").trim().parse().unwrap() };
    for row in &lines[1..111] {
        // `… 0.272 ms   0.2%   0.023 ms`: one-thread time, share, 16-thread time.
        let one = one_thread_ms(row);
        let many = ms(row.trim_end().rsplit("  ").next().unwrap());
        assert!(
            many <= one + 0.01 && many + 0.0005 >= one / 16.0,
            "{row}: {one} ms on one thread, {many} ms on 16"
        );
    }
    let blocks = lines
        .iter()
        .position(|l| l.starts_with("block "))
        .expect("a block table");
    assert!(
        lines[blocks + 1].starts_with("stem "),
        "{}",
        lines[blocks + 1]
    );
    let last = lines.last().unwrap();
    let efficiency: f64 = last
        .split("parallel efficiency ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .expect("the efficiency")
        .parse()
        .unwrap();
    assert!(efficiency > 0.0 && efficiency <= 1.0, "{last}");
    assert!(last.contains("on 16 threads against"), "{last}");
}

/// A `--report` row's predicted one-thread time in ms (the first `… ms` column).
fn one_thread_ms(row: &str) -> f64 {
    let before = row.split(" ms").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `--report` for `--target-cpu tier` (compiling for a tier needs no CPU of that tier).
fn report_for(tier: &str) {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("v1.o");
    let (code, stdout, stderr) = run_inceptc([
        "compile",
        "--model",
        "inception-resnet-v1",
        "--emit",
        "obj",
        "--report",
        "--target-cpu",
        tier,
        "-q",
        "-o",
        obj.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("kernel") && lines[0].contains("predicted"),
        "{stdout}"
    );
    let rows = &lines[1..lines.len() - 1];
    assert_eq!(rows.len(), 110, "one row per kernel");
    assert!(rows[0].starts_with("k1_conv2d_1a_conv") && rows[0].contains("conv 3×3/2 3→32"));
    assert!(rows
        .iter()
        .any(|r| r.contains("(3 shared)") || r.contains("(2 shared)")));
    if tier == "x86-64-v3" {
        assert!(rows
            .iter()
            .any(|r| r.contains("flat pixel tiles 12 px × 8 ch avx2")));
        assert!(rows.iter().any(|r| r.contains("row tiles 6 px × 8 ch sse")));
        assert!(rows.iter().any(
            |r| r.contains("winograd F(4×4,3×3), ") && r.contains(" tiles, 12 px × 8 ch avx2")
        ));
    } else {
        // Every convolution, the stem's 3-channel one included, runs on zmm tiles.
        assert!(rows[0].contains(" ch avx512"), "{}", rows[0]);
        assert!(!rows
            .iter()
            .any(|r| r.contains(" sse") || r.contains(" avx2")));
        assert!(rows.iter().any(|r| r.contains("flat pixel tiles ")));
        assert!(rows
            .iter()
            .any(|r| r.contains("winograd F(4×4,3×3), ") && r.contains(" ch avx512")));
    }
    assert!(rows.iter().any(|r| r.contains("max pool 3×3/2")));
    // Each row's share is its predicted time over the total, to the printed tenth of a percent
    // (summing the printed shares would add up 110 roundings).
    let times: Vec<f64> = rows.iter().map(|r| one_thread_ms(r)).collect();
    let all: f64 = times.iter().sum();
    for (r, ms) in rows.iter().zip(&times) {
        let share: f64 = r
            .trim_end()
            .trim_end_matches('%')
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (share - 100.0 * ms / all).abs() <= 0.06,
            "{r}: share {share} % of {all} ms"
        );
    }
    let total = lines.last().unwrap();
    // Inception-ResNet-v1's concurrent kernels: a `+` row runs with the one above it.
    let joined = rows.iter().filter(|r| r.starts_with("+ k")).count();
    assert!(joined > 0, "no kernels run together");
    assert!(
        total.starts_with(&format!("110 kernels in {} stages ", 110 - joined))
            && total.contains(&format!(" for {tier} in f32, ")),
        "{total}"
    );
    assert!(
        total.contains("predicted") && total.contains("ms on one core"),
        "{total}"
    );
    assert!(obj.exists());
}

/// Every numeric option of `inceptc`, through 0, 1, a huge value and a non-number: a result or a
/// clean error, never a panic, a hang or a file left behind by a failure.
#[test]
#[cfg_attr(debug_assertions, ignore = "compiles networks: cargo test --release")]
fn numeric_options_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let small = ["--model", "inception-resnet-v1", "--image-size", "75"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["info", "--model", "inception-resnet-v1"], "--batch"),
        (
            vec!["info", "--model", "inception-resnet-v1"],
            "--image-size",
        ),
        (vec!["plan", "--model", "inception-resnet-v1"], "--batch"),
        (
            vec!["plan", "--model", "inception-resnet-v1"],
            "--image-size",
        ),
        (
            vec!["dump", "--model", "inception-resnet-v1"],
            "--image-size",
        ),
        (
            [&["compile", "-q", "-o", out][..], &small[..]].concat(),
            "--batch",
        ),
        (
            vec!["compile", "-q", "-o", out, "--model", "inception-resnet-v1"],
            "--image-size",
        ),
        (
            [&["compile", "-q", "-o", out, "--classify"][..], &small[..]].concat(),
            "--num-classes",
        ),
        (
            [&["compile", "-q", "-o", out][..], &small[..]].concat(),
            "--seed",
        ),
        (
            [&["compile", "-q", "-o", out][..], &small[..]].concat(),
            "--max-memory",
        ),
        (
            [&["compile", "-q", "--report", "-o", out][..], &small[..]].concat(),
            "--threads",
        ),
    ];
    for (base, option) in cases {
        for value in ["0", "1", "99999999999999999999", "x"] {
            let mut args = base.clone();
            args.extend([option, value]);
            let _ = std::fs::remove_file(out);
            let (code, _, stderr) = run_inceptc(&args);
            assert!(
                [0, 1, 2].contains(&code) && !stderr.contains("panicked"),
                "{args:?}: exit {code}\n{stderr}"
            );
            if code != 0 {
                assert!(!std::path::Path::new(out).exists(), "{args:?} left {out}");
            }
        }
    }
}

/// A failed write to standard output is an error.
#[test]
fn a_full_standard_output_is_an_error() {
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inceptc"))
        .args(["info", "--model", "inception-v4"])
        .stdout(full)
        .output()
        .unwrap();
    let (code, _, stderr) = inceptc_suite::outcome(out);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("error"), "{stderr}");
}

/// `--precision int8` needs calibration input that it can read: leaving it out, an empty
/// directory, a file that is no image, an unreadable or wrongly shaped .npy, and `--calibrate`
/// without int8 are clear errors, and no output file is left.
#[test]
fn bad_calibration_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let not_images = d.join("not-images");
    std::fs::create_dir(&not_images).unwrap();
    std::fs::write(not_images.join("a.jpg"), b"not a jpeg").unwrap();
    let rank3 = write_npy(d, "rank3.npy", &[3, 80, 80]);
    let gray = write_npy(d, "gray.npy", &[2, 1, 80, 80]);
    let out = d.join("v4-int8");
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let compile = |extra: &[String], needles: &[&str]| {
        let mut args: Vec<String> = [
            "compile",
            "--model",
            "inception-v4",
            "--image-size",
            "75",
            "--target-cpu",
            "x86-64-v4",
            "-o",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(p(&out));
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needles);
        assert!(!out.exists(), "{args:?} left {}", out.display());
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    compile(
        &s(&["--precision", "int8"]),
        &["--precision int8 needs --calibrate"],
    );
    compile(
        &s(&["--calibrate", &p(&rank3)]),
        &["--calibrate is for --precision int8"],
    );
    compile(
        &s(&["--precision", "int8", "--calibrate", &p(&empty)]),
        &["has no images", "empty"],
    );
    compile(
        &s(&["--precision", "int8", "--calibrate", &p(&not_images)]),
        &["--calibrate", "a.jpg"],
    );
    compile(
        &s(&["--precision", "int8", "--calibrate", &p(&rank3)]),
        &["rank3.npy", "[3, 80, 80]", "expected [N, 3, H, W]"],
    );
    compile(
        &s(&["--precision", "int8", "--calibrate", &p(&gray)]),
        &["gray.npy", "[2, 1, 80, 80]"],
    );
    compile(
        &s(&[
            "--precision",
            "int8",
            "--calibrate",
            &p(&d.join("nowhere.npy")),
        ]),
        &["--calibrate", "nowhere.npy"],
    );
}

/// `--report` of an int8 compile prints, per block, the SQNR of its output against f32 and its
/// worst convolution, and the network output's.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "calibrates a network: cargo test --release"
)]
fn int8_report_prints_the_sqnr_of_every_block() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = write_npy(dir.path(), "calibration.npy", &[1, 3, 75, 75]);
    let out = dir.path().join("v4");
    let (code, stdout, stderr) = run_inceptc([
        "compile",
        "--model",
        "inception-v4",
        "--image-size",
        "75",
        "--target-cpu",
        "x86-64-v4",
        "--precision",
        "int8",
        "--calibrate",
        calibration.to_str().unwrap(),
        "--report",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("int8 SQNR against f32 over the 1 calibration input"),
        "{stdout}"
    );
    let table = stdout.split("int8 SQNR").nth(1).unwrap();
    for block in [
        "stem",
        "inception_a.0",
        "reduction_b",
        "inception_c.2",
        "output ",
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(block))
            .unwrap_or_else(|| panic!("no `{block}` in:\n{table}"));
        let db: f64 = line
            .split_whitespace()
            .nth(if block.starts_with("output") { 2 } else { 1 })
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        assert!(db > 10.0 && db < 80.0, "{line}");
    }
}
