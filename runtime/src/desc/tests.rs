//! The description's encoding round trip and the checks of what it decodes.

use super::*;

#[test]
fn round_trips_and_rejects_truncation() {
    let m = MapLayout {
        offset: 64,
        n: 1,
        h: 5,
        w: 5,
        c_total: 3,
        channel_offset: 0,
        channels: 3,
        halo: [1, 1],
        precision: Precision::F32,
        // Carried through the encoding whatever the precision.
        quant: Quant {
            scale: 0.25,
            zero: 7,
        },
    };
    let d = ModelDesc {
        model: "inception-v4".into(),
        batch: 1,
        image: [5, 5],
        preprocess: Preprocess::Timm {
            crop_pct: 0.875,
            interpolation: Filter::Bicubic,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
        output_kind: OutputKind::Logits,
        arena_bytes: 4096,
        weights_dtype: WeightsDtype::Bf16,
        tier: crate::exec::Tier::V4,
        precision: Precision::Bf16,
        amx: true,
        input: m,
        outputs: vec![Layout::Vector(VecLayout {
            offset: 0,
            n: 1,
            f_total: 10,
            feature_offset: 0,
            features: 10,
        })],
        blocks: vec!["stem".into(), "head".into()],
        steps: vec![StepDesc {
            name: "k0_conv".into(),
            has_kernel: true,
            items: 5,
            block: 1,
            clear_halos: vec![m],
            joins: false,
        }],
        guards: vec![Guard {
            buffer: "conv".into(),
            offset: 64,
            bytes: 300,
            guard: 64,
            live: [0, 1],
            halo: Some(m),
        }],
        segments: vec![
            Segment {
                offset: 0,
                source: 0,
                recipe: Recipe::Copy { floats: 3 },
            },
            Segment {
                offset: 64,
                source: 3,
                recipe: Recipe::Conv(ConvPacking {
                    out: 2,
                    inputs: 1,
                    padded_inputs: 2,
                    kernel: [1, 3],
                    transform: Some([vec![1.0], vec![0.5; 12]]),
                    panels: vec![[0, 2, 16]],
                    precision: Precision::Bf16,
                }),
            },
        ],
        packed_bytes: 64 + 4 * 16 * 4,
    };
    let bytes = d.encode();
    assert_eq!(ModelDesc::decode(&bytes).unwrap(), d);
    for cut in [0, 8, 17, bytes.len() - 8] {
        assert!(ModelDesc::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut small = d.clone();
    small.arena_bytes = 100;
    assert!(ModelDesc::decode(&small.encode()).is_err());
    // Values that would overflow or leave nothing to run are refused, not panicked on.
    let refused = |change: &dyn Fn(&mut ModelDesc), why: &str| {
        let mut bad = d.clone();
        change(&mut bad);
        let e = ModelDesc::decode(&bad.encode()).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    };
    refused(&|d| d.batch = 0, "the batch is 0");
    refused(
        &|d| {
            if let Preprocess::Timm { crop_pct, .. } = &mut d.preprocess {
                *crop_pct = f32::NAN;
            }
        },
        "preprocessing is out of range",
    );
    refused(&|d| d.outputs.clear(), "no output");
    refused(&|d| d.steps[0].joins = true, "runs concurrently");
    refused(&|d| d.image = [6, 5], "does not match");
    refused(&|d| d.input.offset = usize::MAX - 8, "outside the arena");
    refused(&|d| d.input.c_total = usize::MAX / 2, "outside the arena");
    refused(
        &|d| {
            if let Layout::Vector(v) = &mut d.outputs[0] {
                v.n = usize::MAX / 3;
            }
        },
        "outside the arena",
    );
}

/// An int8 executable's stored weights: codes one byte each, then f32 from a multiple of 4.
#[test]
fn int8_weights_store_codes_as_bytes_then_f32() {
    let dtype = WeightsDtype::Int8 { codes: 5 };
    let values: Vec<f32> = vec![-127.0, 3.0, 0.0, 127.0, -1.0, 0.5, -2.25];
    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let stored = dtype.encode(f32_bytes);
    assert_eq!(stored.len(), 8 + 2 * 4);
    assert_eq!(&stored[..5], &[0x81, 3, 0, 127, 0xff]);
    assert_eq!(dtype.offset(4), 4);
    assert_eq!(dtype.offset(5), 8);
    assert_eq!(dtype.offset(6), 12);
    assert_eq!(dtype.values(stored.len()), Some(7));
    assert_eq!(dtype.values(6), None);
    assert_eq!(dtype.values(15), None);
    assert_eq!(WeightsDtype::Int8 { codes: usize::MAX }.values(64), None);
    assert_eq!(&stored[12..16], &(-2.25f32).to_le_bytes());
}
