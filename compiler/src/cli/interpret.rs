//! `inceptc interpret`: a network run by the reference interpreter on an `.npy` tensor.

use crate::*;

pub(crate) fn interpret(
    args: &ModelArgs,
    input: &Path,
    output: &Path,
    optimized: bool,
) -> Result<()> {
    let x = inceptc_runtime::npy::read_f32(input)?;
    if x.shape.len() != 4 || x.shape[1] != 3 || x.shape.contains(&0) {
        bail!(
            "{}: the input has shape {:?}; expected float32 NCHW [N, 3, H, W] with N, H, W ≥ 1",
            input.display(),
            x.shape
        );
    }
    let mut graph = args.load()?;
    if optimized {
        inceptc::passes::run_pipeline(&mut graph, None)?;
    }
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
    infer_shapes(&graph, n, h, w).with_context(|| {
        format!(
            "{}: {} cannot run at {h}×{w}",
            input.display(),
            args.model()
        )
    })?;
    let tensor =
        Tensor::new(x.shape.clone(), x.data).context("input size does not match its shape")?;
    log::info!("interpreting {} on {:?}", args.model(), tensor.shape());
    let outputs = inceptc_ir::interp::run(&graph, &tensor)?;
    let y = outputs.first().context("the graph has no output")?;
    inceptc_runtime::npy::write_f32(output, y.shape(), y.data())?;
    log::info!("wrote {} {:?}", output.display(), y.shape());
    Ok(())
}
