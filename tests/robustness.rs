//! Every reader of user files survives damaged input: thousands of seeded mutations (bit flips,
//! byte overwrites, truncations, insertions, length-field corruption) of a valid `.npy` file, IR
//! text, safetensors checkpoint, model description and PNG/JPEG image each either parse or fail
//! with an error — never a panic. (A complement to fuzzing: deterministic, and run in CI.)

use std::panic::{catch_unwind, AssertUnwindSafe};

use inceptc_ir::weights::Checkpoint;
use inceptc_suite::{safetensors_bytes, state_dict, RawTensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mutations per reader.
const CASES: usize = 1500;

/// A damaged copy of `seed`.
fn mutate(rng: &mut ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if v.is_empty() {
            v.push(rng.gen());
            continue;
        }
        let at = rng.gen_range(0..v.len());
        match rng.gen_range(0..6) {
            0 => v[at] ^= 1 << rng.gen_range(0..8),
            1 => v[at] = rng.gen(),
            2 => v.truncate(at),
            3 => v.insert(at, rng.gen()),
            4 => {
                // A plausible-looking large little-endian length somewhere in the first bytes.
                let at = rng.gen_range(0..v.len().min(64));
                let big: u64 = rng.gen_range(1..=u32::MAX as u64) << rng.gen_range(0..32);
                for (i, b) in big.to_le_bytes().iter().enumerate() {
                    if at + i < v.len() {
                        v[at + i] = *b;
                    }
                }
            }
            _ => {
                let end = rng.gen_range(at..=v.len());
                v.drain(at..end);
            }
        }
    }
    v
}

/// Feeds `CASES` mutations of `seed` to `read`; fails on the first panic, naming the case.
fn survives(name: &str, seed: &[u8], read: impl Fn(&[u8])) {
    let mut rng = ChaCha8Rng::seed_from_u64(2016);
    let mut failed = Vec::new();
    for case in 0..CASES {
        let bytes = mutate(&mut rng, seed);
        if catch_unwind(AssertUnwindSafe(|| read(&bytes))).is_err() {
            failed.push(case);
        }
    }
    assert!(failed.is_empty(), "{name}: cases {failed:?} panicked");
}

#[test]
fn damaged_npy_files_are_rejected_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("seed.npy");
    inceptc_runtime::npy::write_f32(&seed_path, &[1, 3, 4, 5], &[0.25; 60]).unwrap();
    let seed = std::fs::read(&seed_path).unwrap();
    let path = dir.path().join("case.npy");
    survives("npy", &seed, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let _ = inceptc_runtime::npy::read_f32(&path);
    });
}

#[test]
fn damaged_ir_text_is_rejected_without_panicking() {
    let g = inceptc_graphs::build(
        inceptc_graphs::Model::InceptionResnetV1,
        &inceptc_graphs::Options::default(),
    )
    .unwrap();
    let seed = inceptc_ir::text::print(&g);
    // Keep the seed small enough that a mutation often lands in the structure.
    let seed: String = seed.lines().take(60).collect::<Vec<_>>().join("\n") + "\n  output %5\n}\n";
    survives("ir text", seed.as_bytes(), |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(g) = inceptc_ir::text::parse(text) {
                let _ = inceptc_ir::verify(&g);
                let _ = inceptc_ir::infer_shapes(&g, 1, 99, 99);
            }
        }
    });
}

#[test]
fn damaged_checkpoints_are_rejected_without_panicking() {
    let mut g = inceptc_graphs::build(
        inceptc_graphs::Model::InceptionResnetV1,
        &inceptc_graphs::Options::default(),
    )
    .unwrap();
    inceptc_ir::init::seed_weights(&mut g, 1);
    // A small checkpoint: the first few tensors, as f16.
    let tensors: Vec<RawTensor> = state_dict(&g)
        .iter()
        .take(6)
        .map(|(name, shape, values)| {
            RawTensor::encode(name, safetensors::Dtype::F16, shape.clone(), values)
        })
        .collect();
    let seed = safetensors_bytes(&tensors);
    let path = std::path::Path::new("mutated.safetensors");
    survives("safetensors", &seed, |bytes| {
        if let Ok(ck) = Checkpoint::from_bytes(path, bytes.to_vec()) {
            let mut graph = g.clone();
            let _ = inceptc_ir::weights::bind(&mut graph, &ck, &|_| false);
        }
    });
}

#[test]
fn damaged_model_descriptions_are_rejected_without_panicking() {
    let mut g = inceptc_graphs::build(
        inceptc_graphs::Model::InceptionResnetV1,
        &inceptc_graphs::Options::default(),
    )
    .unwrap();
    inceptc_ir::init::seed_weights(&mut g, 1);
    inceptc::passes::run_pipeline(&mut g, None).unwrap();
    let program = inceptc::codegen::Program::new(&g, 1, 80, 80).unwrap();
    let desc = inceptc::codegen::describe(
        &program,
        "inception-resnet-v1",
        inceptc_runtime::desc::Preprocess::Facenet,
        inceptc_runtime::desc::OutputKind::Embedding,
    );
    let seed = desc.encode();
    survives("model description", &seed, |bytes| {
        let _ = inceptc_runtime::desc::ModelDesc::decode(bytes);
    });
}

#[test]
fn damaged_images_are_rejected_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_fn(23, 17, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, 77]));
    for ext in ["png", "jpg"] {
        let seed_path = dir.path().join(format!("seed.{ext}"));
        img.save(&seed_path).unwrap();
        let seed = std::fs::read(&seed_path).unwrap();
        let path = dir.path().join(format!("case.{ext}"));
        survives(ext, &seed, |bytes| {
            std::fs::write(&path, bytes).unwrap();
            if let Ok(decoded) = inceptc_runtime::image::load(&path) {
                let how = inceptc_runtime::desc::Preprocess::Facenet;
                let _ = inceptc_runtime::image::preprocess(&decoded, how, [8, 8]);
            }
        });
    }
}

/// Every committed fuzz input — the seed corpora (fuzz/corpus/<target>) and the inputs that once
/// crashed or hung a target, reduced (fuzz/regressions/<target>) — through the targets' bodies.
#[test]
fn fuzz_corpora_and_regressions_replay() {
    let root = inceptc_suite::root().join("fuzz");
    for (target, body) in inceptc_suite::fuzz::TARGETS {
        let mut count = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let start = std::time::Instant::now();
                if catch_unwind(AssertUnwindSafe(|| body(&bytes))).is_err() {
                    panic!("fuzz target {target} fails on {}", path.display());
                }
                let took = start.elapsed();
                assert!(took.as_secs() < 5, "{}: {took:?}", path.display());
                count += 1;
            }
        }
        assert!(count >= 5, "{target}: only {count} committed inputs");
    }
}
