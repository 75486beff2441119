//! The graph passes and the default pipeline, written out in one place ([`PIPELINE`]).
//!
//! Every pass is a function from a verified graph to a verified graph that computes the same
//! outputs (checked against the reference interpreter in `tests/passes.rs`). [`run_pipeline`]
//! verifies the graph after every pass and names the pass that broke an invariant.

use std::time::{Duration, Instant};

use inceptc_ir::Graph;
use thiserror::Error;

pub mod eliminate_dead;
pub mod fold_batchnorm;
pub mod fold_residual_scale;
pub mod fuse_epilogue;
pub mod merge_sibling_1x1;
pub mod plan_memory;
pub mod sink_avg_pool;
pub mod tile_concat;

/// A pass: its kebab-case name, a one-line summary and its entry point, which returns how many
/// rewrites it made.
pub struct Pass {
    /// Its kebab-case name (`fold-batchnorm`).
    pub name: &'static str,
    /// What it does, in a line.
    pub summary: &'static str,
    /// Runs it; returns how many rewrites it made.
    pub run: fn(&mut Graph) -> Result<usize, RewriteError>,
}

/// The default pipeline, in order.
pub const PIPELINE: &[Pass] = &[
    fold_batchnorm::PASS,
    fold_residual_scale::PASS,
    fuse_epilogue::PASS,
    sink_avg_pool::PASS,
    tile_concat::PASS,
    merge_sibling_1x1::PASS,
    eliminate_dead::PASS,
    plan_memory::PASS,
];

/// A pass by name.
pub fn find(name: &str) -> Option<&'static Pass> {
    PIPELINE.iter().find(|p| p.name == name)
}

/// The names of the pipeline's passes, for messages.
pub fn names() -> String {
    PIPELINE
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a pass could not rewrite the graph it was given.
#[derive(Debug, Error)]
pub enum RewriteError {
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// A node lacks a parameter the rewrite needs.
    #[error("node `{node}` has no bound `{role}`")]
    Unbound {
        /// The node.
        node: String,
        /// The parameter's role.
        role: &'static str,
    },
    /// A node is not what the rewrite expects.
    #[error("node `{node}` {problem}")]
    Node {
        /// The node.
        node: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Shapes could not be inferred.
    #[error(transparent)]
    Shape(#[from] inceptc_ir::ShapeError),
    /// A broken invariant of the pass itself (a bug, not bad input).
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// A pass failed, or left a graph the verifier rejects.
#[derive(Debug, Error)]
pub enum PassError {
    /// The pass could not rewrite the graph.
    #[error("pass `{pass}`: {source}")]
    Rewrite {
        /// The pass.
        pass: &'static str,
        /// Why.
        source: RewriteError,
    },
    /// The pass left a graph the verifier rejects (a bug in the pass).
    #[error("pass `{pass}` left a graph the verifier rejects: {source}")]
    Verify {
        /// The pass.
        pass: &'static str,
        /// The broken invariant.
        source: inceptc_ir::VerifyError,
    },
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassReport {
    /// The pass.
    pub pass: &'static str,
    /// Nodes before it ran.
    pub nodes_before: usize,
    /// Nodes after.
    pub nodes_after: usize,
    /// Rewrites it made.
    pub rewrites: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs one pass and verifies its result.
pub fn run_pass(pass: &Pass, graph: &mut Graph) -> Result<PassReport, PassError> {
    let nodes_before = graph.len();
    let start = Instant::now();
    let rewrites = (pass.run)(graph).map_err(|source| PassError::Rewrite {
        pass: pass.name,
        source,
    })?;
    let elapsed = start.elapsed();
    inceptc_ir::verify(graph).map_err(|source| PassError::Verify {
        pass: pass.name,
        source,
    })?;
    log::debug!("{}: {rewrites} rewrites in {elapsed:?}", pass.name);
    Ok(PassReport {
        pass: pass.name,
        nodes_before,
        nodes_after: graph.len(),
        rewrites,
        elapsed,
    })
}

/// Runs the pipeline up to and including the pass named `until` (all of it for `None`).
pub fn run_pipeline(graph: &mut Graph, until: Option<&str>) -> Result<Vec<PassReport>, PassError> {
    let mut reports = Vec::new();
    for pass in PIPELINE {
        reports.push(run_pass(pass, graph)?);
        if until == Some(pass.name) {
            break;
        }
    }
    Ok(reports)
}
