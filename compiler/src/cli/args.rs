//! The arguments several subcommands share (the model and its weights, the passes to run) and the
//! value enums of the options.

use crate::*;

#[derive(Args)]
pub(crate) struct PassArgs {
    /// Run the pipeline up to and including this pass first (see `inceptc passes`).
    #[arg(long)]
    pub(crate) after: Option<String>,
    /// Print what each pass did (nodes before and after, rewrites, time) to standard error.
    #[arg(long)]
    pub(crate) stats: bool,
}

impl PassArgs {
    /// Whether `--after` runs the pipeline through the pass `name`.
    pub(crate) fn reached(&self, name: &str) -> bool {
        let position = |n: &str| inceptc::passes::PIPELINE.iter().position(|p| p.name == n);
        match (self.after.as_deref().and_then(position), position(name)) {
            (Some(after), Some(pass)) => after >= pass,
            _ => false,
        }
    }

    /// Runs the pipeline up to `--after` (nothing without it) and prints `--stats`.
    pub(crate) fn apply(&self, graph: &mut Graph) -> Result<()> {
        let Some(after) = &self.after else {
            return Ok(());
        };
        if inceptc::passes::find(after).is_none() {
            bail!(
                "there is no pass `{after}`; the pipeline is: {}",
                inceptc::passes::names()
            );
        }
        let reports = inceptc::passes::run_pipeline(graph, Some(after))?;
        if self.stats {
            print_stats(&reports);
        }
        Ok(())
    }
}

pub(crate) fn print_stats(reports: &[inceptc::passes::PassReport]) {
    eprintln!(
        "{:<24} {:>8} {:>8} {:>9} {:>10}",
        "pass", "before", "after", "rewrites", "time"
    );
    for r in reports {
        eprintln!(
            "{:<24} {:>8} {:>8} {:>9} {:>8.1}ms",
            r.pass,
            r.nodes_before,
            r.nodes_after,
            r.rewrites,
            r.elapsed.as_secs_f64() * 1e3
        );
    }
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// The network.
    #[arg(long, value_enum)]
    pub(crate) model: ModelArg,
    /// A safetensors file with the model's PyTorch state_dict (default: seeded weights).
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Seed of the generated weights when no --weights is given.
    #[arg(long, default_value_t = inceptc_ir::init::DEFAULT_SEED)]
    pub(crate) seed: u64,
    /// inception-resnet-v1: output facenet's `logits` classifier instead of the embedding.
    #[arg(long)]
    pub(crate) classify: bool,
    /// Classes of the classifier with seeded weights (a checkpoint's classifier decides otherwise).
    #[arg(long, default_value_t = 1000)]
    pub(crate) num_classes: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModelArg {
    #[value(name = "inception-v4")]
    InceptionV4,
    #[value(name = "inception-resnet-v1")]
    InceptionResnetV1,
    #[value(name = "inception-resnet-v2")]
    InceptionResnetV2,
    #[value(name = "inception-resnet-v2-paper")]
    InceptionResnetV2Paper,
}

impl From<ModelArg> for Model {
    fn from(m: ModelArg) -> Model {
        match m {
            ModelArg::InceptionV4 => Model::InceptionV4,
            ModelArg::InceptionResnetV1 => Model::InceptionResnetV1,
            ModelArg::InceptionResnetV2 => Model::InceptionResnetV2,
            ModelArg::InceptionResnetV2Paper => Model::InceptionResnetV2Paper,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Emit {
    Exe,
    Obj,
    Lib,
    Clif,
    Asm,
}

/// `--target-cpu`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TargetCpu {
    Native,
    #[value(name = "x86-64-v4")]
    X86_64V4,
    #[value(name = "x86-64-v3")]
    X86_64V3,
    Sapphirerapids,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ConvArg {
    Auto,
    Direct,
    Winograd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Dot,
}

impl ModelArgs {
    pub(crate) fn model(&self) -> Model {
        self.model.into()
    }

    pub(crate) fn load(&self) -> Result<Graph> {
        let options = Options {
            classify: self.classify,
            num_classes: self.num_classes,
        };
        let weights = match &self.weights {
            Some(path) => Weights::File(path),
            None => Weights::Seeded(self.seed),
        };
        log::info!(
            "building {} ({})",
            self.model(),
            match &self.weights {
                Some(p) => format!("weights {}", p.display()),
                None => format!("seeded weights, seed {}", self.seed),
            }
        );
        let graph = inceptc_graphs::load(self.model(), weights, &options)?;
        inceptc_ir::verify(&graph)
            .with_context(|| format!("the {} graph is malformed", self.model()))?;
        Ok(graph)
    }
}

/// `--interpolation`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum InterpolationArg {
    Bicubic,
    Bilinear,
}

/// `--precision`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PrecisionArg {
    F32,
    Bf16,
    Int8,
}

/// `--calibration`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CalibrationArg {
    Minmax,
    Percentile,
}

/// `--weights-dtype`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WeightsArg {
    F32,
    F16,
}

/// The largest `--image-size`: an input of 16384 × 16384 already takes 3 GiB.
pub(crate) const MAX_IMAGE_SIZE: usize = 16384;
/// The largest `--batch`.
pub(crate) const MAX_BATCH: usize = 65536;

/// The largest `--threads` (the executables' cap too).
pub(crate) const MAX_THREADS: usize = 1024;

/// `--threads`: 1 ..= [`MAX_THREADS`].
pub(crate) fn threads(text: &str) -> Result<usize, String> {
    bounded(text, MAX_THREADS)
}

/// `--image-size`: 1 ..= [`MAX_IMAGE_SIZE`] (whether the network fits is checked later).
pub(crate) fn image_size(text: &str) -> Result<usize, String> {
    bounded(text, MAX_IMAGE_SIZE)
}

/// `--batch`: 1 ..= [`MAX_BATCH`].
pub(crate) fn batch(text: &str) -> Result<usize, String> {
    bounded(text, MAX_BATCH)
}

fn bounded(text: &str, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(v) if (1..=max).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{text} is outside 1..={max}")),
        Err(_) => Err(format!("{text:?} is not a whole number (1..={max})")),
    }
}
