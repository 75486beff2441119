//! The schedule and memory plan: no two live buffers share bytes, the arena stays within 1.1× the
//! lower bound on every network, shared buffers (tiles, in-place residuals) are what the graph says,
//! and a small graph's plan is the one worked out by hand.

use inceptc::passes::run_pipeline;
use std::collections::HashMap;

use inceptc::plan::{plan, plan_deferred, schedule, MemoryPlan, Storage};
use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::op::Op;
use inceptc_ir::{text, Graph, NodeId};

/// The arena may exceed the lower bound by this factor at most.
const SLACK: f64 = 1.1;

fn optimized(model: Model) -> Graph {
    let mut g = load(model, Weights::Seeded(1), &Options::default()).unwrap();
    run_pipeline(&mut g, None).unwrap();
    g
}

/// Checks what every plan must satisfy and returns a description of the first violation.
fn check(graph: &Graph, p: &MemoryPlan) -> Result<(), String> {
    if let Some((a, b)) = p.overlapping_buffers() {
        return Err(format!("`{}` and `{}` overlap while live", a.name, b.name));
    }
    for b in &p.buffers {
        if b.offset % inceptc::plan::ALIGN != 0 || b.offset + b.bytes > p.arena_bytes {
            return Err(format!("`{}` is misaligned or outside the arena", b.name));
        }
    }
    let scheduled: usize = p.steps.iter().map(Vec::len).sum();
    if scheduled != graph.len() || p.placements.len() != graph.len() {
        return Err("not every node is scheduled and placed".into());
    }
    for id in graph.node_ids() {
        let node = graph.node(id);
        let inputs = graph.inputs(id);
        let place = p.placements[&id];
        let same = |other| p.placements[&other].buffer == place.buffer;
        if node.tile.is_some_and(|t| t.new_buffer.is_none()) && !same(*inputs.last().unwrap()) {
            return Err(format!(
                "tile `{}` is not in its destination's buffer",
                node.name
            ));
        }
        if matches!(&node.op, Op::FusedConv(f) if f.in_place) && !same(inputs[1]) {
            return Err(format!(
                "in-place `{}` is not in its residual's buffer",
                node.name
            ));
        }
        if same(inputs.first().copied().unwrap_or(id)) && !inputs.is_empty() {
            return Err(format!("`{}` overwrites the buffer it reads", node.name));
        }
    }
    check_stages(graph, p)?;
    if p.arena_bytes < p.lower_bound || p.ratio() > SLACK {
        return Err(format!(
            "arena {} against lower bound {}",
            p.arena_bytes, p.lower_bound
        ));
    }
    Ok(())
}

/// The stages cover the steps in order; the kernels of a stage read nothing another of them
/// writes, write one buffer only at different channels, and every buffer they touch is live for
/// the whole stage (so that the arena keeps them apart while they run together).
fn check_stages(graph: &Graph, p: &MemoryPlan) -> Result<(), String> {
    let covered: Vec<usize> = p.stages.iter().flat_map(|s| s.clone()).collect();
    if covered != (0..p.steps.len()).collect::<Vec<_>>() {
        return Err(format!(
            "the stages {:?} do not cover the steps in order",
            p.stages
        ));
    }
    for stage in &p.stages {
        let members: Vec<NodeId> = p.steps[stage.clone()].iter().flatten().copied().collect();
        for &a in &members {
            let inputs = graph.inputs(a);
            let own = graph.node(a).own_operands(inputs.len());
            for &b in &members {
                let (pa, pb) = (p.placements[&a], p.placements[&b]);
                let same_step = p.steps[stage.clone()]
                    .iter()
                    .any(|s| s.contains(&a) && s.contains(&b));
                if same_step {
                    continue;
                }
                if inputs[..own]
                    .iter()
                    .any(|i| p.placements[i].buffer == pb.buffer)
                {
                    return Err(format!(
                        "`{}` reads the buffer of `{}`, which runs in its stage",
                        graph.node(a).name,
                        graph.node(b).name
                    ));
                }
                let apart = pa.channel_offset + pa.channels <= pb.channel_offset
                    || pb.channel_offset + pb.channels <= pa.channel_offset;
                if pa.buffer == pb.buffer && !apart {
                    return Err(format!(
                        "`{}` and `{}` write the same channels and run together",
                        graph.node(a).name,
                        graph.node(b).name
                    ));
                }
            }
            let touched = inputs.iter().map(|i| p.placements[i].buffer);
            for buffer in touched.chain([p.placements[&a].buffer]) {
                let live = p.buffers[buffer].live;
                if live[0] > stage.start || live[1] < stage.end - 1 {
                    return Err(format!(
                        "`{}` of stage {stage:?} touches `{}`, live only {live:?}",
                        graph.node(a).name,
                        p.buffers[buffer].name
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_branches_of_an_inception_block_run_as_stages() {
    let g = optimized(Model::InceptionV4);
    let p = plan(&g, 1, 299, 299).unwrap();
    check(&g, &p).unwrap();
    let names = |stage: &std::ops::Range<usize>| -> Vec<String> {
        p.steps[stage.clone()]
            .iter()
            .map(|s| g.node(s[0]).name.clone())
            .collect()
    };
    let stages: Vec<Vec<String>> = p
        .stages
        .iter()
        .map(names)
        .filter(|n| n.iter().all(|n| n.starts_with("features.6.")))
        .collect();
    // The first Inception-A block: its shared 1×1 kernel (with the average pool, which reads
    // the same input), then the two 3×3 convolutions that read it, then the second 3×3 of the
    // third branch with the pooled branch's 1×1.
    assert_eq!(stages.len(), 3, "{stages:#?}");
    assert!(stages[1].len() >= 2 && stages[2].len() >= 2, "{stages:#?}");
    assert!(
        p.stages.len() < p.steps.len() * 2 / 3,
        "{} stages",
        p.stages.len()
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn every_network_plans_within_slack_of_the_lower_bound() {
    for model in Model::ALL {
        let g = optimized(model);
        let size = model.default_image_size();
        for batch in [1, 2] {
            let p = plan(&g, batch, size, size).unwrap();
            check(&g, &p).unwrap_or_else(|e| panic!("{model} batch {batch}: {e}"));
            eprintln!(
                "{model} batch {batch}: arena {} B, lower bound {} B",
                p.arena_bytes, p.lower_bound
            );
        }
    }
}

/// Every value is computed at an earlier step than any step that reads it or writes into its
/// buffer (a later tile), or at the same step (a shared kernel's members).
fn check_order(graph: &Graph, p: &MemoryPlan) -> Result<(), String> {
    let step_of = |id: NodeId| p.steps.iter().position(|s| s.contains(&id)).unwrap();
    for id in graph.node_ids() {
        for input in graph.inputs(id) {
            let (a, b) = (step_of(input), step_of(id));
            if a > b || (a == b && !p.steps[a].contains(&input)) {
                return Err(format!(
                    "`{}` runs at step {b}, before `{}` at step {a}",
                    graph.node(id).name,
                    graph.node(input).name
                ));
            }
        }
    }
    Ok(())
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn deferred_kernels_run_in_a_later_stage_and_still_plan() {
    for model in Model::ALL {
        let g = optimized(model);
        let size = model.default_image_size();
        let p = plan(&g, 1, size, size).unwrap();
        check_order(&g, &p).unwrap();
        // Every kernel that can wait goes as late as it can, without delaying another.
        let defer: HashMap<NodeId, usize> = (0..p.steps.len())
            .filter(|&s| p.latest[s] > p.levels[s])
            .map(|s| (p.steps[s][0], p.latest[s]))
            .collect();
        assert!(
            defer.len() >= 3,
            "{model}: {} kernels can wait",
            defer.len()
        );
        let q = plan_deferred(&g, 1, size, size, false, Storage::default(), &defer).unwrap();
        let ctx = |e: String| format!("{model} deferred: {e}");
        check(&g, &q).map_err(ctx).unwrap();
        check_order(&g, &q).map_err(ctx).unwrap();
        for (s, step) in q.steps.iter().enumerate() {
            let before = p.steps.iter().position(|t| t == step).unwrap();
            let wanted = defer.get(&step[0]).copied().unwrap_or(p.levels[before]);
            assert_eq!(q.levels[s], wanted, "{model}: {}", g.node(step[0]).name);
            // A deferred kernel runs after the kernels whose own level that is, but for those
            // that wait for it (a later tile of its concatenation).
            if defer.contains_key(&step[0]) && s + 1 < q.steps.len() {
                let next = &q.steps[s + 1];
                assert!(
                    q.levels[s + 1] > q.levels[s]
                        || defer.contains_key(&next[0])
                        || g.inputs(next[0]).contains(&step[0]),
                    "{model}: `{}` runs before `{}` of its level",
                    g.node(step[0]).name,
                    g.node(next[0]).name
                );
            }
        }
    }
    // In Inception-v4's first reduction, the first branch's 3×3/2 can wait for the second
    // branch's 3×3 (two work items on two threads) and run beside it.
    let g = optimized(Model::InceptionV4);
    let p = plan(&g, 1, 299, 299).unwrap();
    let branch0 = p
        .steps
        .iter()
        .position(|s| g.node(s[0]).name == "features.10.branch0.conv")
        .unwrap();
    assert!(p.latest[branch0] > p.levels[branch0]);
}

#[test]
fn overlap_check_catches_two_live_buffers_on_the_same_bytes() {
    let g = text::parse(
        r#"graph "t" {
  %0 = input channels=4 name="input" block="b"
  %1 = fused_conv %0 in=4 out=4 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=true name="a" block="b"
  %2 = fused_conv %1 in=4 out=4 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=true name="b" block="b"
  output %2
}"#,
    )
    .unwrap();
    let mut p = plan(&g, 1, 8, 8).unwrap();
    check(&g, &p).unwrap();
    // `a` and `b` are both live while `b` runs; put them on the same bytes.
    let (ia, ib) = (
        p.placements[&g.find("a").unwrap()].buffer,
        p.placements[&g.find("b").unwrap()].buffer,
    );
    p.buffers[ib].offset = p.buffers[ia].offset;
    assert!(p.overlapping_buffers().is_some());
}

#[test]
fn a_conv_chain_needs_two_buffers_and_halos_follow_padding() {
    // input → a (1×1) → b (3×3, pad 1) → c (1×1): at most two values are live at once.
    let g = text::parse(
        r#"graph "t" {
  %0 = input channels=4 name="input" block="b"
  %1 = fused_conv %0 in=4 out=4 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=true name="a" block="b"
  %2 = fused_conv %1 in=4 out=4 kernel=3x3 stride=1x1 pad=1x1 bias=true residual=false relu=true name="b" block="b"
  %3 = fused_conv %2 in=4 out=4 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=true name="c" block="b"
  output %3
}"#,
    )
    .unwrap();
    let p = plan(&g, 1, 8, 8).unwrap();
    check(&g, &p).unwrap();
    let buffer = |name: &str| &p.buffers[p.placements[&g.find(name).unwrap()].buffer];
    // `a` is read by the padded 3×3: one zero row and column on each side, 4·10·10 floats.
    assert_eq!(buffer("a").halo, [1, 1]);
    assert_eq!(buffer("a").bytes, 4 * 10 * 10 * 4);
    assert_eq!(buffer("b").bytes, 4 * 8 * 8 * 4);
    assert_eq!(buffer("a").live, [1, 2]);
    assert_eq!(buffer("c").live, [3, 4], "an output lives to the end");
    // The peak is while `b` runs: a (1600 B) and b (1024 B).
    assert_eq!(p.lower_bound, 1600 + 1024);
    assert_eq!(p.arena_bytes, p.lower_bound);
}

#[test]
fn shared_kernels_run_as_one_step_and_tiles_share_their_buffer() {
    let source = std::fs::read_to_string(
        inceptc_suite::root().join("tests/ir/merge-sibling-1x1/siblings.out.txt"),
    )
    .unwrap();
    let g = text::parse(&source).unwrap();
    let steps = schedule(&g).unwrap();
    let kernel: Vec<_> = steps
        .iter()
        .find(|s| s.len() > 1)
        .expect("a step with the shared kernel")
        .iter()
        .map(|id| g.node(*id).name.clone())
        .collect();
    assert_eq!(
        kernel,
        ["m.branch0.conv", "m.branch1.0.conv", "m.branch2.0.conv"]
    );
    let p = plan(&g, 2, 9, 9).unwrap();
    check(&g, &p).unwrap();
    let place = |name: &str| p.placements[&g.find(name).unwrap()];
    assert_eq!(
        place("m.branch4.conv").buffer,
        place("m.branch0.conv").buffer
    );
    assert_eq!(
        (
            place("m.branch3.conv").channel_offset,
            place("m.branch3.conv").channels
        ),
        (2, 2)
    );
}

#[test]
fn in_place_residuals_reuse_the_block_input() {
    let source = std::fs::read_to_string(
        inceptc_suite::root().join("tests/ir/plan-memory/residual.out.txt"),
    )
    .unwrap();
    let g = text::parse(&source).unwrap();
    let p = plan(&g, 1, 7, 7).unwrap();
    check(&g, &p).unwrap();
    let buffer = |name: &str| p.placements[&g.find(name).unwrap()].buffer;
    assert_eq!(buffer("stem"), buffer("r0.conv2d"));
    assert_eq!(buffer("stem"), buffer("r1.conv2d"));
}

/// bf16 maps pad their pixels to whole channel pairs, and with AMX's granule of 32 the maps of
/// 32 or more channels to multiples of 32; every network still plans without overlaps.
#[test]
fn bf16_and_amx_storage_pads_channels_and_still_plans() {
    use inceptc::plan::{plan_guarded, Storage};
    use inceptc_runtime::layout::Precision;
    for (granule, model) in [
        (1, Model::InceptionResnetV2),
        (32, Model::InceptionResnetV2),
    ] {
        let g = optimized(model);
        let storage = Storage {
            precision: Precision::Bf16,
            granule,
        };
        let p = plan_guarded(&g, 1, 299, 299, false, storage).unwrap();
        check(&g, &p).unwrap_or_else(|e| panic!("granule {granule}: {e}"));
        for b in &p.buffers {
            let c = b.shape.channels();
            let want = match b.shape {
                inceptc_ir::Shape::Vector { .. } => c,
                _ if c >= granule => c.next_multiple_of(granule).next_multiple_of(2),
                _ => c.next_multiple_of(2),
            };
            assert_eq!(b.channels(), want, "`{}`: {c} channels", b.name);
        }
        // IR-v2 has 80- and 48-channel maps, padded to 96 and 64 for AMX, and the 3-channel image
        // is padded to 4 either way.
        let padded: Vec<usize> = p.buffers.iter().map(|b| b.channels()).collect();
        assert!(padded.contains(&4));
        assert_eq!(padded.contains(&80), granule == 1);
        assert_eq!(padded.contains(&48), granule == 1);
    }
}
