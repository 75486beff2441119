//! The Inception networks as IR graphs, and loading them with a checkpoint or seeded weights.
//!
//! | model | layout |
//! |---|---|
//! | `inception-v4` | timm `inception_v4` ([`inception_v4`]) |
//! | `inception-resnet-v1` | facenet-pytorch `InceptionResnetV1` ([`inception_resnet_v1`]) |
//! | `inception-resnet-v2` | timm `inception_resnet_v2` ([`inception_resnet_v2`]) |
//! | `inception-resnet-v2-paper` | the paper's Fig. 15 ([`inception_resnet_v2_paper`]) |

pub mod blocks;
pub mod inception_resnet_v1;
pub mod inception_resnet_v2;
pub mod inception_resnet_v2_paper;
pub mod inception_v4;

use std::fmt;
use std::path::Path;

use inceptc_ir::weights::{bind, Checkpoint, WeightsError};
use inceptc_ir::Graph;
use thiserror::Error;

/// One of the networks inceptc knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// timm's `inception_v4`.
    InceptionV4,
    /// facenet-pytorch's `InceptionResnetV1`.
    InceptionResnetV1,
    /// timm's `inception_resnet_v2`.
    InceptionResnetV2,
    /// Inception-ResNet-v2 as the paper's Fig. 15 draws it.
    InceptionResnetV2Paper,
}

impl Model {
    /// Every network, in the order `--help` lists them.
    pub const ALL: [Model; 4] = [
        Model::InceptionV4,
        Model::InceptionResnetV1,
        Model::InceptionResnetV2,
        Model::InceptionResnetV2Paper,
    ];

    /// The name `--model` takes.
    pub fn name(self) -> &'static str {
        match self {
            Model::InceptionV4 => "inception-v4",
            Model::InceptionResnetV1 => "inception-resnet-v1",
            Model::InceptionResnetV2 => "inception-resnet-v2",
            Model::InceptionResnetV2Paper => "inception-resnet-v2-paper",
        }
    }

    /// The model `--model name` names.
    pub fn from_name(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The input size the released weights were trained at.
    pub fn default_image_size(self) -> usize {
        match self {
            Model::InceptionResnetV1 => 160,
            _ => 299,
        }
    }

    /// The classifier whose weight rows give the number of classes, if the model (with
    /// `classify`) ends in one.
    pub fn classifier(self, classify: bool) -> Option<&'static str> {
        match self {
            Model::InceptionV4 | Model::InceptionResnetV2Paper => Some("last_linear"),
            Model::InceptionResnetV2 => Some("classif"),
            Model::InceptionResnetV1 => classify.then_some("logits"),
        }
    }

    /// What the output holds, for messages.
    pub fn output_kind(self, classify: bool) -> &'static str {
        match self.classifier(classify) {
            Some(_) => "logits",
            None => "L2-normalized embedding",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to build a model's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Inception-ResNet-v1 only: end in facenet's `logits` classifier instead of the normalized
    /// embedding.
    pub classify: bool,
    /// Classes of the classifier when no checkpoint says otherwise.
    pub num_classes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            classify: false,
            num_classes: 1000,
        }
    }
}

/// The most classes a seeded classifier may have (ImageNet-21k has 21,843).
pub const MAX_CLASSES: usize = 1 << 20;

/// Why a network could not be built or loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// `--classify` given for a network that is always a classifier.
    #[error("--classify applies to inception-resnet-v1 only; {0} always ends in its classifier")]
    ClassifyNotApplicable(Model),
    /// A classifier of zero classes.
    #[error("the number of classes must be at least 1")]
    NoClasses,
    /// More classes than [`MAX_CLASSES`]: the count and the classifier's GiB.
    #[error("{0} classes: at most {MAX_CLASSES} are supported (the classifier's weights alone would take {1:.1} GiB)")]
    TooManyClasses(usize, f64),
    /// `--classify` with a facenet checkpoint that has no classifier.
    #[error(
        "{}: --classify needs facenet's classifier, but the checkpoint has no `logits.weight` \
         (it holds an embedding model; drop --classify)",
        path.display()
    )]
    NoLogits {
        /// The checkpoint.
        path: std::path::PathBuf,
    },
    /// The checkpoint fits another network better than the one asked for.
    #[error(
        "{}: this is not an {model} checkpoint: only {found} of the graph's {expected} tensors are \
         in it, but {likely_found} of the {likely_expected} tensors of {likely} are; use --model {likely}",
        path.display()
    )]
    WrongModel {
        /// The checkpoint.
        path: std::path::PathBuf,
        /// The network asked for.
        model: Model,
        /// Its tensors found in the checkpoint.
        found: usize,
        /// Its tensors in all.
        expected: usize,
        /// The network the checkpoint likely holds.
        likely: Model,
        /// That network's tensors found in the checkpoint.
        likely_found: usize,
        /// That network's tensors in all.
        likely_expected: usize,
    },
    /// The checkpoint could not be read or bound.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// How many of `graph`'s parameters `checkpoint` has (by name), and how many there are.
fn coverage(graph: &Graph, checkpoint: &Checkpoint) -> (usize, usize) {
    let keys: Vec<String> = graph
        .node_ids()
        .flat_map(|id| {
            let node = graph.node(id);
            node.op
                .param_specs()
                .into_iter()
                .map(|spec| node.param_key(spec.role))
                .collect::<Vec<_>>()
        })
        .collect();
    let found = keys.iter().filter(|k| checkpoint.contains(k)).count();
    (found, keys.len())
}

/// When a checkpoint barely fits `model` (under 10 % of its tensors by name), the model it does
/// fit (over 90 %), if any: the usual mistake is the wrong `--model`.
fn likely_model(
    model: Model,
    graph: &Graph,
    checkpoint: &Checkpoint,
    path: &Path,
) -> Option<LoadError> {
    let (found, expected) = coverage(graph, checkpoint);
    if found * 10 >= expected {
        return None;
    }
    Model::ALL
        .into_iter()
        .filter(|m| *m != model)
        .filter_map(|m| {
            let g = build(m, &Options::default()).ok()?;
            let (f, e) = coverage(&g, checkpoint);
            (f * 10 > e * 9).then_some((m, f, e))
        })
        .max_by_key(|(_, f, _)| *f)
        .map(
            |(likely, likely_found, likely_expected)| LoadError::WrongModel {
                path: path.to_path_buf(),
                model,
                found,
                expected,
                likely,
                likely_found,
                likely_expected,
            },
        )
}

/// The graph of `model` with unbound weights.
pub fn build(model: Model, options: &Options) -> Result<Graph, LoadError> {
    if options.classify && model != Model::InceptionResnetV1 {
        return Err(LoadError::ClassifyNotApplicable(model));
    }
    if options.num_classes == 0 {
        return Err(LoadError::NoClasses);
    }
    if options.num_classes > MAX_CLASSES {
        // The widest feature vector of the networks is Inception-v4's and IR-v2's 1536.
        let gib = (options.num_classes as f64) * 1536.0 * 4.0 / (1u64 << 30) as f64;
        return Err(LoadError::TooManyClasses(options.num_classes, gib));
    }
    let k = options.num_classes;
    Ok(match model {
        Model::InceptionV4 => inception_v4::build(k),
        Model::InceptionResnetV1 => inception_resnet_v1::build(options.classify.then_some(k)),
        Model::InceptionResnetV2 => inception_resnet_v2::build(k),
        Model::InceptionResnetV2Paper => inception_resnet_v2_paper::build(k),
    })
}

/// Where a model's weights come from.
pub enum Weights<'a> {
    /// A safetensors file holding the model's PyTorch `state_dict`.
    File(&'a Path),
    /// Deterministic seeded weights ([`inceptc_ir::init::seed_weights`]).
    Seeded(u64),
}

/// Builds `model` and binds its weights. With a file, the number of classes comes from the
/// classifier's weight shape in the file; tensors the graph does not use are an error, except
/// `num_batches_tracked` and, for the embedding head of Inception-ResNet-v1, facenet's `logits`.
pub fn load(model: Model, weights: Weights, options: &Options) -> Result<Graph, LoadError> {
    match weights {
        Weights::Seeded(seed) => {
            let mut graph = build(model, options)?;
            inceptc_ir::init::seed_weights(&mut graph, seed);
            Ok(graph)
        }
        Weights::File(path) => {
            let checkpoint = Checkpoint::load(path)?;
            let mut options = *options;
            if let Some(classifier) = model.classifier(options.classify) {
                let key = format!("{classifier}.weight");
                match checkpoint.shape(&key) {
                    Some([classes, _]) if *classes > 0 => options.num_classes = *classes,
                    None if options.classify => {
                        return Err(LoadError::NoLogits {
                            path: path.to_path_buf(),
                        })
                    }
                    // A wrong shape or a missing classifier is reported by binding.
                    _ => {}
                }
            }
            let mut graph = build(model, &options)?;
            let ignore_logits = model == Model::InceptionResnetV1 && !options.classify;
            let bound = bind(&mut graph, &checkpoint, &|name| {
                ignore_logits && name.starts_with("logits.")
            });
            if let Err(e) = bound {
                return Err(likely_model(model, &graph, &checkpoint, path).unwrap_or(e.into()));
            }
            Ok(graph)
        }
    }
}
