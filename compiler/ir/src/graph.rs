//! The graph: a petgraph `StableDiGraph` of named nodes whose edges carry the operand slot, so that
//! removing a node keeps every other id valid and operand order is explicit.

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::op::Op;
use crate::tensor::Tensor;

/// A typed node id. Ids stay valid when other nodes are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex);

impl NodeId {
    /// The node's index in the graph (stable while nodes are removed).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0.index())
    }
}

/// One node: an op, its hierarchical name (the checkpoint key prefix of its parameters, e.g.
/// `features.6.branch1.0.conv`), the block it belongs to (`inception_a.2`), and its parameters.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its hierarchical name, unique in the graph.
    pub name: String,
    /// The block it belongs to (`stem`, `inception_a.2`, …).
    pub block: String,
    /// What it computes.
    pub op: Op,
    /// The parameter tensors in the order of [`Op::param_specs`]; empty while weights are unbound.
    pub params: Vec<Tensor>,
    /// Names of the nodes that passes merged into this one (empty for an original node), so that
    /// dumps and profiles can speak of what the user wrote.
    pub origins: Vec<String>,
    /// Set by `tile-concat`: the node writes its result into a channel range of a wider buffer
    /// instead of a tensor of its own.
    pub tile: Option<Tile>,
    /// Set by `merge-sibling-1x1`: the name of the kernel this node shares with its siblings. All
    /// members of a kernel read the same single operand and are computed by one generated function
    /// that writes each member's channel range to that member's destination.
    pub shared_kernel: Option<String>,
}

/// Where a tiled node's result goes: channels `offset .. offset + own channels` of a buffer.
///
/// The node's value is the whole buffer: with `new_buffer = Some(c)` a fresh buffer of `c`
/// channels (zero outside the range) and no extra operand; with `None` the node's last operand is
/// the destination, and the value is that operand with the range replaced. A chain of tiled nodes,
/// each the destination of the next, computes a concatenation without copying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// The first channel of the node's range in the buffer.
    pub offset: usize,
    /// `Some(c)`: a new buffer of `c` channels; `None`: the node's last operand is the buffer.
    pub new_buffer: Option<usize>,
}

impl Node {
    /// The checkpoint key of the parameter with `role`: `<name>.<role>`.
    pub fn param_key(&self, role: &str) -> String {
        format!("{}.{}", self.name, role)
    }

    /// Whether the node's parameters are bound (trivially so for an op that owns none).
    pub fn is_bound(&self) -> bool {
        self.params.len() == self.op.param_specs().len()
    }

    /// How many leading operands are the op's own (the rest is a tile destination).
    pub fn own_operands(&self, operands: usize) -> usize {
        match self.tile {
            Some(Tile {
                new_buffer: None, ..
            }) => operands.saturating_sub(1),
            _ => operands,
        }
    }

    /// The bound parameter with `role`, if the op owns one and weights are bound.
    pub fn param(&self, role: &str) -> Option<&Tensor> {
        let index = self.op.param_specs().iter().position(|s| s.role == role)?;
        self.params.get(index)
    }
}

/// A network: nodes, operand edges (weighted by operand slot) and the list of outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The network's name (`inception-v4`); printed in dumps.
    pub name: String,
    g: StableDiGraph<Node, usize>,
    outputs: Vec<NodeId>,
}

impl Graph {
    /// An empty graph named `name`.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// Adds a node whose operands are `inputs`, in order.
    pub fn add(
        &mut self,
        op: Op,
        inputs: &[NodeId],
        name: impl Into<String>,
        block: impl Into<String>,
    ) -> NodeId {
        let id = NodeId(self.g.add_node(Node {
            name: name.into(),
            block: block.into(),
            op,
            params: Vec::new(),
            origins: Vec::new(),
            tile: None,
            shared_kernel: None,
        }));
        for (slot, input) in inputs.iter().enumerate() {
            self.g.add_edge(input.0, id.0, slot);
        }
        id
    }

    /// Removes a node and its edges. Other ids stay valid. Outputs that named it are dropped.
    pub fn remove(&mut self, id: NodeId) -> Option<Node> {
        self.outputs.retain(|o| *o != id);
        self.g.remove_node(id.0)
    }

    /// The node `id` (panics on a removed node).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    /// The node `id`, mutably (panics on a removed node).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.0]
    }

    /// Whether `id` is a node of the graph (not removed).
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// Whether the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// Every node id, in index order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices().map(NodeId)
    }

    /// The operands of `id`, ordered by slot.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The operand slots of `id` as stored on its edges, sorted; the verifier checks that they are
    /// `0..n`.
    pub fn input_slots(&self, id: NodeId) -> Vec<usize> {
        let mut slots: Vec<usize> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| *e.weight())
            .collect();
        slots.sort_unstable();
        slots
    }

    /// The nodes that read `id` (each once, in index order).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = self
            .g
            .edges_directed(id.0, Direction::Outgoing)
            .map(|e| NodeId(e.target()))
            .collect();
        set.into_iter().collect()
    }

    /// Replaces the operands of `id` with `inputs`, in order.
    pub fn set_inputs(&mut self, id: NodeId, inputs: &[NodeId]) {
        let edges: Vec<_> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for edge in edges {
            self.g.remove_edge(edge);
        }
        for (slot, input) in inputs.iter().enumerate() {
            self.g.add_edge(input.0, id.0, slot);
        }
    }

    /// Every node `id` depends on, directly or transitively (not `id` itself).
    pub fn ancestors(&self, id: NodeId) -> BTreeSet<NodeId> {
        let mut seen = BTreeSet::new();
        let mut stack = self.inputs(id);
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.inputs(n));
            }
        }
        seen
    }

    /// Makes every reader of `old` read `new` instead, and every output naming `old` name `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let edges: Vec<_> = self
            .g
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, target, slot) in edges {
            self.g.remove_edge(edge);
            self.g.add_edge(new.0, target, slot);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// The graph's outputs, in order.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// Replaces the graph's outputs.
    pub fn set_outputs(&mut self, outputs: Vec<NodeId>) {
        self.outputs = outputs;
    }

    /// The graph's `Input` nodes, in index order.
    pub fn inputs_of_graph(&self) -> Vec<NodeId> {
        self.node_ids()
            .filter(|id| matches!(self.node(*id).op, Op::Input(_)))
            .collect()
    }

    /// A node by its name.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.node_ids().find(|id| self.node(*id).name == name)
    }

    /// A deterministic topological order: among the nodes whose operands are all placed, the one
    /// with the smallest index comes first. `None` if the graph has a cycle.
    ///
    /// When node indices already form a topological order (as in a freshly built or parsed graph)
    /// the result is exactly index order, which makes print → parse → print stable.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut pending: HashMap<NodeIndex, usize> = self
            .g
            .node_indices()
            .map(|n| (n, self.g.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BTreeSet<NodeIndex> = pending
            .iter()
            .filter(|(_, k)| **k == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(n) = ready.pop_first() {
            order.push(NodeId(n));
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let k = pending.get_mut(&e.target())?;
                *k -= 1;
                if *k == 0 {
                    ready.insert(e.target());
                }
            }
        }
        (order.len() == self.g.node_count()).then_some(order)
    }

    /// Block names in order of first appearance along [`Graph::topo_order`].
    pub fn blocks(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut blocks = Vec::new();
        for id in self.topo_order().unwrap_or_default() {
            let block = &self.node(id).block;
            if seen.insert(block.clone()) {
                blocks.push(block.clone());
            }
        }
        blocks
    }

    /// Total trainable parameters of all nodes (see [`Op::trainable_parameters`]).
    pub fn trainable_parameters(&self) -> u64 {
        self.node_ids()
            .map(|id| self.node(id).op.trainable_parameters())
            .sum()
    }

    /// Whether every node that owns parameters has them bound.
    pub fn is_bound(&self) -> bool {
        self.node_ids().all(|id| self.node(id).is_bound())
    }
}
