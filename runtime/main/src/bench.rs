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

/// The Chrome trace-event JSON of one timed run: a complete ("X") event per block and per stage,
/// in microseconds from the start of the run. A stage of one step is its kernel; the kernels of a
/// larger stage run together, and its event names them all (`k12_a + k13_b`).
fn chrome_trace(desc: &ModelDesc, times: &StepTimes, threads: usize) -> String {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut events = vec![format!(
        "{{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": 1, \"args\": {{\"name\": {}}}}}",
        json_string(&format!("{} (batch {}, {threads} threads)", desc.model, desc.batch))
    )];
    let end_of = |k: usize| times.start[k] + times.duration[k];
    let mut s = 0;
    while s < desc.steps.len() {
        let block = desc.steps[s].block;
        let first = s;
        while s < desc.steps.len() && desc.steps[s].block == block {
            s += 1;
        }
        let begin = times.start[first];
        let end = (first..s).map(end_of).max().unwrap_or(begin);
        events.push(format!(
            "{{\"name\": {}, \"cat\": \"block\", \"ph\": \"X\", \"ts\": {:.3}, \"dur\": {:.3}, \"pid\": 1, \"tid\": 1}}",
            json_string(&desc.blocks[block]),
            us(begin),
            us(end - begin)
        ));
        let mut k = first;
        while k < s {
            // Stages lie within a block.
            let stage = inceptc_runtime::exec::stage_end(k, s, |j| desc.steps[j].joins);
            let steps = &desc.steps[k..stage];
            let name: Vec<&str> = steps
                .iter()
                .map(|step| match step.has_kernel {
                    true => step.name.as_str(),
                    false => "input",
                })
                .collect();
            // The threads' summed time in the stage's work (`thread_ms`): on N threads, N ×
            // `dur` less it is what they waited for each other.
            let busy: Duration = times
                .busy
                .get(k..stage)
                .map_or(Duration::ZERO, |b| b.iter().sum());
            events.push(format!(
                "{{\"name\": {}, \"cat\": \"kernel\", \"ph\": \"X\", \"ts\": {:.3}, \"dur\": {:.3}, \"pid\": 1, \"tid\": 1, \"args\": {{\"work_items\": {}, \"thread_ms\": {:.4}}}}}",
                json_string(&name.join(" + ")),
                us(times.start[k]),
                us(times.duration[k]),
                steps.iter().map(|step| step.items).sum::<usize>(),
                ms(busy)
            ));
            k = stage;
        }
    }
    format!(
        "{{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n{}\n]}}\n",
        events.join(",\n")
    )
}

/// A horizontal bar chart of `medians` (ms) per block, top to bottom in block order, as SVG
/// written directly: one chart does not need a plotting library in every executable.
fn latency_chart(title: &str, blocks: &[String], medians: &[f64]) -> String {
    use std::fmt::Write as _;
    const WIDTH: f64 = 900.0;
    const ROW: f64 = 22.0;
    // The plot area: labels on the left, the title above, the axis below.
    let (left, top, right) = (182.0, 40.0, WIDTH - 16.0);
    let bottom = top + ROW * blocks.len() as f64;
    let height = bottom + 50.0;
    let longest = medians.iter().cloned().fold(0.0, f64::max).max(1e-3);
    // Ticks at 1, 2 or 5 × 10^k, about six of them.
    let raw = longest / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let span = (longest * 1.05 / step).ceil() * step;
    let x = |v: f64| left + (right - left) * v / span;
    let escape = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = String::new();
    let w = &mut svg;
    let _ = writeln!(
        w,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        w,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#FFFFFF\"/>"
    );
    let _ = writeln!(
        w,
        "<text x=\"{}\" y=\"24\" font-size=\"16\" text-anchor=\"middle\">{}</text>",
        WIDTH / 2.0,
        escape(title)
    );
    let ticks = (span / step).round() as usize;
    for i in 0..=ticks {
        let v = i as f64 * step;
        let _ = writeln!(
            w,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#DDDDDD\"/>\n\
             <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>",
            x(v),
            bottom + 4.0,
            bottom + 18.0,
            format_tick(v, step)
        );
    }
    for (b, (name, v)) in blocks.iter().zip(medians).enumerate() {
        let y = top + ROW * b as f64;
        let _ = writeln!(
            w,
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#3465A4\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            y + 3.0,
            (x(*v) - left).max(0.0),
            ROW - 6.0,
            left - 8.0,
            y + ROW / 2.0 + 4.0,
            escape(name)
        );
    }
    let _ = writeln!(
        w,
        "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#000000\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"#000000\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">median latency (ms)</text>\n</svg>",
        (left + right) / 2.0,
        bottom + 40.0
    );
    svg
}

/// A tick value with as many decimals as its step needs.
fn format_tick(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
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
            "{} {}, batch {}, {}×{}, {} thread(s): {:.1} ms end to end (median of {runs})",
            desc.model,
            desc.precision.name(),
            desc.batch,
            desc.image[0],
            desc.image[1],
            pool.threads(),
            ms(median_total)
        );
        let svg = latency_chart(&title, &desc.blocks, &medians);
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
            "{{\"model\": {}, \"precision\": \"{}\", \"batch\": {}, \"image_size\": [{}, {}], \
             \"threads\": {}, \"runs\": {runs}, \"end_to_end\": {{\"median_ms\": {:.4}, \
             \"min_ms\": {:.4}}}, \"blocks\": [{}]}}",
            json_string(&desc.model),
            desc.precision.name(),
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
        "{} {}, batch {}, {}×{}, {} thread(s), {runs} runs after a warm-up",
        desc.model,
        desc.precision.name(),
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
