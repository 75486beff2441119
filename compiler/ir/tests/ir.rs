//! The IR crate on small graphs: each verifier invariant rejects a graph that breaks it, the text
//! parser reports errors by line, checkpoints decode every float dtype, and the interpreter matches
//! hand-computed values.

use inceptc_ir::op::*;
use inceptc_ir::weights::{bind, Checkpoint};
use inceptc_ir::{interp, text, verify, Graph, NodeId, Tensor};

fn conv(in_channels: usize, out_channels: usize, k: usize, pad: usize, bias: bool) -> Op {
    Op::Conv2d(Conv2dAttrs {
        in_channels,
        out_channels,
        kernel: [k, k],
        stride: [1, 1],
        padding: [pad, pad],
        bias,
    })
}

/// input(2) → conv 3×3 (3, bias) → bn → relu; ‖ max pool; concat → global pool → linear(4).
fn small() -> (Graph, [NodeId; 6]) {
    let mut g = Graph::new("small");
    let x = g.add(Op::Input(InputAttrs { channels: 2 }), &[], "input", "b0");
    let c = g.add(conv(2, 3, 3, 1, true), &[x], "c", "b0");
    let bn = g.add(
        Op::BatchNorm(BatchNormAttrs {
            channels: 3,
            eps: 1e-3,
        }),
        &[c],
        "bn",
        "b0",
    );
    let r = g.add(Op::Relu, &[bn], "r", "b0");
    let p = g.add(
        Op::MaxPool(PoolAttrs {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        }),
        &[x],
        "p",
        "b0",
    );
    let cat = g.add(Op::Concat, &[r, p], "cat", "b1");
    let gp = g.add(Op::GlobalAvgPool, &[cat], "gp", "b1");
    let fc = g.add(
        Op::Linear(LinearAttrs {
            in_features: 5,
            out_features: 4,
            bias: true,
        }),
        &[gp],
        "fc",
        "b1",
    );
    g.set_outputs(vec![fc]);
    (g, [x, c, bn, r, cat, fc])
}

fn rejects(g: &Graph, needle: &str) {
    let err = verify(g)
        .expect_err("the verifier must reject this graph")
        .to_string();
    assert!(err.contains(needle), "expected `{needle}` in `{err}`");
}

#[test]
fn the_small_graph_verifies() {
    verify(&small().0).unwrap();
}

#[test]
fn verifier_rejects_a_cycle() {
    let (mut g, [_, _, bn, r, ..]) = small();
    g.replace_uses(bn, r); // r now reads itself
    rejects(&g, "cycle");
}

#[test]
fn verifier_rejects_two_inputs_and_missing_outputs() {
    let (mut g, _) = small();
    g.add(Op::Input(InputAttrs { channels: 2 }), &[], "input2", "b0");
    rejects(&g, "exactly one input node, found 2");
    let (mut g, _) = small();
    g.set_outputs(vec![]);
    rejects(&g, "no output");
}

#[test]
fn verifier_rejects_duplicate_names_and_missing_blocks() {
    let (mut g, [_, c, ..]) = small();
    g.node_mut(c).name = "bn".into();
    rejects(&g, "node `bn`: the name is used by more than one node");
    let (mut g, [_, c, ..]) = small();
    g.node_mut(c).block.clear();
    rejects(&g, "node `c`: the node belongs to no block");
}

#[test]
fn verifier_rejects_wrong_arity() {
    let (mut g, [x, ..]) = small();
    g.add(Op::Add, &[x], "lonely_add", "b0");
    rejects(&g, "node `lonely_add`: add takes 2 operand(s), found 1");
}

#[test]
fn verifier_rejects_bad_attributes() {
    let (mut g, [_, c, ..]) = small();
    g.node_mut(c).op = conv(2, 3, 3, 3, true);
    rejects(
        &g,
        "node `c`: padding 3×3 must be smaller than the kernel 3×3",
    );
    let (mut g, [_, _, bn, ..]) = small();
    g.node_mut(bn).op = Op::BatchNorm(BatchNormAttrs {
        channels: 3,
        eps: 0.0,
    });
    rejects(&g, "node `bn`: eps must be finite and positive");
}

#[test]
fn verifier_rejects_channel_mismatches() {
    let (mut g, [_, c, ..]) = small();
    g.node_mut(c).op = conv(5, 3, 3, 1, true);
    rejects(&g, "node `c` (conv2d) expects 5 input channels, found 2");
    let (mut g, [x, _, _, r, ..]) = small();
    g.add(Op::Add, &[x, r], "bad_add", "b0");
    rejects(&g, "node `bad_add` (add) expects two operands of one shape");
}

#[test]
fn verifier_rejects_bad_parameters() {
    let (mut g, [_, c, ..]) = small();
    inceptc_ir::init::seed_weights(&mut g, 1);
    verify(&g).unwrap();
    g.node_mut(c).params[1] = Tensor::zeros(vec![4]);
    rejects(&g, "node `c`: parameter `bias` has shape [4], expected [3]");
    g.node_mut(c).params[1] = Tensor::new(vec![3], vec![0.0, f32::NAN, 0.0]).unwrap();
    rejects(&g, "node `c`: parameter `bias` holds NaN at index 1");
}

#[test]
fn text_round_trips_and_parse_errors_carry_lines() {
    let (g, _) = small();
    let printed = text::print(&g);
    assert_eq!(text::print(&text::parse(&printed).unwrap()), printed);
    let bad = |from: &str, to: &str| {
        assert!(printed.contains(from), "{from}");
        text::parse(&printed.replacen(from, to, 1)).unwrap_err()
    };
    let e = bad("= relu", "= gelu");
    assert_eq!((e.line, e.message.as_str()), (5, "unknown op `gelu`"));
    let e = bad("concat %3, %4", "concat %3, %9");
    assert_eq!(e.message, "value %9 is used before it is defined");
    let e = bad(" eps=0.001", "");
    assert_eq!(e.message, "missing attribute `eps`");
    let e = bad(" eps=0.001", " eps=0.001 momentum=0.1");
    assert_eq!(e.message, "unknown attribute `momentum`");
    let e = bad("name=\"c\"", "name=\"c");
    assert_eq!(e.message, "unterminated string");
    let e = bad("kernel=3x3", "kernel=3by3");
    assert!(e.message.contains("expected HxW"), "{}", e.message);
    let e = text::parse(printed.trim_end().trim_end_matches('}')).unwrap_err();
    assert_eq!(e.message, "missing closing `}`");
}

#[test]
fn checkpoints_decode_f32_f16_bf16_and_f64() {
    let values = [0.5f32, -1.25, 3.0];
    let tensors = [
        (
            "a",
            safetensors::Dtype::F32,
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            "b",
            safetensors::Dtype::F16,
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        (
            "c",
            safetensors::Dtype::BF16,
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        (
            "d",
            safetensors::Dtype::F64,
            values
                .iter()
                .flat_map(|v| (*v as f64).to_le_bytes())
                .collect(),
        ),
    ];
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, vec![3], b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let ckpt = Checkpoint::from_bytes(std::path::Path::new("mem.safetensors"), bytes).unwrap();
    for name in ["a", "b", "c", "d"] {
        let t = ckpt.tensor(name).unwrap().unwrap();
        assert_eq!(t.data(), &values, "{name}");
    }
}

#[test]
fn binding_reports_every_problem_and_binds_nothing_on_failure() {
    let (mut g, [_, c, ..]) = small();
    let enc = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let wrong = enc(&[0.0; 2 * 3 * 9]);
    let bias = enc(&[0.0; 3]);
    let views = vec![
        (
            "c.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 2, 9], &wrong)
                .unwrap(),
        ),
        (
            "c.bias".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &bias).unwrap(),
        ),
        (
            "zzz".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &bias).unwrap(),
        ),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    let ckpt = Checkpoint::from_bytes(std::path::Path::new("m.safetensors"), bytes).unwrap();
    let err = bind(&mut g, &ckpt, &|_| false).unwrap_err().to_string();
    for needle in [
        "m.safetensors: the checkpoint does not fit the `small` graph",
        "tensor `c.weight` has shape [3, 2, 9], expected [3, 2, 3, 3]",
        "missing tensor `bn.running_var` (expected shape [3])",
        "missing tensor `fc.weight` (expected shape [4, 5])",
        "unexpected tensor `zzz` of shape [3]",
    ] {
        assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    }
    assert!(
        g.node(c).params.is_empty(),
        "nothing is bound after a failure"
    );
}

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

#[test]
fn interpreter_matches_hand_computed_values() {
    // input [1, 1, 2, 2] → conv 1×1 (2 out, bias) → add(conv, conv) → scale 0.5 → concat with the
    // input → global pool → linear → softmax.
    let mut g = Graph::new("hand");
    let x = g.add(Op::Input(InputAttrs { channels: 1 }), &[], "x", "b");
    let c = g.add(conv(1, 2, 1, 0, true), &[x], "c", "b");
    let a = g.add(Op::Add, &[c, c], "a", "b");
    let s = g.add(Op::Scale(ScaleAttrs { factor: 0.5 }), &[a], "s", "b");
    let cat = g.add(Op::Concat, &[x, s], "cat", "b");
    let gp = g.add(Op::GlobalAvgPool, &[cat], "gp", "b");
    let fc = g.add(
        Op::Linear(LinearAttrs {
            in_features: 3,
            out_features: 2,
            bias: false,
        }),
        &[gp],
        "fc",
        "b",
    );
    let sm = g.add(Op::Softmax, &[fc], "sm", "b");
    g.set_outputs(vec![gp, fc, sm]);
    g.node_mut(c).params = vec![
        tensor(&[2, 1, 1, 1], &[2.0, -1.0]),
        tensor(&[2], &[1.0, 0.0]),
    ];
    g.node_mut(fc).params = vec![tensor(&[2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 1.0])];
    verify(&g).unwrap();
    let out = interp::run(&g, &tensor(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])).unwrap();
    // conv channel 0 = 2x + 1 → mean 6; channel 1 = −x → mean −2.5; input mean 2.5.
    assert_eq!(out[0].data(), &[2.5, 6.0, -2.5]);
    assert_eq!(out[1].data(), &[2.5, 3.5]);
    let e = (-1.0f64).exp();
    let expected = [(e / (1.0 + e)) as f32, (1.0 / (1.0 + e)) as f32];
    for (got, want) in out[2].data().iter().zip(expected) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}

#[test]
fn batch_norm_and_l2_normalize_follow_their_definitions() {
    let mut g = Graph::new("bn");
    let x = g.add(Op::Input(InputAttrs { channels: 2 }), &[], "x", "b");
    let gp = g.add(Op::GlobalAvgPool, &[x], "gp", "b");
    let bn = g.add(
        Op::BatchNorm1d(BatchNormAttrs {
            channels: 2,
            eps: 0.25,
        }),
        &[gp],
        "bn",
        "b",
    );
    let l2 = g.add(
        Op::L2Normalize(L2NormalizeAttrs { eps: 1e-12 }),
        &[bn],
        "l2",
        "b",
    );
    g.set_outputs(vec![bn, l2]);
    g.node_mut(bn).params = vec![
        tensor(&[2], &[2.0, 1.0]),   // weight
        tensor(&[2], &[0.5, 0.0]),   // bias
        tensor(&[2], &[1.0, -1.0]),  // running_mean
        tensor(&[2], &[0.75, 3.75]), // running_var: var + eps = 1, 4
    ];
    let out = interp::run(&g, &tensor(&[1, 2, 1, 1], &[3.0, 7.0])).unwrap();
    // (3 − 1) / 1 · 2 + 0.5 = 4.5; (7 + 1) / 2 · 1 + 0 = 4.
    assert_eq!(out[0].data(), &[4.5, 4.0]);
    let n = (4.5f64 * 4.5 + 16.0).sqrt();
    assert_eq!(out[1].data(), &[(4.5 / n) as f32, (4.0 / n) as f32]);
}

/// A graph in text form with the storage attributes that the last passes set.
fn storage_graph(body: &str) -> Graph {
    let f = "kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=true";
    let text = format!(
        "graph \"t\" {{\n  %0 = input channels=4 name=\"input\" block=\"b\"\n{}\n}}\n",
        body.replace("$F", f)
    );
    text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn verifier_checks_tiles() {
    let ok = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=2 $F name="a" block="b" tile=0/5
  %2 = max_pool %0, %1 kernel=1x1 stride=1x1 pad=0x0 name="p" block="b" tile=1
  output %2"#,
    );
    verify(&ok).unwrap();
    // 1 + 4 pooled channels do not fit in 4.
    let too_wide = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=2 $F name="a" block="b" tile=0/4
  %2 = max_pool %0, %1 kernel=1x1 stride=1x1 pad=0x0 name="p" block="b" tile=1
  output %2"#,
    );
    rejects(&too_wide, "for channels 1..5");
    let read_elsewhere = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=2 $F name="a" block="b" tile=0/6
  %2 = max_pool %0, %1 kernel=1x1 stride=1x1 pad=0x0 name="p" block="b" tile=2
  output %2, %1"#,
    );
    rejects(&read_elsewhere, "is read elsewhere");
    let untiled_dest = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=6 $F name="a" block="b"
  %2 = max_pool %0, %1 kernel=1x1 stride=1x1 pad=0x0 name="p" block="b" tile=2
  output %2"#,
    );
    rejects(&untiled_dest, "is not a tiled node");
    let no_dest = storage_graph(
        r#"  %1 = max_pool %0 kernel=1x1 stride=1x1 pad=0x0 name="p" block="b" tile=2
  output %1"#,
    );
    rejects(&no_dest, "plus a tile destination");
}

#[test]
fn verifier_checks_in_place_and_shared_kernels() {
    let read_after = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=4 $F name="x" block="b"
  %2 = fused_conv %1, %1 in=4 out=4 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=true relu=true in_place=true name="r" block="b"
  output %2"#,
    );
    rejects(&read_after, "in_place on its own input");
    let later_reader = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=4 $F name="x" block="b"
  %2 = fused_conv %0 in=4 out=4 $F name="y" block="b"
  %3 = fused_conv %2, %1 in=4 out=4 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=true relu=true in_place=true name="r" block="b"
  %4 = fused_conv %1 in=4 out=4 $F name="z" block="b"
  output %3, %4"#,
    );
    rejects(&later_reader, "which `z` may still read afterwards");
    let lone = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=4 $F name="x" block="b" shared_kernel="k"
  output %1"#,
    );
    rejects(&lone, "has only one member");
    let different_inputs = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=4 $F name="x" block="b" shared_kernel="k"
  %2 = fused_conv %1 in=4 out=4 $F name="y" block="b" shared_kernel="k"
  output %2"#,
    );
    rejects(&different_inputs, "does not read the same single operand");
    let not_1x1 = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=4 $F name="x" block="b" shared_kernel="k"
  %2 = fused_conv %0 in=4 out=4 kernel=3x3 stride=1x1 pad=1x1 bias=true residual=false relu=true name="y" block="b" shared_kernel="k"
  output %1, %2"#,
    );
    rejects(&not_1x1, "not a 1×1 stride-1 unpadded fused conv");
    let merged = storage_graph(
        r#"  %1 = fused_conv %0 in=4 out=4 $F name="x" block="b" shared_kernel="k"
  %2 = fused_conv %0 in=4 out=3 $F name="y" block="b" shared_kernel="k" tile=0/5
  output %1, %2"#,
    );
    verify(&merged).unwrap();
    assert_eq!(
        text::print(&text::parse(&text::print(&merged)).unwrap()),
        text::print(&merged)
    );
}
