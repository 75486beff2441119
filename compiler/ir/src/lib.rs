//! The graph IR of inceptc: paper-level ops on a petgraph `StableDiGraph`, shape inference, the
//! verifier, a text format that round-trips, Graphviz output, safetensors binding, seeded weights
//! and the reference interpreter that every other level is checked against.

pub mod dot;
pub mod graph;
pub mod init;
pub mod interp;
pub mod op;
pub mod quant;
pub mod shape;
pub mod stats;
pub mod tensor;
pub mod text;
pub mod verify;
pub mod weights;

pub use graph::{Graph, Node, NodeId, Tile};
pub use op::Op;
pub use shape::{infer_shapes, Shape, ShapeError};
pub use tensor::Tensor;
pub use verify::{verify, VerifyError};
