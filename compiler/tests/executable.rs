//! The executables `inceptc compile` emits: outputs equal the interpreter's on every network at
//! batch 1 and 2, on tensors and on images; they run from an empty directory, depend on the C
//! library alone and weigh what their weights and code weigh; bad input gets a message and a
//! non-zero exit, never a panic or a partial file. (Whole networks: release mode only.)

use std::path::{Path, PathBuf};
use std::process::Command;

use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::{interp, Tensor};
use inceptc_suite::{npy_bytes, run_bounded};

/// max |executable − interpreter| / max |interpreter| allowed.
const TOLERANCE: f64 = 1e-4;

fn inceptc(args: &[&str]) -> (i32, String, String) {
    run(Path::new(env!("CARGO_BIN_EXE_inceptc")), args, None)
}

fn run(exe: &Path, args: &[&str], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    inceptc_suite::outcome(cmd.output().expect("the program starts"))
}

/// A PNG that is only a signature and an IHDR chunk declaring `width × height` RGB pixels.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Runs `exe --input dir/x.npy --output dir/y.npy` on `x` (plus `extra`): the exit code, standard
/// error, and the output file's bytes if one was written (it is removed after reading).
fn run_tensor(
    exe: &Path,
    dir: &Path,
    x: &Tensor,
    extra: &[&str],
) -> (i32, String, Option<Vec<u8>>) {
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    inceptc_runtime::npy::write_f32(&xp, x.shape(), x.data()).unwrap();
    let mut args = vec![
        "--input",
        xp.to_str().unwrap(),
        "--output",
        yp.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, stderr) = run(exe, &args, None);
    let written = std::fs::read(&yp).ok();
    let _ = std::fs::remove_file(&yp);
    (code, stderr, written)
}

/// The tensor in `.npy` bytes.
fn npy_tensor(bytes: &[u8]) -> Tensor {
    let a = inceptc_runtime::npy::parse_f32(Path::new("y.npy"), bytes).unwrap();
    Tensor::new(a.shape, a.data).unwrap()
}

/// Compiles `model` (seeded weights) into `dir/name`.
/// Compiles `model` into `dir/name` for the tier `INCEPTC_TEST_TARGET_CPU` names (CI runs these
/// tests for x86-64-v3 too), else this machine's, unless `extra` names one.
fn compile(dir: &Path, name: &str, model: &str, extra: &[&str]) -> PathBuf {
    let exe = dir.join(name);
    let mut args = vec!["compile", "--model", model, "-o", exe.to_str().unwrap()];
    let tier = std::env::var("INCEPTC_TEST_TARGET_CPU").ok();
    if let Some(tier) = &tier {
        if !extra.contains(&"--target-cpu") {
            args.extend(["--target-cpu", tier.as_str()]);
        }
    }
    args.extend_from_slice(extra);
    let (code, _, stderr) = inceptc(&args);
    assert_eq!(code, 0, "compile {model} {extra:?}: {stderr}");
    // Piped, there is no progress display: no carriage returns, no escape sequences.
    assert!(!stderr.contains(['\r', '\x1b']), "{stderr:?}");
    exe
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn f16_weights_halve_the_executable_within_f16_precision() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = ["--image-size", "80", "--batch", "2"];
    let f32_exe = compile(d, "f32", "inception-resnet-v1", &size);
    let f16_exe = compile(
        d,
        "f16",
        "inception-resnet-v1",
        &[&size[..], &["--weights-dtype", "f16"]].concat(),
    );
    let bytes = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = bytes(&f16_exe) / bytes(&f32_exe);
    // The weights (89.5 MiB in f32) are almost the whole file.
    assert!((0.5..0.56).contains(&ratio), "f16 / f32 size = {ratio}");
    // The executable stores the weights as the checkpoint holds them, not their packed or
    // Winograd-transformed copies (built at start-up): at most 1.05× the f32 weights.
    let (code, info, stderr) = inceptc(&["info", "--model", "inception-resnet-v1"]);
    assert_eq!(code, 0, "{stderr}");
    let parameters: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("parameters"))
        .map(|v| v.trim().replace(',', "").parse().unwrap())
        .expect("info lists the parameters");
    let growth = bytes(&f32_exe) / (4.0 * parameters);
    assert!(growth <= 1.05, "executable / f32 weights = {growth}");
    eprintln!("f32 executable: {growth:.3} × its weights");
    let x = random_tensor([2, 3, 80, 80], 12);
    let want = interpret(Model::InceptionResnetV1, &x);
    let (code, stderr, y) = run_tensor(&f16_exe, d, &x, &[]);
    assert_eq!(code, 0, "{stderr}");
    let got = npy_tensor(&y.unwrap());
    let err = got.relative_error(&want).unwrap();
    // f16 keeps 11 significant bits (relative rounding 4.9e-4); errors average out through the
    // network, and the f32 path is within 1e-4.
    assert!(
        err > 1e-6 && err < 5e-3,
        "f16 weights: relative error {err:e}"
    );
    eprintln!("f16 weights: size {ratio:.3} of f32, relative error {err:.2e}");
}

/// An int8 executable stores its weight codes as bytes (about a quarter of the f32 one), and
/// runs the int8 interpreter's values with the parameters the same calibration gives (bit-exact
/// but for the f64 of the L2 normalization), on input it was not calibrated on.
#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn int8_executables_store_byte_codes_and_run_the_int8_interpreters_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = [
        "--image-size",
        "80",
        "--batch",
        "2",
        "--target-cpu",
        "x86-64-v4",
    ];
    let calibration = random_tensor([3, 3, 80, 80], 31);
    let cpath = d.join("calibration.npy");
    inceptc_runtime::npy::write_f32(&cpath, calibration.shape(), calibration.data()).unwrap();
    let f32_exe = compile(d, "f32", "inception-resnet-v1", &size);
    let int8_exe = compile(
        d,
        "int8",
        "inception-resnet-v1",
        &[
            &size[..],
            &[
                "--precision",
                "int8",
                "--calibrate",
                cpath.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let bytes = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = bytes(&int8_exe) / bytes(&f32_exe);
    // Codes are a quarter of f32; the head, the requantization tables and the runtime are not.
    assert!(ratio <= 0.35, "int8 / f32 size = {ratio}");
    let missing = inceptc_runtime::exec::missing_features_for(
        inceptc_runtime::exec::Tier::V4,
        inceptc_runtime::layout::Precision::U8,
        false,
    );
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED running the int8 executable: this CPU lacks {}",
            missing.join(", ")
        );
        return;
    }
    let mut g = load(
        Model::InceptionResnetV1,
        Weights::Seeded(inceptc_ir::init::DEFAULT_SEED),
        &Options::default(),
    )
    .unwrap();
    let x = random_tensor([2, 3, 80, 80], 32);
    let exact = interp::run(&g, &x).unwrap().remove(0);
    inceptc::passes::run_pipeline(&mut g, None).unwrap();
    let images: Vec<Tensor> = calibration
        .data()
        .chunks(3 * 80 * 80)
        .map(|c| Tensor::new(vec![1, 3, 80, 80], c.to_vec()).unwrap())
        .collect();
    use inceptc_ir::quant::{calibrate, Calibration, Int8Params};
    let ranges = calibrate(&g, &images, Calibration::MinMax).unwrap();
    let params = Int8Params::new(&g, &ranges).unwrap();
    let want = interp::run_int8(&g, &x, &params).unwrap().remove(0);
    let (code, stderr, y) = run_tensor(&int8_exe, d, &x, &[]);
    assert_eq!(code, 0, "{stderr}");
    let got = npy_tensor(&y.unwrap());
    let to_int8 = got.relative_error(&want).unwrap();
    let to_f32 = got.relative_error(&exact).unwrap();
    assert!(
        to_int8 <= 1e-6,
        "int8 against the int8 interpreter: {to_int8:e}"
    );
    assert!(to_f32 <= 0.1, "int8 against f32: {to_f32:e}");
    eprintln!(
        "int8: size {ratio:.3} of f32, {to_int8:.2e} from the int8 interpreter, {to_f32:.2e} \
         from f32"
    );
    // With AMX tiles (`tdpbusd`, whose i32 sums are exact too): the same bytes.
    let amx = inceptc_runtime::exec::missing_features_for(
        inceptc_runtime::exec::Tier::V4,
        inceptc_runtime::layout::Precision::U8,
        true,
    );
    if !amx.is_empty() {
        eprintln!(
            "SKIPPED running the int8 executable with AMX tiles: this CPU lacks {}",
            amx.join(", ")
        );
        return;
    }
    let amx_exe = compile(
        d,
        "int8-amx",
        "inception-resnet-v1",
        &[
            &["--image-size", "80", "--batch", "2"][..],
            &["--target-cpu", "sapphirerapids", "--precision", "int8"],
            &["--calibrate", cpath.to_str().unwrap()],
        ]
        .concat(),
    );
    let (code, stderr, y_amx) = run_tensor(&amx_exe, d, &x, &[]);
    assert_eq!(code, 0, "{stderr}");
    let got_amx = npy_tensor(&y_amx.unwrap());
    assert_eq!(
        got_amx.data(),
        got.data(),
        "int8 with AMX tiles against zmm tiles"
    );
}

/// A bf16 executable is about half the f32 one, and runs the rounding interpreter's values on
/// the optimized graph (bit-exact but for the f64 of its L2 normalization), with zmm tiles and
/// with AMX's, within 1e-2 of f32.
#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn bf16_executables_are_half_the_size_and_run_the_rounding_interpreters_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = [
        "--image-size",
        "80",
        "--batch",
        "2",
        "--target-cpu",
        "x86-64-v4",
    ];
    let f32_exe = compile(d, "f32", "inception-resnet-v1", &size);
    let bf16_exe = compile(
        d,
        "bf16",
        "inception-resnet-v1",
        &[&size[..], &["--precision", "bf16"]].concat(),
    );
    let bytes = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = bytes(&bf16_exe) / bytes(&f32_exe);
    assert!(ratio <= 0.55, "bf16 / f32 size = {ratio}");
    let missing = inceptc_runtime::exec::missing_features_for(
        inceptc_runtime::exec::Tier::V4,
        inceptc_runtime::layout::Precision::Bf16,
        false,
    );
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED running the bf16 executable: this CPU lacks {}",
            missing.join(", ")
        );
        return;
    }
    let x = random_tensor([2, 3, 80, 80], 21);
    let mut g = load(
        Model::InceptionResnetV1,
        Weights::Seeded(inceptc_ir::init::DEFAULT_SEED),
        &Options::default(),
    )
    .unwrap();
    let exact = interp::run(&g, &x).unwrap().remove(0);
    inceptc::passes::run_pipeline(&mut g, None).unwrap();
    let rounded = interp::run_rounded(&g, &x, interp::Rounding::Bf16)
        .unwrap()
        .remove(0);
    let (code, stderr, y) = run_tensor(&bf16_exe, d, &x, &[]);
    assert_eq!(code, 0, "{stderr}");
    let got = npy_tensor(&y.unwrap());
    let to_rounded = got.relative_error(&rounded).unwrap();
    let to_f32 = got.relative_error(&exact).unwrap();
    assert!(
        to_rounded <= 1e-6,
        "bf16 against the rounding interpreter: {to_rounded:e}"
    );
    assert!(to_f32 <= 1e-2, "bf16 against f32: {to_f32:e}");
    eprintln!(
        "bf16: size {ratio:.3} of f32, {to_rounded:.2e} from the rounding interpreter, \
         {to_f32:.2e} from f32"
    );
    // With AMX tiles: the rounding interpreter's values with the convolutions the AMX tiles
    // compute summed as they sum (the lowering `--target-cpu sapphirerapids` makes names them).
    let amx = inceptc_runtime::exec::missing_features_for(
        inceptc_runtime::exec::Tier::V4,
        inceptc_runtime::layout::Precision::Bf16,
        true,
    );
    if amx.is_empty() {
        let amx_exe = compile(
            d,
            "amx",
            "inception-resnet-v1",
            &[
                "--image-size",
                "80",
                "--batch",
                "2",
                "--target-cpu",
                "sapphirerapids",
                "--precision",
                "bf16",
            ],
        );
        let (code, stderr, y) = run_tensor(&amx_exe, d, &x, &[]);
        assert_eq!(code, 0, "{stderr}");
        let got = npy_tensor(&y.unwrap());
        let options = inceptc::codegen::LowerOptions {
            tier: inceptc::codegen::tile::Tier::V4,
            precision: inceptc_runtime::layout::Precision::Bf16,
            amx: true,
            ..Default::default()
        };
        let on_amx = inceptc::codegen::Program::with_options(&g, 2, 80, 80, &options)
            .unwrap()
            .amx_nodes();
        assert!(!on_amx.is_empty(), "no convolution runs on AMX tiles");
        let rounded = interp::run_bf16_amx(&g, &x, &|id| on_amx.contains(&g.node(id).name))
            .unwrap()
            .remove(0);
        let to_rounded = got.relative_error(&rounded).unwrap();
        let to_f32 = got.relative_error(&exact).unwrap();
        assert!(
            to_rounded <= 1e-6 && to_f32 <= 1e-2,
            "AMX: {to_rounded:e}, {to_f32:e}"
        );
        eprintln!(
            "bf16 with AMX: {to_rounded:.2e} from the rounding interpreter, {to_f32:.2e} from f32"
        );
    } else {
        eprintln!(
            "SKIPPED the AMX executable: this CPU lacks {}",
            amx.join(", ")
        );
    }
    // bf16 needs the AVX-512 tiles, and stores bf16 weights: anything else is refused and leaves
    // no file.
    for (name, option, message) in [
        (
            "v3",
            ["--target-cpu", "x86-64-v3"],
            "--precision bf16 needs --target-cpu x86-64-v4",
        ),
        (
            "f16",
            ["--weights-dtype", "f16"],
            "--weights-dtype: a bf16 executable stores its weights as bf16",
        ),
    ] {
        let out = d.join(name);
        let (code, _, stderr) = inceptc(&[
            "compile",
            "--model",
            "inception-resnet-v1",
            "--precision",
            "bf16",
            option[0],
            option[1],
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!out.exists());
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn compile_shows_progress_on_a_terminal_only() {
    // `script` gives the compiler a pseudo-terminal.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("v1");
    let inceptc = env!("CARGO_BIN_EXE_inceptc");
    let command = format!(
        "{inceptc} compile --model inception-resnet-v1 --image-size 80 -o {}",
        exe.display()
    );
    let (code, stdout, stderr) = run(Path::new("script"), &["-qec", &command, "/dev/null"], None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for stage in [
        "building the graph",
        "running the passes",
        "generating code [",
        "/110",
        "linking",
    ] {
        assert!(stdout.contains(stage), "no `{stage}` in {stdout:?}");
    }
    assert!(stdout.contains("\x1b[2K"), "the progress line is cleared");
    assert!(exe.exists());
    // -q: nothing at all, even on a terminal.
    let (code, stdout, _) = run(
        Path::new("script"),
        &["-qec", &format!("{command} -q"), "/dev/null"],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "", "-q prints nothing");
}

fn random_tensor(shape: [usize; 4], seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let data = (0..shape.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn interpret(model: Model, x: &Tensor) -> Tensor {
    let g = load(
        model,
        Weights::Seeded(inceptc_ir::init::DEFAULT_SEED),
        &Options::default(),
    )
    .unwrap();
    interp::run(&g, x).unwrap().remove(0)
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let err = got.relative_error(want).expect("same shape");
    assert!(err <= TOLERANCE, "{what}: error {err:e}");
    eprintln!("{what}: error {err:.2e}");
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn every_network_executable_matches_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    for model in Model::ALL {
        for (batch, size) in [(1, model.default_image_size()), (2, 139)] {
            let name = format!("{model}-b{batch}");
            let exe = compile(
                dir.path(),
                &name,
                model.name(),
                &[
                    "--batch",
                    &batch.to_string(),
                    "--image-size",
                    &size.to_string(),
                ],
            );
            let x = random_tensor([batch, 3, size, size], batch as u64);
            let xp = dir.path().join(format!("{name}-x.npy"));
            let yp = dir.path().join(format!("{name}-y.npy"));
            inceptc_runtime::npy::write_f32(&xp, x.shape(), x.data()).unwrap();
            // Run from an empty directory: nothing beside the executable is needed.
            let (code, _, stderr) = run(
                &exe,
                &[
                    "--input",
                    xp.to_str().unwrap(),
                    "--output",
                    yp.to_str().unwrap(),
                ],
                Some(empty.path()),
            );
            assert_eq!(code, 0, "{name}: {stderr}");
            let y = inceptc_runtime::npy::read_f32(&yp).unwrap();
            let got = Tensor::new(y.shape, y.data).unwrap();
            assert_close(&got, &interpret(model, &x), &name);
            if model == Model::InceptionV4 && batch == 1 {
                check_dependencies_and_size(&exe);
            }
        }
    }
}

/// `ldd` lists only the C library family, and the file is within 5 % of weights plus code.
fn check_dependencies_and_size(exe: &Path) {
    let ldd = Command::new("ldd").arg(exe).output().expect("ldd runs");
    let listing = String::from_utf8_lossy(&ldd.stdout);
    for line in listing.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        assert!(
            [
                "linux-vdso",
                "libc.so",
                "libm.so",
                "ld-linux",
                "/lib64/ld-linux"
            ]
            .iter()
            .any(|ok| lib.starts_with(ok)),
            "unexpected dependency `{lib}`:\n{listing}"
        );
    }
    use cranelift_object::object::{Object, ObjectSection, ObjectSymbol};
    let bytes = std::fs::read(exe).unwrap();
    let file = cranelift_object::object::File::parse(&*bytes).unwrap();
    let text = file.section_by_name(".text").map_or(0, |s| s.size());
    let weights = file
        .symbols()
        .find(|s| s.name() == Ok("inceptc_weights"))
        .map(|s| s.size())
        .expect("the weights symbol");
    assert!(weights > 160 << 20, "weights symbol size {weights}");
    // No debug sections; of the symbols, only the model's: every kernel keeps its name.
    let sections: Vec<&str> = file.sections().filter_map(|s| s.name().ok()).collect();
    assert!(
        !sections.iter().any(|s| s.starts_with(".debug")),
        "{sections:?}"
    );
    let names: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
    let rust: Vec<&&str> = names
        .iter()
        .filter(|n| n.starts_with("_ZN") || n.starts_with("_R"))
        .collect();
    assert!(
        rust.is_empty(),
        "runtime symbols kept: {:?}",
        &rust[..rust.len().min(5)]
    );
    assert!(names.contains(&"main") && names.iter().any(|n| n.starts_with("k1_")));
    let budget = 1.05 * (weights + text) as f64;
    assert!(
        bytes.len() as f64 <= budget,
        "{} bytes against weights {weights} + code {text}",
        bytes.len()
    );
    eprintln!(
        "inception-v4 executable: {} bytes, weights {weights}, code {text} ({:.3}×)",
        bytes.len(),
        bytes.len() as f64 / (weights + text) as f64
    );
}

/// Test images: RGB PNG, grey PNG, RGBA PNG, and an RGB JPEG.
fn write_images(dir: &Path) -> Vec<PathBuf> {
    let rgb = image::RgbImage::from_fn(131, 97, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let grey = image::GrayImage::from_fn(80, 120, |x, y| image::Luma([((x * y) % 256) as u8]));
    let rgba = image::RgbaImage::from_fn(100, 100, |x, y| {
        image::Rgba([x as u8, y as u8, 200, ((x + y) % 256) as u8])
    });
    let paths = ["rgb.png", "grey.png", "rgba.png", "photo.jpg"].map(|n| dir.join(n));
    rgb.save(&paths[0]).unwrap();
    grey.save(&paths[1]).unwrap();
    rgba.save(&paths[2]).unwrap();
    rgb.save(&paths[3]).unwrap();
    paths.to_vec()
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn images_are_classified_like_the_interpreter_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let size = 107;
    let exe = compile(
        dir.path(),
        "v4",
        "inception-v4",
        &["--image-size", &size.to_string(), "--batch", "3"],
    );
    let images = write_images(dir.path());
    let out = dir.path().join("y.npy");
    let mut args: Vec<&str> = images.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--output", out.to_str().unwrap()]);
    let (code, stdout, stderr) = run(&exe, &args, None);
    assert_eq!(code, 0, "{stderr}");
    // Four images, five classes each, with ImageNet names.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("  0.")).count(),
        20,
        "{stdout}"
    );
    assert!(stdout.contains("rgba.png\n"), "{stdout}");
    let y = inceptc_runtime::npy::read_f32(&out).unwrap();
    assert_eq!(y.shape, [4, 1000]);
    let how = inceptc_runtime::desc::Preprocess::Timm {
        crop_pct: 0.875,
        interpolation: inceptc_runtime::resample::Filter::Bicubic,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    for (i, path) in images.iter().enumerate() {
        let img = inceptc_runtime::image::load(path).unwrap();
        let x = Tensor::new(
            vec![1, 3, size, size],
            inceptc_runtime::image::preprocess(&img, how, [size, size]),
        )
        .unwrap();
        let got = Tensor::new(vec![1, 1000], y.data[i * 1000..(i + 1) * 1000].to_vec()).unwrap();
        assert_close(
            &got,
            &interpret(Model::InceptionV4, &x),
            &path.display().to_string(),
        );
    }
    let labels = include_str!("../../runtime/src/imagenet_labels.txt");
    let first_label = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap();
    assert!(labels.contains(first_label), "{stdout}");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn bad_input_to_an_executable_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = compile(d, "v1", "inception-resnet-v1", &["--image-size", "80"]);
    let expect = |args: &[&str], code: i32, needles: &[&str]| {
        let (got, stdout, stderr) = run(&exe, args, None);
        assert_eq!(got, code, "{args:?}: {stdout}{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: expected `{n}` in\n{stderr}");
        }
    };
    let path = |name: &str| d.join(name).to_str().unwrap().to_string();
    // Wrong batch, wrong size.
    inceptc_runtime::npy::write_f32(&d.join("b2.npy"), &[2, 3, 80, 80], &vec![0.0; 2 * 3 * 6400])
        .unwrap();
    expect(
        &["--input", &path("b2.npy")],
        1,
        &["b2.npy", "[2, 3, 80, 80]", "[1, 3, 80, 80]"],
    );
    // float64 data.
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 80, 80), }";
    std::fs::write(d.join("f64.npy"), npy_bytes(header, 8 * 3 * 6400)).unwrap();
    expect(&["--input", &path("f64.npy")], 1, &["f64.npy"]);
    expect(&["--input", &path("missing.npy")], 1, &["missing.npy"]);
    // An unwritable output leaves nothing behind.
    inceptc_runtime::npy::write_f32(&d.join("x.npy"), &[1, 3, 80, 80], &vec![0.5; 3 * 6400])
        .unwrap();
    let blocked = d.join("no-such-dir").join("y.npy");
    expect(
        &[
            "--input",
            &path("x.npy"),
            "--output",
            blocked.to_str().unwrap(),
        ],
        1,
        &["no-such-dir"],
    );
    assert!(!blocked.exists());
    // Images: truncated, not an image, missing.
    let images = write_images(d);
    let png = std::fs::read(&images[0]).unwrap();
    std::fs::write(d.join("cut.png"), &png[..png.len() / 2]).unwrap();
    expect(&[&path("cut.png")], 1, &["cut.png", "cannot decode"]);
    std::fs::write(d.join("text.png"), "not an image at all").unwrap();
    expect(&[&path("text.png")], 1, &["text.png", "not a PNG or JPEG"]);
    expect(&[&path("gone.jpg")], 1, &["gone.jpg"]);
    // Hostile input, within 2 GiB and 60 s: a header declaring 10^6 × 10^6 pixels, one just under
    // the side limit with no data, zero-byte files, directories, an .npy header that lies.
    let hostile = |args: &[&str], needles: &[&str]| {
        let (code, _, stderr) = run_bounded(&exe, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: expected `{n}` in\n{stderr}");
        }
    };
    std::fs::write(d.join("huge.png"), png_header(1_000_000, 1_000_000)).unwrap();
    hostile(
        &[&path("huge.png")],
        &["huge.png: the image is too large to decode (at most 16384×16384 pixels"],
    );
    std::fs::write(d.join("big.png"), png_header(16000, 16000)).unwrap();
    hostile(&[&path("big.png")], &["big.png: cannot decode"]);
    std::fs::write(d.join("zero.jpg"), b"").unwrap();
    hostile(
        &[&path("zero.jpg")],
        &["zero.jpg: the file is empty (0 bytes)"],
    );
    std::fs::create_dir(d.join("photos")).unwrap();
    hostile(
        &[&path("photos")],
        &["photos: it is a directory, not an image file"],
    );
    std::fs::write(d.join("zero.npy"), b"").unwrap();
    hostile(
        &["--input", &path("zero.npy")],
        &["zero.npy: not a valid .npy file: the file is empty (0 bytes)"],
    );
    hostile(
        &["--input", &path("photos")],
        &["photos: it is a directory"],
    );
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 80, 80), }";
    std::fs::write(d.join("lying.npy"), npy_bytes(header, 64)).unwrap();
    hostile(
        &["--input", &path("lying.npy")],
        &["lying.npy: not a valid .npy file: the header's shape [1, 3, 80, 80] needs 76800 bytes of data, the file holds 64"],
    );
    // Nothing to do, and bad options.
    expect(&[], 1, &["nothing to do"]);
    expect(&["--bench", "--threads", "0"], 2, &["0 is not in 1..=1024"]);
    // Every numeric option through 0, 1, a huge value and a non-number: a result or a clean
    // error, never a panic.
    for (base, option) in [
        (&["--bench", "--runs", "1"][..], "--threads"),
        (&["--bench", "--threads", "1"][..], "--runs"),
    ] {
        for value in ["0", "1", "99999999999999999999", "x"] {
            let mut args = base.to_vec();
            args.extend([option, value]);
            let (code, _, stderr) = run(&exe, &args, None);
            assert!(
                [0, 2].contains(&code) && !stderr.contains("panicked"),
                "{args:?}: exit {code}\n{stderr}"
            );
        }
    }
    // Results that cannot be written are an error, not a silent success.
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = Command::new(&exe)
        .arg(path("rgb.png"))
        .stdout(full)
        .output()
        .unwrap();
    let (code, _, stderr) = inceptc_suite::outcome(out);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot write the results to standard output"),
        "{stderr}"
    );
    expect(&["--frobnicate"], 2, &["--frobnicate"]);
    let (code, stdout, _) = run(&exe, &["--help"], None);
    assert_eq!(code, 0);
    assert!(stdout.contains("Examples:\n  MODEL cat.jpg"), "{stdout}");
    // The embedding model prints embeddings for images.
    let (code, stdout, _) = run(&exe, &[&path("rgb.png")], None);
    assert_eq!(code, 0);
    assert!(stdout.contains("embedding [512]"), "{stdout}");
    // The common messages as a user reads them (tests/snapshots/exe-errors.txt; BLESS=1 rewrites).
    let dir_text = d.to_str().unwrap();
    let mut snapshot = String::new();
    for args in [
        vec![path("gone.jpg")],
        vec![path("text.png")],
        vec![path("huge.png")],
        vec!["--input".into(), path("b2.npy")],
        vec!["--input".into(), path("lying.npy")],
        vec!["--bench".into(), "--threads".into(), "0".into()],
        vec![],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run(&exe, &args, None);
        let shown = args.join(" ").replace(dir_text, "$DIR");
        let stderr = stderr.replace(dir_text, "$DIR");
        snapshot.push_str(&format!("$ MODEL {shown}\n{stderr}[exit {code}]\n\n"));
    }
    if let Err(e) = inceptc_suite::check_golden("tests/snapshots/exe-errors.txt", &snapshot) {
        panic!("{e}");
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn bench_prints_every_block_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(
        dir.path(),
        "v2",
        "inception-resnet-v2",
        &["--image-size", "75"],
    );
    let (code, stdout, stderr) = run(&exe, &["--bench", "--runs", "2", "--threads", "1"], None);
    assert_eq!(code, 0, "{stderr}");
    for block in [
        "stem",
        "inception_resnet_a.9",
        "reduction_a",
        "inception_resnet_b.19",
        "reduction_b",
        "inception_resnet_c.9",
        "head",
        "end to end",
    ] {
        assert!(stdout.contains(block), "`{block}` missing:\n{stdout}");
    }
    let trace = dir.path().join("trace.json");
    let (code, json, stderr) = run(
        &exe,
        &[
            "--bench",
            "--runs",
            "2",
            "--json",
            "--threads",
            "2",
            "--trace",
            trace.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("--json is JSON");
    assert!(report["end_to_end"]["median_ms"].as_f64().unwrap() > 0.0);
    let blocks = report["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), stdout.lines().count() - 3, "{json}");
    check_trace(&trace, blocks.len(), 2.0);
    let names: Vec<&str> = blocks
        .iter()
        .map(|b| b["block"].as_str().unwrap())
        .collect();
    let plot = dir.path().join("latency.svg");
    let args = ["--bench", "--runs", "2", "--plot", plot.to_str().unwrap()];
    let (code, _, stderr) = run(&exe, &args, None);
    assert_eq!(code, 0, "{stderr}");
    check_plot(&std::fs::read_to_string(&plot).unwrap(), &names);
}

/// The plot is an SVG bar chart: one bar per block, top to bottom in block order, each labelled
/// with its block's name, on an axis in milliseconds under a title with the end-to-end latency.
fn check_plot(svg: &str, blocks: &[&str]) {
    assert!(
        svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let attr = |element: &str, name: &str| -> f64 {
        let at = element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        element[at..].split('"').next().unwrap().parse().unwrap()
    };
    let bars: Vec<&str> = svg
        .split('<')
        .filter(|e| e.starts_with("rect ") && e.contains("fill=\"#3465A4\""))
        .collect();
    assert_eq!(bars.len(), blocks.len(), "one bar per block");
    let ys: Vec<f64> = bars.iter().map(|b| attr(b, "y")).collect();
    assert!(
        ys.windows(2).all(|w| w[0] < w[1]),
        "bars top to bottom: {ys:?}"
    );
    assert!(bars
        .iter()
        .all(|b| attr(b, "width") >= 0.0 && attr(b, "height") > 0.0));
    assert!(
        bars.iter().any(|b| attr(b, "width") > 100.0),
        "the longest bar spans the chart"
    );
    // (y, content) of every text element.
    let texts: Vec<(f64, &str)> = svg
        .split("<text")
        .skip(1)
        .map(|t| {
            let content = t
                .split('>')
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .trim();
            (attr(t, "y"), content)
        })
        .collect();
    let label_ys: Vec<f64> = blocks
        .iter()
        .map(|b| {
            let label = texts.iter().find(|(_, t)| t == b);
            label.unwrap_or_else(|| panic!("no label {b}")).0
        })
        .collect();
    assert!(
        label_ys.windows(2).all(|w| w[0] < w[1]),
        "labels top to bottom in block order: {label_ys:?}"
    );
    let texts: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
    assert!(
        texts.iter().any(|t| t.contains("ms end to end")),
        "{texts:?}"
    );
    assert!(texts.contains(&"median latency (ms)"), "{texts:?}");
}

/// The trace is Chrome trace-event JSON: complete events with name, ph, ts, dur, pid and tid; one
/// per block, and every kernel inside the time span of a block.
fn check_trace(path: &Path, block_count: usize, threads: f64) {
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the trace is JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let spans: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
    for e in &spans {
        assert!(
            e["name"].is_string() && e["pid"].is_u64() && e["tid"].is_u64(),
            "{e}"
        );
        assert!(
            e["ts"].as_f64().unwrap() >= 0.0 && e["dur"].as_f64().unwrap() >= 0.0,
            "{e}"
        );
    }
    let blocks: Vec<_> = spans.iter().filter(|e| e["cat"] == "block").collect();
    let kernels: Vec<_> = spans.iter().filter(|e| e["cat"] == "kernel").collect();
    assert_eq!(blocks.len(), block_count);
    assert!(kernels.len() > blocks.len());
    let range = |e: &serde_json::Value| {
        let ts = e["ts"].as_f64().unwrap();
        (ts, ts + e["dur"].as_f64().unwrap())
    };
    for k in &kernels {
        let (a, b) = range(k);
        assert!(
            blocks.iter().any(|bl| {
                let (x, y) = range(bl);
                x <= a + 1e-3 && b <= y + 1e-3
            }),
            "kernel {k} outside every block"
        );
        // The threads' time in the kernel's work lies within its span on each thread.
        let busy = k["args"]["thread_ms"].as_f64().expect("thread_ms");
        let span = k["dur"].as_f64().unwrap() / 1e3;
        assert!(
            (0.0..=threads * span + 1e-3).contains(&busy),
            "kernel {k}: {busy} thread-ms in {span} ms"
        );
    }
    let busy: f64 = kernels
        .iter()
        .map(|k| k["args"]["thread_ms"].as_f64().unwrap())
        .sum();
    assert!(busy > 0.0, "no thread time in {path:?}");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn failed_compiles_leave_no_file_and_listings_name_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let blocked = d.join("missing-dir").join("v4");
    let (code, _, stderr) = inceptc(&[
        "compile",
        "--model",
        "inception-v4",
        "-o",
        blocked.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("missing-dir"), "{stderr}");
    assert!(!blocked.exists());
    let bad = d.join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let out = d.join("v4");
    let (code, _, stderr) = inceptc(&[
        "compile",
        "--model",
        "inception-v4",
        "--weights",
        bad.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bad.safetensors"), "{stderr}");
    assert!(!out.exists());
    let (code, _, stderr) = inceptc(&[
        "compile",
        "--model",
        "inception-v4",
        "--image-size",
        "60",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("input too small"), "{stderr}");
    assert!(!out.exists());

    // Listings: one file per kernel (110 kernels here), named after the kernel's first node. On
    // x86-64-v3 the stem's 3-channel convolution is 128-bit Cranelift code; on x86-64-v4 it calls
    // an AVX-512 tile, whose instructions the asm listing shows after the kernel's.
    for (emit, tier, file, needles) in [
        ("clif", "x86-64-v3", "k1_conv2d_1a_conv.clif", &["fma"][..]),
        (
            "asm",
            "x86-64-v3",
            "k1_conv2d_1a_conv.s",
            &["vfmadd213ps", "vbroadcastss"][..],
        ),
        (
            "clif",
            "x86-64-v4",
            "k1_conv2d_1a_conv.clif",
            &["is the register tile tile0_avx512_", "call fn0"][..],
        ),
        (
            "asm",
            "x86-64-v4",
            "k3_conv2d_2b_conv.s",
            &["; u1:0: tile0_avx512_", "vfmadd231ps zmm", "vzeroupper"][..],
        ),
    ] {
        let out = d.join(emit);
        let (code, _, stderr) = inceptc(&[
            "compile",
            "--model",
            "inception-resnet-v1",
            "--image-size",
            "80",
            "--emit",
            emit,
            "--target-cpu",
            tier,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            110,
            "{emit}: one file per kernel"
        );
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(text.contains("; nodes: conv2d_"), "{text}");
        for n in needles {
            assert!(text.contains(n), "{emit} {tier}: `{n}` missing:\n{text}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn an_executable_on_a_cpu_without_its_tier_says_so() {
    // qemu's user-mode emulator runs the executable on an emulated Nehalem (SSE4.2, no AVX).
    // .ci/run installs it; elsewhere the test needs it too, unless it is absent outside CI.
    let qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("qemu-x86_64"))
        .find(|p| p.is_file());
    let Some(qemu) = qemu else {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-x86_64 (Debian package qemu-user) is needed for this test in CI"
        );
        eprintln!("skipped: qemu-x86_64 is not installed (apt-get install qemu-user)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let [v3, v4] = ["x86-64-v3", "x86-64-v4"].map(|tier| {
        compile(
            dir.path(),
            tier,
            "inception-resnet-v1",
            &["--image-size", "80", "--target-cpu", tier],
        )
    });
    let bf16 = compile(
        dir.path(),
        "bf16",
        "inception-resnet-v1",
        &[
            "--image-size",
            "80",
            "--target-cpu",
            "x86-64-v4",
            "--precision",
            "bf16",
        ],
    );
    let (v3, v4) = (v3.to_str().unwrap(), v4.to_str().unwrap());
    let (code, stdout, stderr) = run(&qemu, &["-cpu", "Nehalem", v3, "--bench"], None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("this CPU lacks AVX, AVX2, FMA, BMI1, BMI2")
            && stderr.contains("(it was built for x86-64-v3)")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    // An emulated CPU with AVX2 and FMA runs the x86-64-v3 executable, and refuses the
    // x86-64-v4 one, naming what it lacks (qemu emulates no AVX-512).
    let (code, _, stderr) = run(
        &qemu,
        &["-cpu", "Haswell", v3, "--bench", "--runs", "1"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(&qemu, &["-cpu", "Haswell", v4, "--bench"], None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "this CPU lacks AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL, which the generated \
             code uses (it was built for x86-64-v4)"
        ) && !stderr.contains("panicked"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&qemu, &["-cpu", "Haswell", bf16.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "AVX512VL, AVX512_BF16, which the generated code uses (it was built for \
             x86-64-v4 with bf16)"
        ) && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn outputs_are_bit_identical_across_runs_and_thread_counts() {
    // Every output element is computed by the same instructions whichever thread runs it: work
    // items are fixed rows or pixel tiles, and the thread count only decides who takes which (of
    // every kernel of a stage, whose kernels run together).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = compile(
        d,
        "v2",
        "inception-resnet-v2",
        &["--image-size", "91", "--batch", "2"],
    );
    let x = random_tensor([2, 3, 91, 91], 11);
    let mut outputs = Vec::new();
    // 16 threads: as a 16-core server runs it (here more threads than cores).
    for threads in ["1", "2", "2", "3", "5", "16"] {
        let (code, stderr, y) = run_tensor(&exe, d, &x, &["--threads", threads]);
        assert_eq!(code, 0, "{stderr}");
        outputs.push((threads, y.unwrap()));
    }
    for (threads, bytes) in &outputs[1..] {
        assert!(
            *bytes == outputs[0].1,
            "--threads {threads} differs from --threads 1"
        );
    }
    // Compiled for 16 threads (Winograd items split by channel panels), under the bounds check
    // with the stages' kernels running together (Inception-v4's Inception-A branches among
    // them): the same bits on every thread count again.
    let mut first = None;
    for (name, model) in [("v2-16", "inception-resnet-v2"), ("v4-16", "inception-v4")] {
        let many = compile(
            d,
            name,
            model,
            &[
                "--image-size",
                "91",
                "--batch",
                "2",
                "--threads",
                "16",
                "--check-bounds",
            ],
        );
        let mut one = None;
        for threads in ["1", "2", "3", "5", "16"] {
            let (code, stderr, y) = run_tensor(&many, d, &x, &["--threads", threads]);
            assert_eq!(code, 0, "{model}: {stderr}");
            let y = y.unwrap();
            let one = one.get_or_insert_with(|| y.clone());
            assert!(
                y == *one,
                "{model} compiled for 16 threads: --threads {threads} differs from --threads 1"
            );
        }
        first.get_or_insert(one.unwrap());
    }
    // And within rounding of the two-thread build (a split may choose another Winograd tile).
    let (split, default) = (npy_tensor(&first.unwrap()), npy_tensor(&outputs[0].1));
    let err = split.relative_error(&default).unwrap();
    assert!(
        err <= 1e-4,
        "compiled for 16 threads: {err:e} from the default build"
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn check_bounds_runs_clean_and_names_a_kernel_that_writes_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = ["--image-size", "75", "--batch", "2"];
    let plain = compile(d, "plain", "inception-resnet-v1", &size);
    let checked = compile(
        d,
        "checked",
        "inception-resnet-v1",
        &[&size[..], &["--check-bounds"]].concat(),
    );
    let x = random_tensor([2, 3, 75, 75], 4);
    let outputs: Vec<Vec<u8>> = [&plain, &checked]
        .iter()
        .map(|exe| {
            let (code, stderr, y) = run_tensor(exe, d, &x, &[]);
            assert_eq!(code, 0, "{}: {stderr}", exe.display());
            y.unwrap()
        })
        .collect();
    assert!(
        outputs[0] == outputs[1],
        "--check-bounds changed the output"
    );
    // A stem convolution whose output has a halo, a tile of a concatenation, a residual block's
    // in-place convolution: each made to write one pixel too far.
    for (node, kernel) in [
        ("conv2d_2a.conv", "_conv2d_2a_conv`"),
        ("mixed_6a.branch0.conv", "_mixed_6a_branch0_conv`"),
        ("repeat_1.0.conv2d", "_repeat_1_0_conv2d`"),
    ] {
        let faulty = compile(
            d,
            "faulty",
            "inception-resnet-v1",
            &[&size[..], &["--check-bounds", "--inject-fault", node]].concat(),
        );
        let (code, stderr, written) = run_tensor(&faulty, d, &x, &[]);
        assert_eq!(code, 1, "{node}: {stderr}");
        assert!(
            stderr.starts_with("error: bounds check: kernel `k"),
            "{stderr}"
        );
        assert!(stderr.contains(kernel), "{node}: {stderr}");
        assert!(stderr.contains("wrote out of bounds: the "), "{stderr}");
        assert!(written.is_none(), "a failed run writes no output");
    }
    let (code, _, stderr) = inceptc(&[
        "compile",
        "--model",
        "inception-resnet-v1",
        "--inject-fault",
        "nope",
        "-o",
        d.join("never").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--inject-fault: no fused convolution is named `nope`"),
        "{stderr}"
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn valgrind_finds_no_memory_errors_in_a_compiled_network() {
    // memcheck on the whole executable: the runtime (arena, thread pool, image decoding, .npy)
    // and the generated kernels, two threads, an .npy input and a PNG.
    let version = Command::new("valgrind").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "valgrind is needed (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // valgrind emulates no AVX-512: the AVX2 tier.
    let exe = compile(
        d,
        "v1",
        "inception-resnet-v1",
        &["--image-size", "75", "--target-cpu", "x86-64-v3"],
    );
    let x = random_tensor([1, 3, 75, 75], 8);
    let xp = d.join("x.npy");
    inceptc_runtime::npy::write_f32(&xp, x.shape(), x.data()).unwrap();
    let images = write_images(d);
    let yp = d.join("y.npy");
    for args in [
        vec![
            "--input",
            xp.to_str().unwrap(),
            "--output",
            yp.to_str().unwrap(),
        ],
        vec![images[0].to_str().unwrap()],
    ] {
        let out = Command::new("valgrind")
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
            ])
            .arg(&exe)
            .args(&args)
            .args(["--threads", "2"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}:\n{stderr}");
        assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
        assert!(stderr.contains("definitely lost: 0 bytes"), "{stderr}");
    }
    let want = interpret(Model::InceptionResnetV1, &x);
    let got = inceptc_runtime::npy::read_f32(&yp).unwrap();
    assert_close(
        &Tensor::new(got.shape, got.data).unwrap(),
        &want,
        "under valgrind",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn c_and_rust_programs_embed_a_compiled_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lib = d.join("lib");
    let (code, _, stderr) = inceptc(&[
        "compile",
        "--model",
        "inception-resnet-v1",
        "--image-size",
        "96",
        "--batch",
        "2",
        "--emit",
        "lib",
        "-o",
        lib.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let x = random_tensor([2, 3, 96, 96], 7);
    let xin = d.join("x.f32");
    let bytes: Vec<u8> = x.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&xin, bytes).unwrap();
    let want = interpret(Model::InceptionResnetV1, &x);
    let check = |app: &Path, what: &str, banner: &str| {
        let yout = d.join("y.f32");
        let (code, stdout, stderr) =
            run(app, &[xin.to_str().unwrap(), yout.to_str().unwrap()], None);
        assert_eq!(code, 0, "{what}: {stdout}{stderr}");
        assert!(stdout.contains(banner), "{what}: {stdout}");
        let y: Vec<f32> = std::fs::read(&yout)
            .unwrap()
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_close(&Tensor::new(vec![2, 512], y).unwrap(), &want, what);
        std::fs::remove_file(&yout).unwrap();
    };

    // C: tests/embed/classify.c with the header, the object and the runtime library.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let app = d.join("classify");
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg(root.join("tests/embed/classify.c"))
        .arg("-I")
        .arg(&lib)
        .arg(lib.join(inceptc::link::MODEL_OBJECT))
        .arg(lib.join(inceptc::link::RUNTIME_LIBRARY))
        .arg("-o")
        .arg(&app)
        .args(inceptc::link::SYSTEM_LIBS)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    check(&app, "embedded in C", "input [2, 3, 96, 96] -> 1024 floats");

    // Rust: tests/embed/rust depends on the runtime crate and links the object (build.rs). Built
    // with this workspace's target directory and profile, it reuses the compiled dependencies.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(root.join("tests/embed/rust/Cargo.toml"))
        .env("INCEPTC_MODEL_DIR", &lib)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    check(
        &target.join("release/inceptc-embed-rust"),
        "embedded in Rust",
        "input [2, 3, 96, 96] -> output [2, 512]",
    );
}
