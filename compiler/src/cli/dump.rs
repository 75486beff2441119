//! `inceptc dump` (the IR as text or Graphviz, before or after any pass) and `inceptc plan` (the
//! memory plan).

use crate::*;

/// How `dump` renders a graph.
pub(crate) struct View<'a> {
    pub(crate) format: Format,
    pub(crate) block: Option<&'a str>,
    pub(crate) image_size: Option<usize>,
}

impl View<'_> {
    pub(crate) fn extension(&self) -> &'static str {
        match self.format {
            Format::Text => "txt",
            Format::Dot => "dot",
        }
    }

    /// The graph as text or DOT, with shapes at the view's image size (batch 1); DOT of a graph
    /// that has been through plan-memory also gives each node's place in the arena.
    pub(crate) fn render(&self, args: &ModelArgs, graph: &Graph, planned: bool) -> Result<String> {
        if let Some(b) = self.block {
            if !graph.blocks().iter().any(|x| x == b) {
                bail!(
                    "{} has no block `{b}`; its blocks are: {}",
                    args.model(),
                    graph.blocks().join(", ")
                );
            }
        }
        let size = self.image_size.unwrap_or(args.model().default_image_size());
        let shapes = infer_shapes(graph, 1, size, size)
            .with_context(|| format!("{} at {size}×{size}", args.model()))?;
        Ok(match self.format {
            Format::Text => inceptc_ir::text::print_with(
                graph,
                &PrintOptions {
                    shapes: Some(&shapes),
                    block: self.block,
                },
            ),
            Format::Dot => {
                let notes = if planned {
                    let plan = inceptc::plan::plan(graph, 1, size, size)?;
                    Some(arena_notes(&plan))
                } else {
                    None
                };
                inceptc_ir::dot::to_dot(graph, Some(&shapes), notes.as_ref(), self.block)
            }
        })
    }
}

/// One line per node: where in the arena it writes.
pub(crate) fn arena_notes(plan: &inceptc::plan::MemoryPlan) -> HashMap<NodeId, String> {
    plan.placements
        .iter()
        .map(|(id, p)| {
            let b = &plan.buffers[p.buffer];
            let note = if p.channels == b.shape.channels() {
                format!(
                    "arena @{} ({} B)",
                    group(b.offset as u64),
                    group(b.bytes as u64)
                )
            } else {
                format!(
                    "arena @{} ch {}..{} of {}",
                    group(b.offset as u64),
                    p.channel_offset,
                    p.channel_offset + p.channels,
                    b.shape.channels()
                )
            };
            (*id, note)
        })
        .collect()
}

pub(crate) fn dump(
    args: &ModelArgs,
    passes: &PassArgs,
    view: &View,
    output: Option<&Path>,
) -> Result<()> {
    let mut graph = args.load()?;
    passes.apply(&mut graph)?;
    let planned = passes.reached("plan-memory");
    let text = view.render(args, &graph, planned)?;
    match output {
        Some(path) => write_atomically(path, text.as_bytes()),
        None => Ok(std::io::stdout().write_all(text.as_bytes())?),
    }
}

/// Writes the graph before the pipeline and after each pass into `dir`, one file each.
pub(crate) fn dump_all_passes(args: &ModelArgs, view: &View, dir: &Path) -> Result<()> {
    let mut graph = args.load()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ext = view.extension();
    let mut files = vec![(
        dir.join(format!("00-input.{ext}")),
        view.render(args, &graph, false)?,
    )];
    for (i, pass) in inceptc::passes::PIPELINE.iter().enumerate() {
        inceptc::passes::run_pass(pass, &mut graph)?;
        let planned = pass.name == "plan-memory";
        files.push((
            dir.join(format!("{:02}-{}.{ext}", i + 1, pass.name)),
            view.render(args, &graph, planned)?,
        ));
    }
    for (path, text) in &files {
        write_atomically(path, text.as_bytes())?;
    }
    log::info!("wrote {} files to {}", files.len(), dir.display());
    Ok(())
}

pub(crate) fn plan(
    args: &ModelArgs,
    image_size: Option<usize>,
    batch: usize,
    buffers: bool,
) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut graph = args.load()?;
    inceptc::passes::run_pipeline(&mut graph, None)?;
    let size = image_size.unwrap_or(args.model().default_image_size());
    let mut batches = vec![1];
    if batch > 1 {
        batches.push(batch);
    }
    let mut out = String::new();
    for n in batches {
        let plan = inceptc::plan::plan(&graph, n, size, size)
            .with_context(|| format!("{} at batch {n}, {size}×{size}", args.model()))?;
        if let Some((a, b)) = plan.overlapping_buffers() {
            bail!(
                "internal error: buffers `{}` and `{}` overlap while both are live",
                a.name,
                b.name
            );
        }
        if buffers {
            out.push_str(&plan.to_string());
        } else {
            out.push_str(plan.to_string().lines().last().unwrap_or_default());
            out.push('\n');
        }
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}
