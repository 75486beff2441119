//! Weights: reading safetensors checkpoints (f32, f16, bf16, f64) and binding their tensors to the
//! graph's nodes by name (`<node name>.<role>`, the PyTorch `state_dict` key).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use thiserror::Error;

use crate::graph::Graph;
use crate::tensor::Tensor;

/// Why weights could not be read or bound. Every variant names the file.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The file cannot be read.
    #[error("cannot read weights file {}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error reading it.
        cause: std::io::Error,
    },
    /// The file is not safetensors.
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor has a type the reader does not convert.
    #[error(
        "{}: tensor `{tensor}` has dtype {dtype}; supported are F32, F16, BF16 and F64",
        path.display()
    )]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype as the file names it.
        dtype: String,
    },
    /// A tensor holds NaN or an infinity.
    #[error(
        "{}: tensor `{tensor}` holds {value} at flat index {index}: weights must be finite",
        path.display()
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The flat index of the first such value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The checkpoint's tensors do not match the graph's parameters.
    #[error("{}: the checkpoint does not fit the `{graph}` graph:\n{}", path.display(), list(problems))]
    Binding {
        /// The file.
        path: PathBuf,
        /// The graph's name.
        graph: String,
        /// Every mismatch.
        problems: Vec<BindProblem>,
    },
}

/// One mismatch between a checkpoint and the graph's parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum BindProblem {
    /// The graph needs a tensor the checkpoint lacks.
    Missing {
        /// Its name.
        tensor: String,
        /// The shape the graph expects.
        expected: Vec<usize>,
    },
    /// The checkpoint has a tensor the graph does not use.
    Unexpected {
        /// Its name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor's shape differs from the graph's.
    Shape {
        /// Its name.
        tensor: String,
        /// The shape the graph expects.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
}

impl fmt::Display for BindProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindProblem::Missing { tensor, expected } => {
                write!(f, "missing tensor `{tensor}` (expected shape {expected:?})")
            }
            BindProblem::Unexpected { tensor, shape } => {
                write!(f, "unexpected tensor `{tensor}` of shape {shape:?}")
            }
            BindProblem::Shape {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor `{tensor}` has shape {found:?}, expected {expected:?}"
            ),
        }
    }
}

/// At most this many problems are listed; the rest are counted.
const LISTED_PROBLEMS: usize = 20;

fn list(problems: &[BindProblem]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|p| format!("  - {p}"))
        .collect();
    if problems.len() > LISTED_PROBLEMS {
        lines.push(format!("  … and {} more", problems.len() - LISTED_PROBLEMS));
    }
    lines.join("\n")
}

/// One tensor's header entry: dtype, shape and byte range inside the file.
#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// A safetensors file read into memory with a validated header. Tensors are decoded to f32 when
/// they are bound, so that tensors the graph ignores may have any dtype.
pub struct Checkpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    entries: BTreeMap<String, Entry>,
}

fn format_error(path: &Path, e: SafeTensorError) -> WeightsError {
    let hint = match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            " (the file is shorter or longer than its header says: truncated?)"
        }
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            " (truncated, or not a safetensors file)"
        }
        _ => "",
    };
    WeightsError::Format {
        path: path.to_path_buf(),
        reason: format!("{e}{hint}"),
    }
}

impl Checkpoint {
    /// Reads and validates a safetensors file (header, offsets, sizes).
    pub fn load(path: &Path) -> Result<Checkpoint, WeightsError> {
        let io = |cause| WeightsError::Io {
            path: path.to_path_buf(),
            cause,
        };
        if path.is_dir() {
            return Err(io(std::io::Error::other("it is a directory, not a file")));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Checkpoint::from_bytes(path, bytes)
    }

    /// Validates in-memory safetensors bytes; `path` is used in messages only.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, WeightsError> {
        if bytes.is_empty() {
            return Err(WeightsError::Format {
                path: path.to_path_buf(),
                reason: "the file is empty (0 bytes)".into(),
            });
        }
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| format_error(path, e))?;
        let base = 8 + header_len;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (base + info.data_offsets.0, base + info.data_offsets.1),
                };
                (name, entry)
            })
            .collect();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            bytes,
            entries,
        })
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether the file has a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape a tensor has in the file.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Decodes a tensor to f32, checking that every value is finite.
    pub fn tensor(&self, name: &str) -> Option<Result<Tensor, WeightsError>> {
        let entry = self.entries.get(name)?;
        Some(self.decode(name, entry))
    }

    fn decode(&self, name: &str, entry: &Entry) -> Result<Tensor, WeightsError> {
        let raw = &self.bytes[entry.range.0..entry.range.1];
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            other => {
                return Err(WeightsError::Dtype {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(WeightsError::NonFinite {
                path: self.path.clone(),
                tensor: name.to_string(),
                index,
                value: values[index],
            });
        }
        Tensor::new(entry.shape.clone(), values).ok_or_else(|| WeightsError::Format {
            path: self.path.clone(),
            reason: format!("tensor `{name}`: byte size does not match its shape"),
        })
    }
}

/// Whether a checkpoint tensor is bookkeeping that inference never reads (`num_batches_tracked`).
pub fn is_bookkeeping(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

/// Binds every parameter of `graph` to the checkpoint tensor `<node name>.<role>`.
///
/// Every parameter must be present with its exact shape, and every checkpoint tensor must be used,
/// except bookkeeping tensors ([`is_bookkeeping`]) and those for which `ignored` returns true. All
/// problems are reported together. Nothing is bound unless everything fits.
pub fn bind(
    graph: &mut Graph,
    checkpoint: &Checkpoint,
    ignored: &dyn Fn(&str) -> bool,
) -> Result<(), WeightsError> {
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    let ids: Vec<_> = graph.node_ids().collect();
    for id in &ids {
        let node = graph.node(*id);
        for spec in node.op.param_specs() {
            let key = node.param_key(spec.role);
            match checkpoint.shape(&key) {
                None => problems.push(BindProblem::Missing {
                    tensor: key.clone(),
                    expected: spec.shape.clone(),
                }),
                Some(found) if found != spec.shape.as_slice() => {
                    problems.push(BindProblem::Shape {
                        tensor: key.clone(),
                        expected: spec.shape.clone(),
                        found: found.to_vec(),
                    })
                }
                Some(_) => {}
            }
            expected.insert(key);
        }
    }
    for name in checkpoint.names() {
        if !expected.contains(name) && !is_bookkeeping(name) && !ignored(name) {
            problems.push(BindProblem::Unexpected {
                tensor: name.to_string(),
                shape: checkpoint.shape(name).unwrap_or_default().to_vec(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(WeightsError::Binding {
            path: checkpoint.path.clone(),
            graph: graph.name.clone(),
            problems,
        });
    }
    let mut bound = Vec::with_capacity(ids.len());
    for id in &ids {
        let node = graph.node(*id);
        let mut params = Vec::new();
        for spec in node.op.param_specs() {
            let key = node.param_key(spec.role);
            let tensor = checkpoint
                .tensor(&key)
                .ok_or_else(|| WeightsError::Format {
                    path: checkpoint.path.clone(),
                    reason: format!("tensor `{key}` vanished while binding"),
                })??;
            params.push(tensor);
        }
        bound.push(params);
    }
    for (id, params) in ids.into_iter().zip(bound) {
        graph.node_mut(id).params = params;
    }
    Ok(())
}
