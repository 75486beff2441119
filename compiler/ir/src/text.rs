//! The text format: prints a graph's structure (ops, operands, attributes, names, blocks; not the
//! weights) and parses it back to the same graph. Print → parse → print is the identity.
//!
//! ```text
//! graph "inception-v4" {
//!   %0 = input channels=3 name="input" block="stem"
//!   %1 = conv2d %0 in=3 out=32 kernel=3x3 stride=2x2 pad=0x0 bias=false name="features.0.conv" block="stem"  # [1, 32, 149, 149]
//!   ...
//!   output %503
//! }
//! ```
//!
//! Nodes that passes merged others into carry `origins="a,b"`; a node that writes into a channel
//! range of a concatenation buffer carries `tile=OFFSET` (its last operand is the destination) or
//! `tile=OFFSET/CHANNELS` (it starts a new buffer); members of a shared kernel carry `shared_kernel="…"`. Values are numbered along
//! [`Graph::topo_order`]. Everything after `#` outside a string is a
//! comment; the printer puts the inferred shape there when it is given one.

use std::collections::HashMap;
use std::fmt::Write as _;

use thiserror::Error;

use crate::graph::{Graph, NodeId, Tile};
use crate::op::*;
use crate::shape::Shape;

/// What to print beside the structure.
#[derive(Clone, Default)]
pub struct PrintOptions<'a> {
    /// Inferred shapes, printed as trailing comments.
    pub shapes: Option<&'a HashMap<NodeId, Shape>>,
    /// Print only the nodes of this block (operands outside it keep their global numbers).
    pub block: Option<&'a str>,
}

/// Prints the whole graph without shapes.
pub fn print(graph: &Graph) -> String {
    print_with(graph, &PrintOptions::default())
}

/// Prints the graph as [`PrintOptions`] asks.
pub fn print_with(graph: &Graph, options: &PrintOptions) -> String {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    let numbers: HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let value = |id: &NodeId| match numbers.get(id) {
        Some(k) => format!("%{k}"),
        None => format!("%?{}", id.index()),
    };
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", quote(&graph.name));
    for id in &order {
        let node = graph.node(*id);
        if options.block.is_some_and(|b| b != node.block) {
            continue;
        }
        let mut line = format!("  {} = {}", value(id), node.op.keyword());
        let operands: Vec<String> = graph.inputs(*id).iter().map(value).collect();
        if !operands.is_empty() {
            let _ = write!(line, " {}", operands.join(", "));
        }
        for (key, val) in attributes(&node.op) {
            let _ = write!(line, " {key}={val}");
        }
        let _ = write!(
            line,
            " name={} block={}",
            quote(&node.name),
            quote(&node.block)
        );
        if !node.origins.is_empty() {
            let _ = write!(line, " origins={}", quote(&node.origins.join(",")));
        }
        match node.tile {
            Some(Tile {
                offset,
                new_buffer: Some(total),
            }) => {
                let _ = write!(line, " tile={offset}/{total}");
            }
            Some(Tile { offset, .. }) => {
                let _ = write!(line, " tile={offset}");
            }
            None => {}
        }
        if let Some(kernel) = &node.shared_kernel {
            let _ = write!(line, " shared_kernel={}", quote(kernel));
        }
        if let Some(shape) = options.shapes.and_then(|s| s.get(id)) {
            let _ = write!(line, "  # {shape}");
        }
        out.push_str(&line);
        out.push('\n');
    }
    let outputs: Vec<String> = graph.outputs().iter().map(value).collect();
    let _ = writeln!(out, "  output {}", outputs.join(", "));
    out.push_str("}\n");
    out
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn hw(v: Hw) -> String {
    format!("{}x{}", v[0], v[1])
}

fn conv_attributes(a: &Conv2dAttrs) -> Vec<(&'static str, String)> {
    vec![
        ("in", a.in_channels.to_string()),
        ("out", a.out_channels.to_string()),
        ("kernel", hw(a.kernel)),
        ("stride", hw(a.stride)),
        ("pad", hw(a.padding)),
        ("bias", a.bias.to_string()),
    ]
}

/// The attributes of an op in printing order.
fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    let window = |p: &PoolAttrs| {
        vec![
            ("kernel", hw(p.kernel)),
            ("stride", hw(p.stride)),
            ("pad", hw(p.padding)),
        ]
    };
    match op {
        Op::Input(a) => vec![("channels", a.channels.to_string())],
        Op::Conv2d(a) => conv_attributes(a),
        Op::FusedConv(f) => {
            let mut v = conv_attributes(&f.conv);
            v.push(("residual", f.residual.to_string()));
            v.push(("relu", f.relu.to_string()));
            if f.in_place {
                v.push(("in_place", "true".into()));
            }
            v
        }
        Op::BatchNorm(a) | Op::BatchNorm1d(a) => vec![
            ("channels", a.channels.to_string()),
            ("eps", format!("{:?}", a.eps)),
        ],
        Op::MaxPool(p) => window(p),
        Op::AvgPool(a) => {
            let mut v = window(&a.window);
            v.push(("count_include_pad", a.count_include_pad.to_string()));
            if a.relu {
                v.push(("relu", "true".to_string()));
            }
            v
        }
        Op::Scale(s) => vec![("factor", format!("{:?}", s.factor))],
        Op::Linear(a) => vec![
            ("in", a.in_features.to_string()),
            ("out", a.out_features.to_string()),
            ("bias", a.bias.to_string()),
        ],
        Op::L2Normalize(a) => vec![("eps", format!("{:?}", a.eps))],
        Op::Relu | Op::Concat | Op::Add | Op::GlobalAvgPool | Op::Softmax => Vec::new(),
    }
}

/// A syntax or meaning error in IR text, with its 1-based line.
#[derive(Debug, Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Eq,
    Comma,
    LBrace,
    RBrace,
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' | ',' | '{' | '}' => {
                chars.next();
                tokens.push(match c {
                    '=' => Token::Eq,
                    ',' => Token::Comma,
                    '{' => Token::LBrace,
                    _ => Token::RBrace,
                });
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('n') => s.push('\n'),
                            other => {
                                return Err(format!("unknown escape \\{}", other.unwrap_or(' ')))
                            }
                        },
                        Some(c) => s.push(c),
                    }
                }
                tokens.push(Token::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "=,{}\"#".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(w));
            }
        }
    }
    Ok(tokens)
}

/// Parses IR text into a graph. Weights are left unbound.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut parser = Parser {
        graph: None,
        values: HashMap::new(),
        closed: false,
    };
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let tokens = tokenize(line).map_err(err)?;
        if tokens.is_empty() {
            continue;
        }
        parser.line(tokens).map_err(err)?;
    }
    let end = text.lines().count().max(1);
    match parser.graph {
        Some(g) if parser.closed && g.outputs().is_empty() => Err(ParseError {
            line: end,
            message: "the graph has no `output %N` line".into(),
        }),
        Some(g) if parser.closed => Ok(g),
        Some(_) => Err(ParseError {
            line: end,
            message: "missing closing `}`".into(),
        }),
        None => Err(ParseError {
            line: end,
            message: "no `graph \"name\" {` header".into(),
        }),
    }
}

struct Parser {
    graph: Option<Graph>,
    values: HashMap<usize, NodeId>,
    closed: bool,
}

impl Parser {
    fn line(&mut self, tokens: Vec<Token>) -> Result<(), String> {
        if self.closed {
            return Err("text after the closing `}`".into());
        }
        if self.graph.is_none() {
            return match tokens.as_slice() {
                [Token::Word(g), Token::Str(name), Token::LBrace] if g == "graph" => {
                    self.graph = Some(Graph::new(name.clone()));
                    Ok(())
                }
                _ => Err("expected `graph \"name\" {`".into()),
            };
        }
        match tokens.as_slice() {
            [Token::RBrace] => {
                self.closed = true;
                Ok(())
            }
            [Token::Word(w), rest @ ..] if w == "output" => {
                let outputs = self.operands(rest)?;
                if outputs.is_empty() {
                    return Err("`output` names no value".into());
                }
                self.graph.as_mut().ok_or("no graph")?.set_outputs(outputs);
                Ok(())
            }
            [Token::Word(v), Token::Eq, Token::Word(op), rest @ ..] => {
                let number = value_number(v)?;
                if self.values.contains_key(&number) {
                    return Err(format!("value %{number} is defined twice"));
                }
                let operand_end = operand_prefix_len(rest);
                let operands = self.operands(&rest[..operand_end])?;
                let mut attrs = Attrs::parse(&rest[operand_end..])?;
                let op = parse_op(op, &mut attrs)?;
                let name = attrs.string("name")?;
                let block = attrs.string("block")?;
                let origins = match attrs.take("origins") {
                    Ok(Token::Str(s)) => s.split(',').map(str::to_string).collect(),
                    Ok(_) => return Err("attribute `origins` takes a quoted string".into()),
                    Err(_) => Vec::new(),
                };
                let tile = attrs.tile()?;
                let kernel = match attrs.take("shared_kernel") {
                    Ok(Token::Str(s)) => Some(s),
                    Ok(_) => return Err("attribute `shared_kernel` takes a quoted string".into()),
                    Err(_) => None,
                };
                attrs.finish()?;
                let graph = self.graph.as_mut().ok_or("no graph")?;
                let id = graph.add(op, &operands, name, block);
                let node = graph.node_mut(id);
                node.origins = origins;
                node.tile = tile;
                node.shared_kernel = kernel;
                self.values.insert(number, id);
                Ok(())
            }
            _ => Err("expected `%N = op …`, `output %N` or `}`".into()),
        }
    }

    fn operands(&self, tokens: &[Token]) -> Result<Vec<NodeId>, String> {
        let mut out = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            match (i % 2, t) {
                (0, Token::Word(v)) => {
                    let k = value_number(v)?;
                    let id = self
                        .values
                        .get(&k)
                        .ok_or_else(|| format!("value %{k} is used before it is defined"))?;
                    out.push(*id);
                }
                (1, Token::Comma) => {}
                _ => return Err("operands must be `%A, %B, …`".into()),
            }
        }
        if tokens.len().is_multiple_of(2) && !tokens.is_empty() {
            return Err("trailing comma after the operands".into());
        }
        Ok(out)
    }
}

fn value_number(word: &str) -> Result<usize, String> {
    word.strip_prefix('%')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected a value like `%3`, found `{word}`"))
}

/// How many leading tokens are operands (`%A`, `,`): up to the first `key=`.
fn operand_prefix_len(tokens: &[Token]) -> usize {
    let mut n = 0;
    while n < tokens.len() {
        match &tokens[n] {
            Token::Word(w) if w.starts_with('%') => n += 1,
            Token::Comma => n += 1,
            _ => break,
        }
    }
    n
}

/// `key=value` pairs of one line, consumed by the op parser; leftovers are an error.
struct Attrs(Vec<(String, Token)>);

impl Attrs {
    fn parse(tokens: &[Token]) -> Result<Attrs, String> {
        let mut pairs = Vec::new();
        let mut it = tokens.iter();
        while let Some(t) = it.next() {
            let Token::Word(key) = t else {
                return Err(format!("expected `key=value`, found {t:?}"));
            };
            match (it.next(), it.next()) {
                (Some(Token::Eq), Some(v @ (Token::Word(_) | Token::Str(_)))) => {
                    if pairs.iter().any(|(k, _): &(String, Token)| k == key) {
                        return Err(format!("attribute `{key}` is given twice"));
                    }
                    pairs.push((key.clone(), v.clone()));
                }
                _ => return Err(format!("expected `{key}=value`")),
            }
        }
        Ok(Attrs(pairs))
    }

    fn take(&mut self, key: &str) -> Result<Token, String> {
        let i = self
            .0
            .iter()
            .position(|(k, _)| k == key)
            .ok_or_else(|| format!("missing attribute `{key}`"))?;
        Ok(self.0.remove(i).1)
    }

    fn word(&mut self, key: &str) -> Result<String, String> {
        match self.take(key)? {
            Token::Word(w) => Ok(w),
            _ => Err(format!(
                "attribute `{key}` takes a bare value, not a string"
            )),
        }
    }

    fn string(&mut self, key: &str) -> Result<String, String> {
        match self.take(key)? {
            Token::Str(s) => Ok(s),
            _ => Err(format!("attribute `{key}` takes a quoted string")),
        }
    }

    fn usize(&mut self, key: &str) -> Result<usize, String> {
        let w = self.word(key)?;
        w.parse()
            .map_err(|_| format!("attribute `{key}`: expected a whole number, found `{w}`"))
    }

    fn f32(&mut self, key: &str) -> Result<f32, String> {
        let w = self.word(key)?;
        w.parse()
            .map_err(|_| format!("attribute `{key}`: expected a number, found `{w}`"))
    }

    fn bool(&mut self, key: &str) -> Result<bool, String> {
        match self.word(key)?.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            w => Err(format!(
                "attribute `{key}`: expected true or false, found `{w}`"
            )),
        }
    }

    /// A boolean that defaults to false when absent.
    fn optional_bool(&mut self, key: &str) -> Result<bool, String> {
        if self.0.iter().any(|(k, _)| k == key) {
            self.bool(key)
        } else {
            Ok(false)
        }
    }

    /// `tile=OFFSET` (the destination is the last operand) or `tile=OFFSET/CHANNELS` (a new
    /// buffer), when present.
    fn tile(&mut self) -> Result<Option<Tile>, String> {
        if !self.0.iter().any(|(k, _)| k == "tile") {
            return Ok(None);
        }
        let w = self.word("tile")?;
        let number = |t: &str| t.parse::<usize>().ok();
        let parsed = match w.split_once('/') {
            Some((offset, total)) => number(offset).zip(number(total)).map(|(o, t)| Tile {
                offset: o,
                new_buffer: Some(t),
            }),
            None => number(&w).map(|o| Tile {
                offset: o,
                new_buffer: None,
            }),
        };
        parsed.map(Some).ok_or_else(|| {
            format!("attribute `tile`: expected OFFSET or OFFSET/CHANNELS, found `{w}`")
        })
    }

    fn hw(&mut self, key: &str) -> Result<Hw, String> {
        let w = self.word(key)?;
        let parsed = w
            .split_once('x')
            .and_then(|(a, b)| Some([a.parse().ok()?, b.parse().ok()?]));
        parsed.ok_or_else(|| format!("attribute `{key}`: expected HxW like 3x3, found `{w}`"))
    }

    fn conv(&mut self) -> Result<Conv2dAttrs, String> {
        Ok(Conv2dAttrs {
            in_channels: self.usize("in")?,
            out_channels: self.usize("out")?,
            kernel: self.hw("kernel")?,
            stride: self.hw("stride")?,
            padding: self.hw("pad")?,
            bias: self.bool("bias")?,
        })
    }

    fn window(&mut self) -> Result<PoolAttrs, String> {
        Ok(PoolAttrs {
            kernel: self.hw("kernel")?,
            stride: self.hw("stride")?,
            padding: self.hw("pad")?,
        })
    }

    fn finish(self) -> Result<(), String> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("unknown attribute `{k}`")),
        }
    }
}

fn parse_op(keyword: &str, a: &mut Attrs) -> Result<Op, String> {
    Ok(match keyword {
        "input" => Op::Input(InputAttrs {
            channels: a.usize("channels")?,
        }),
        "conv2d" => Op::Conv2d(a.conv()?),
        "fused_conv" => Op::FusedConv(FusedConvAttrs {
            conv: a.conv()?,
            residual: a.bool("residual")?,
            relu: a.bool("relu")?,
            in_place: a.optional_bool("in_place")?,
        }),
        "batch_norm" | "batch_norm_1d" => {
            let attrs = BatchNormAttrs {
                channels: a.usize("channels")?,
                eps: a.f32("eps")?,
            };
            if keyword == "batch_norm" {
                Op::BatchNorm(attrs)
            } else {
                Op::BatchNorm1d(attrs)
            }
        }
        "relu" => Op::Relu,
        "max_pool" => Op::MaxPool(a.window()?),
        "avg_pool" => Op::AvgPool(AvgPoolAttrs {
            window: a.window()?,
            count_include_pad: a.bool("count_include_pad")?,
            relu: a.optional_bool("relu")?,
        }),
        "concat" => Op::Concat,
        "add" => Op::Add,
        "scale" => Op::Scale(ScaleAttrs {
            factor: a.f32("factor")?,
        }),
        "global_avg_pool" => Op::GlobalAvgPool,
        "linear" => Op::Linear(LinearAttrs {
            in_features: a.usize("in")?,
            out_features: a.usize("out")?,
            bias: a.bool("bias")?,
        }),
        "l2_normalize" => Op::L2Normalize(L2NormalizeAttrs { eps: a.f32("eps")? }),
        "softmax" => Op::Softmax,
        other => return Err(format!("unknown op `{other}`")),
    })
}
