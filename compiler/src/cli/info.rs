//! `inceptc info`: parameters, multiply–accumulates and shapes per block.

use crate::*;

pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn info(args: &ModelArgs, image_size: Option<usize>, batch: usize) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let graph = args.load()?;
    let size = image_size.unwrap_or(args.model().default_image_size());
    let shapes = infer_shapes(&graph, batch, size, size)
        .with_context(|| format!("{} at {size}×{size}", args.model()))?;
    let stats = inceptc_ir::stats::block_stats(&graph, &shapes);
    let total_macs: u64 = stats.iter().map(|s| s.macs).sum();
    let conv_macs = inceptc_ir::stats::conv_macs(&graph, &shapes);
    let output = graph.outputs().first().and_then(|o| shapes.get(o));
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "model        {}", args.model());
    let _ = writeln!(
        out,
        "weights      {}",
        match &args.weights {
            Some(p) => p.display().to_string(),
            None => format!("seeded (seed {})", args.seed),
        }
    );
    let _ = writeln!(
        out,
        "input        [{batch}, 3, {size}, {size}] float32 NCHW"
    );
    let _ = writeln!(
        out,
        "output       {} {}",
        output.map(|s| s.to_string()).unwrap_or_default(),
        args.model().output_kind(args.classify)
    );
    let _ = writeln!(out, "parameters   {}", group(graph.trainable_parameters()));
    let _ = writeln!(out, "nodes        {}", graph.len());
    let _ = writeln!(
        out,
        "MACs         {} ({:.2} GMAC; convolutions {:.2} GMAC)",
        group(total_macs),
        total_macs as f64 / 1e9,
        conv_macs as f64 / 1e9
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>22} {:>14} {:>16}",
        "block", "output", "parameters", "MACs"
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "{:<24} {:>22} {:>14} {:>16}",
            s.block,
            s.output.map(|o| o.to_string()).unwrap_or_default(),
            group(s.parameters),
            group(s.macs)
        );
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}
