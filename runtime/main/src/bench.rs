//! `--bench`: every block and the whole network timed on seeded input, printed as a table or
//! JSON, and optionally written as a Chrome trace and a latency chart.

use super::*;

/// What --bench writes besides its table.
pub(crate) struct BenchOutputs<'a> {
    pub(crate) json: bool,
    pub(crate) trace: Option<&'a Path>,
    pub(crate) plot: Option<&'a Path>,
}

/// Deterministic input in [−1, 1) for `--bench`.
fn seeded_input(len: usize) -> Vec<f32> {
    let mut state: u64 = 0x2016_0223;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Chrome trace-event JSON of one timed run: a complete ("X") event per block and per kernel,
/// in microseconds from the start of the run.
fn chrome_trace(desc: &ModelDesc, times: &StepTimes, threads: usize) -> String {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut events = vec![format!(
        "{{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": 1, \"args\": {{\"name\": {}}}}}",
        json_string(&format!("{} (batch {}, {threads} threads)", desc.model, desc.batch))
    )];
    let mut s = 0;
    while s < desc.steps.len() {
        let block = desc.steps[s].block;
        let first = s;
        while s < desc.steps.len() && desc.steps[s].block == block {
            s += 1;
        }
        let begin = times.start[first];
        let end = times.start[s - 1] + times.duration[s - 1];
        events.push(format!(
            "{{\"name\": {}, \"cat\": \"block\", \"ph\": \"X\", \"ts\": {:.3}, \"dur\": {:.3}, \"pid\": 1, \"tid\": 1}}",
            json_string(&desc.blocks[block]),
            us(begin),
            us(end - begin)
        ));
        for k in first..s {
            let step = &desc.steps[k];
            events.push(format!(
                "{{\"name\": {}, \"cat\": \"kernel\", \"ph\": \"X\", \"ts\": {:.3}, \"dur\": {:.3}, \"pid\": 1, \"tid\": 1, \"args\": {{\"work_items\": {}}}}}",
                json_string(if step.has_kernel { &step.name } else { "input" }),
                us(times.start[k]),
                us(times.duration[k]),
                step.items
            ));
        }
    }
    format!(
        "{{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n{}\n]}}\n",
        events.join(",\n")
    )
}

/// A horizontal bar chart of `medians` (ms) per block, top to bottom in block order, as SVG.
fn latency_chart(title: &str, blocks: &[String], medians: &[f64]) -> Result<String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart: {e}");
    let mut svg = String::new();
    {
        let height = 90 + 22 * blocks.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let longest = medians.iter().cloned().fold(0.0, f64::max).max(1e-3);
        let n = blocks.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(170)
            .build_cartesian_2d(0.0..longest * 1.08, (0..n).into_segmented())
            .map_err(|e| err(&e))?;
        // Block 0 at the top: segment i shows block n - 1 - i.
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => blocks[n - 1 - i].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label)
            .x_desc("median latency (ms)")
            .draw()
            .map_err(|e| err(&e))?;
        let bars = medians.iter().enumerate().map(|(b, v)| {
            let row = n - 1 - b;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (*v, SegmentValue::Exact(row + 1)),
                ],
                RGBColor(52, 101, 164).filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        });
        chart.draw_series(bars).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

pub(crate) fn bench(
    desc: &ModelDesc,
    model: &exec::Model,
    pool: &ThreadPool,
    arena: &mut Arena,
    runs: usize,
    outputs: &BenchOutputs,
) -> Result<()> {
    let x = seeded_input(desc.batch * desc.input.channels * desc.image[0] * desc.image[1]);
    model.run(arena, &x, pool).context("warm-up run")?;
    let mut totals = Vec::with_capacity(runs);
    let mut blocks: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); desc.blocks.len()];
    let mut times = StepTimes::default();
    let mut fastest: Option<(Duration, StepTimes)> = None;
    for _ in 0..runs {
        let start = Instant::now();
        model.run_timed(arena, &x, pool, Some(&mut times))?;
        let total = start.elapsed();
        totals.push(total);
        for (b, t) in model.block_times(&times.duration).into_iter().enumerate() {
            blocks[b].push(t);
        }
        if fastest.as_ref().is_none_or(|(t, _)| total < *t) {
            fastest = Some((total, times.clone()));
        }
    }
    if let (Some(path), Some((_, run))) = (outputs.trace, &fastest) {
        let text = chrome_trace(desc, run, pool.threads());
        inceptc_runtime::files::write_atomically(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    let min_total = *totals.iter().min().unwrap_or(&Duration::ZERO);
    let median_total = median(totals);
    if let Some(path) = outputs.plot {
        let medians: Vec<f64> = blocks.iter().map(|t| ms(median(t.clone()))).collect();
        let title = format!(
            "{}, batch {}, {}×{}, {} thread(s): {:.1} ms end to end (median of {runs})",
            desc.model,
            desc.batch,
            desc.image[0],
            desc.image[1],
            pool.threads(),
            ms(median_total)
        );
        let svg = latency_chart(&title, &desc.blocks, &medians)?;
        inceptc_runtime::files::write_atomically(path, svg.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if outputs.json {
        let rows: Vec<String> = desc
            .blocks
            .iter()
            .zip(&blocks)
            .map(|(name, t)| {
                format!(
                    "{{\"block\": {}, \"median_ms\": {:.4}, \"min_ms\": {:.4}}}",
                    json_string(name),
                    ms(median(t.clone())),
                    ms(*t.iter().min().unwrap_or(&Duration::ZERO))
                )
            })
            .collect();
        writeln!(
            out,
            "{{\"model\": {}, \"batch\": {}, \"image_size\": [{}, {}], \"threads\": {}, \"runs\": {runs}, \
             \"end_to_end\": {{\"median_ms\": {:.4}, \"min_ms\": {:.4}}}, \"blocks\": [{}]}}",
            json_string(&desc.model),
            desc.batch,
            desc.image[0],
            desc.image[1],
            pool.threads(),
            ms(median_total),
            ms(min_total),
            rows.join(", ")
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{}, batch {}, {}×{}, {} thread(s), {runs} runs after a warm-up",
        desc.model,
        desc.batch,
        desc.image[0],
        desc.image[1],
        pool.threads()
    )?;
    writeln!(out, "{:<28} {:>11} {:>11}", "block", "median ms", "min ms")?;
    for (name, t) in desc.blocks.iter().zip(&blocks) {
        let min = *t.iter().min().unwrap_or(&Duration::ZERO);
        writeln!(
            out,
            "{name:<28} {:>11.3} {:>11.3}",
            ms(median(t.clone())),
            ms(min)
        )?;
    }
    writeln!(
        out,
        "{:<28} {:>11.3} {:>11.3}",
        "end to end",
        ms(median_total),
        ms(min_total)
    )?;
    Ok(())
}
