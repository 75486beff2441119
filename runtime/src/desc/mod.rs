//! The model description an emitted object carries beside its kernels and weights: everything the
//! runtime needs to run the kernels and to present inputs and outputs (name, preprocessing, shapes,
//! arena size, layouts, blocks, steps). The compiler encodes it; the runtime decodes it at start-up.
//!
//! Encoding: a magic word and version, then little-endian `u64` fields; strings as a length and
//! bytes padded to 8; lists as a length and their elements.

use crate::layout::{Layout, MapLayout, Precision, Quant, VecLayout};
use crate::pack::{ConvPacking, Recipe, Segment};
use crate::resample::Filter;

/// A buffer watched by the bounds check: `guard` canary bytes just before and just after its
/// `bytes` of data at `offset`, armed before the step that first writes it and checked, with its
/// halo (which must stay zero), after every step while it is live.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// The buffer's name: the first value written into it.
    pub buffer: String,
    /// Where its data starts in the arena.
    pub offset: usize,
    /// Bytes of data, halo included.
    pub bytes: usize,
    /// Canary bytes on each side.
    pub guard: usize,
    /// First and last step (inclusive) at which it is live.
    pub live: [usize; 2],
    /// Its layout when it is a feature map with a halo.
    pub halo: Option<MapLayout>,
}

const MAGIC: u64 = u64::from_le_bytes(*b"INCEPTC\0");
const VERSION: u64 = 8;

/// How input images become the network's input tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preprocess {
    /// timm's eval transform (see [`crate::image`]): the shorter side resized to ⌊size / crop_pct⌋
    /// with `interpolation`, a center crop, scaled to [0, 1], then (x − mean) / std per channel.
    Timm {
        /// The shorter side is resized to ⌊size / crop_pct⌋ before the center crop.
        crop_pct: f32,
        /// The resampling filter.
        interpolation: Filter,
        /// Subtracted per channel (RGB) after scaling to [0, 1].
        mean: [f32; 3],
        /// Divided by per channel after the mean.
        std: [f32; 3],
    },
    /// facenet-pytorch's face crop: the image resized to the input size (bilinear, aspect not
    /// kept), then (x − 127.5) / 128 on 0..255 values.
    Facenet,
}

/// How the executable stores its weights: f32, or f16 or bf16 (half the size), converted to f32
/// once at start-up (before they are packed, see [`crate::pack`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsDtype {
    /// Stored as f32.
    #[default]
    F32,
    /// Stored as f16, widened to f32 at start-up.
    F16,
    /// Stored as bf16 (rounded to nearest even), widened to f32 at start-up.
    Bf16,
    /// An int8 executable's: the first `codes` stored values are s8 weight codes, one byte each,
    /// the rest (requantization tables, the head) f32 from the next multiple of 4 bytes on.
    Int8 {
        /// Stored values that are codes.
        codes: usize,
    },
}

impl WeightsDtype {
    /// f32 weight bytes (little-endian) as this dtype stores them (f16 and bf16 rounded to
    /// nearest even).
    pub fn encode(self, f32_bytes: Vec<u8>) -> Vec<u8> {
        let narrow = |to: fn(f32) -> [u8; 2]| -> Vec<u8> {
            f32_bytes
                .chunks_exact(4)
                .flat_map(|b| to(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        };
        match self {
            WeightsDtype::F32 => f32_bytes,
            WeightsDtype::F16 => narrow(|v| half::f16::from_f32(v).to_le_bytes()),
            WeightsDtype::Bf16 => narrow(|v| half::bf16::from_f32(v).to_le_bytes()),
            WeightsDtype::Int8 { codes } => {
                let split = (4 * codes).min(f32_bytes.len());
                let mut out: Vec<u8> = f32_bytes[..split]
                    .chunks_exact(4)
                    .map(|b| {
                        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        (v.clamp(-128.0, 127.0) as i8) as u8
                    })
                    .collect();
                out.resize(out.len().next_multiple_of(4), 0);
                out.extend_from_slice(&f32_bytes[split..]);
                out
            }
        }
    }

    /// The byte offset of stored value `index` (an int8 executable's f32 values, from index
    /// `codes` on, start at the next multiple of 4 bytes after the codes).
    pub fn offset(self, index: usize) -> usize {
        match self {
            WeightsDtype::F32 => 4 * index,
            WeightsDtype::F16 | WeightsDtype::Bf16 => 2 * index,
            WeightsDtype::Int8 { codes } if index < codes => index,
            WeightsDtype::Int8 { codes } => codes.next_multiple_of(4) + 4 * (index - codes),
        }
    }

    /// How many values `bytes` stored bytes hold, or `None` where they cannot be whole values
    /// (or an int8 executable's codes do not fit).
    pub fn values(self, bytes: usize) -> Option<usize> {
        match self {
            WeightsDtype::F32 => bytes.is_multiple_of(4).then_some(bytes / 4),
            WeightsDtype::F16 | WeightsDtype::Bf16 => bytes.is_multiple_of(2).then_some(bytes / 2),
            WeightsDtype::Int8 { codes } => {
                let floats = bytes.checked_sub(codes.checked_next_multiple_of(4)?)?;
                floats.is_multiple_of(4).then_some(codes + floats / 4)
            }
        }
    }
}

/// What the first output means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Class scores before softmax.
    Logits,
    /// An L2-normalized embedding.
    Embedding,
}

/// One step: its kernel's symbol name (empty for the input step), work items, block, halos to clear.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDesc {
    /// The kernel's symbol name (empty for the input step).
    pub name: String,
    /// Whether the step runs a kernel (the input step does not).
    pub has_kernel: bool,
    /// Work items the kernel is called for.
    pub items: usize,
    /// Index into [`ModelDesc::blocks`].
    pub block: usize,
    /// Halos to zero before the step runs.
    pub clear_halos: Vec<MapLayout>,
    /// Whether the step runs concurrently with the one before (one stage).
    pub joins: bool,
}

/// The whole description.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDesc {
    /// The network's name (`inception-v4`).
    pub model: String,
    /// Images per run.
    pub batch: usize,
    /// Input height and width.
    pub image: [usize; 2],
    /// How images become input.
    pub preprocess: Preprocess,
    /// What the output is.
    pub output_kind: OutputKind,
    /// Bytes of the arena (every intermediate value, scratch and canaries).
    pub arena_bytes: usize,
    /// How the weights are stored.
    pub weights_dtype: WeightsDtype,
    /// The CPU features the kernels use.
    pub tier: crate::exec::Tier,
    /// What the feature maps are in the arena (the kernels' instructions follow from it).
    pub precision: Precision,
    /// Whether kernels call AMX tiles (the CPU must have them, and the kernel's permission).
    pub amx: bool,
    /// Where the input goes in the arena.
    pub input: MapLayout,
    /// Where the outputs are read from, in order.
    pub outputs: Vec<Layout>,
    /// Block names, for per-block timing.
    pub blocks: Vec<String>,
    /// The steps, in execution order.
    pub steps: Vec<StepDesc>,
    /// Buffers watched by the bounds check (`--check-bounds`); empty otherwise.
    pub guards: Vec<Guard>,
    /// How the stored weights become the packed weights the kernels read.
    pub segments: Vec<Segment>,
    /// Bytes of the packed weights.
    pub packed_bytes: usize,
}

/// The bytes are not a description this runtime understands.
#[derive(Debug, thiserror::Error)]
#[error("corrupt model description: {0}")]
pub struct DescError(&'static str);

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u(&mut self, v: usize) {
        self.0.extend_from_slice(&(v as u64).to_le_bytes());
    }
    fn f(&mut self, v: f32) {
        self.u(v.to_bits() as usize);
    }
    fn s(&mut self, s: &str) {
        self.u(s.len());
        self.0.extend_from_slice(s.as_bytes());
        self.0.resize(self.0.len().next_multiple_of(8), 0);
    }
    fn map(&mut self, m: &MapLayout) {
        for v in [
            m.offset,
            m.n,
            m.h,
            m.w,
            m.c_total,
            m.channel_offset,
            m.channels,
            m.halo[0],
            m.halo[1],
            precision_code(m.precision),
            m.quant.scale.to_bits() as usize,
            m.quant.zero as usize,
        ] {
            self.u(v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u(&mut self) -> Result<usize, DescError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(DescError("truncated"))?;
        self.0 = rest;
        usize::try_from(u64::from_le_bytes(*head)).map_err(|_| DescError("value out of range"))
    }
    fn f(&mut self) -> Result<f32, DescError> {
        Ok(f32::from_bits(self.u()? as u32))
    }
    fn s(&mut self) -> Result<String, DescError> {
        let len = self.u()?;
        let padded = len.next_multiple_of(8);
        if padded > self.0.len() {
            return Err(DescError("truncated string"));
        }
        let s = std::str::from_utf8(&self.0[..len]).map_err(|_| DescError("bad string"))?;
        self.0 = &self.0[padded..];
        Ok(s.to_string())
    }
    /// A list length, bounded by what the remaining bytes could hold.
    fn len(&mut self) -> Result<usize, DescError> {
        let n = self.u()?;
        if n > self.0.len() / 8 {
            return Err(DescError("list longer than the data"));
        }
        Ok(n)
    }
    fn map(&mut self) -> Result<MapLayout, DescError> {
        Ok(MapLayout {
            offset: self.u()?,
            n: self.u()?,
            h: self.u()?,
            w: self.u()?,
            c_total: self.u()?,
            channel_offset: self.u()?,
            channels: self.u()?,
            halo: [self.u()?, self.u()?],
            precision: self.precision()?,
            quant: Quant {
                scale: self.f()?,
                zero: u8::try_from(self.u()?).map_err(|_| DescError("zero point out of range"))?,
            },
        })
    }
    fn precision(&mut self) -> Result<Precision, DescError> {
        match self.u()? {
            0 => Ok(Precision::F32),
            1 => Ok(Precision::Bf16),
            2 => Ok(Precision::U8),
            _ => Err(DescError("unknown precision")),
        }
    }
}

impl ModelDesc {
    /// The runnable model this description describes, over the packed `weights` and the
    /// `kernels` of its steps (`None` where a step has none): what an executable, a library and
    /// the compiler's JIT all run.
    pub fn model<'a>(
        &self,
        weights: &'a [u8],
        kernels: &[Option<crate::exec::KernelFn>],
    ) -> crate::exec::Model<'a> {
        crate::exec::Model {
            arena_bytes: self.arena_bytes,
            weights,
            input: self.input,
            outputs: self.outputs.clone(),
            steps: self
                .steps
                .iter()
                .zip(kernels)
                .map(|(s, k)| crate::exec::Step {
                    name: s.name.clone(),
                    kernel: *k,
                    items: s.items,
                    block: s.block,
                    clear_halos: s.clear_halos.clone(),
                    joins: s.joins,
                })
                .collect(),
            blocks: self.blocks.clone(),
            guards: self.guards.clone(),
            stages: crate::exec::StageOrder::Together,
        }
    }

    /// The bytes an executable carries (see the module's format).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u(MAGIC as usize);
        w.u(VERSION as usize);
        w.s(&self.model);
        w.u(self.batch);
        w.u(self.image[0]);
        w.u(self.image[1]);
        match self.preprocess {
            Preprocess::Timm {
                crop_pct,
                interpolation,
                mean,
                std,
            } => {
                w.u(0);
                w.f(crop_pct);
                w.u(match interpolation {
                    Filter::Bilinear => 0,
                    Filter::Bicubic => 1,
                });
                mean.iter().chain(&std).for_each(|v| w.f(*v));
            }
            Preprocess::Facenet => w.u(1),
        }
        w.u(match self.output_kind {
            OutputKind::Logits => 0,
            OutputKind::Embedding => 1,
        });
        w.u(self.arena_bytes);
        match self.weights_dtype {
            WeightsDtype::F32 => w.u(0),
            WeightsDtype::F16 => w.u(1),
            WeightsDtype::Bf16 => w.u(2),
            WeightsDtype::Int8 { codes } => {
                w.u(3);
                w.u(codes)
            }
        }
        w.u(match self.tier {
            crate::exec::Tier::V3 => 3,
            crate::exec::Tier::V4 => 4,
        });
        w.u(precision_code(self.precision));
        w.u(self.amx as usize);
        w.map(&self.input);
        w.u(self.outputs.len());
        for o in &self.outputs {
            match o {
                Layout::Map(m) => {
                    w.u(0);
                    w.map(m);
                }
                Layout::Vector(v) => {
                    w.u(1);
                    for x in [v.offset, v.n, v.f_total, v.feature_offset, v.features] {
                        w.u(x);
                    }
                }
            }
        }
        w.u(self.blocks.len());
        self.blocks.iter().for_each(|b| w.s(b));
        w.u(self.steps.len());
        for s in &self.steps {
            w.s(&s.name);
            w.u(s.has_kernel as usize);
            w.u(s.items);
            w.u(s.block);
            w.u(s.clear_halos.len());
            s.clear_halos.iter().for_each(|m| w.map(m));
            w.u(s.joins as usize);
        }
        w.u(self.guards.len());
        for g in &self.guards {
            w.s(&g.buffer);
            for v in [g.offset, g.bytes, g.guard, g.live[0], g.live[1]] {
                w.u(v);
            }
            match &g.halo {
                Some(m) => {
                    w.u(1);
                    w.map(m);
                }
                None => w.u(0),
            }
        }
        w.u(self.segments.len());
        for seg in &self.segments {
            w.u(seg.offset);
            w.u(seg.source);
            match &seg.recipe {
                Recipe::Copy { floats } => {
                    w.u(0);
                    w.u(*floats);
                }
                Recipe::Conv(c) => {
                    w.u(1);
                    for v in [c.out, c.inputs, c.padded_inputs, c.kernel[0], c.kernel[1]] {
                        w.u(v);
                    }
                    match &c.transform {
                        Some(gs) => {
                            w.u(1);
                            for g in gs {
                                w.u(g.len());
                                g.iter().for_each(|v| w.u(v.to_bits() as usize));
                            }
                        }
                        None => w.u(0),
                    }
                    w.u(c.panels.len());
                    c.panels.iter().flatten().for_each(|v| w.u(*v));
                    w.u(precision_code(c.precision));
                }
            }
        }
        w.u(self.packed_bytes);
        w.0
    }

    /// Reads and checks a description (see [`ModelDesc::check`]).
    pub fn decode(bytes: &[u8]) -> Result<ModelDesc, DescError> {
        let mut r = Reader(bytes);
        if r.u()? != MAGIC as usize {
            return Err(DescError("bad magic"));
        }
        if r.u()? != VERSION as usize {
            return Err(DescError("unknown version"));
        }
        let model = r.s()?;
        let batch = r.u()?;
        let image = [r.u()?, r.u()?];
        let preprocess = match r.u()? {
            0 => Preprocess::Timm {
                crop_pct: r.f()?,
                interpolation: match r.u()? {
                    0 => Filter::Bilinear,
                    1 => Filter::Bicubic,
                    _ => return Err(DescError("unknown interpolation")),
                },
                mean: [r.f()?, r.f()?, r.f()?],
                std: [r.f()?, r.f()?, r.f()?],
            },
            1 => Preprocess::Facenet,
            _ => return Err(DescError("unknown preprocessing")),
        };
        let output_kind = match r.u()? {
            0 => OutputKind::Logits,
            1 => OutputKind::Embedding,
            _ => return Err(DescError("unknown output kind")),
        };
        let arena_bytes = r.u()?;
        let weights_dtype = match r.u()? {
            0 => WeightsDtype::F32,
            1 => WeightsDtype::F16,
            2 => WeightsDtype::Bf16,
            3 => WeightsDtype::Int8 { codes: r.u()? },
            _ => return Err(DescError("unknown weights dtype")),
        };
        let tier = match r.u()? {
            3 => crate::exec::Tier::V3,
            4 => crate::exec::Tier::V4,
            _ => return Err(DescError("unknown CPU tier")),
        };
        let precision = r.precision()?;
        let amx = match r.u()? {
            0 => false,
            1 => true,
            _ => return Err(DescError("bad AMX flag")),
        };
        let input = r.map()?;
        let mut outputs = Vec::new();
        for _ in 0..r.len()? {
            outputs.push(match r.u()? {
                0 => Layout::Map(r.map()?),
                1 => Layout::Vector(VecLayout {
                    offset: r.u()?,
                    n: r.u()?,
                    f_total: r.u()?,
                    feature_offset: r.u()?,
                    features: r.u()?,
                }),
                _ => return Err(DescError("unknown layout")),
            });
        }
        let mut blocks = Vec::new();
        for _ in 0..r.len()? {
            blocks.push(r.s()?);
        }
        let mut steps = Vec::new();
        for _ in 0..r.len()? {
            let name = r.s()?;
            let has_kernel = r.u()? != 0;
            let items = r.u()?;
            let block = r.u()?;
            if block >= blocks.len() {
                return Err(DescError("step names an unknown block"));
            }
            let mut clear_halos = Vec::new();
            for _ in 0..r.len()? {
                clear_halos.push(r.map()?);
            }
            let joins = r.u()? != 0;
            steps.push(StepDesc {
                name,
                has_kernel,
                items,
                block,
                clear_halos,
                joins,
            });
        }
        let mut guards = Vec::new();
        for _ in 0..r.len()? {
            guards.push(Guard {
                buffer: r.s()?,
                offset: r.u()?,
                bytes: r.u()?,
                guard: r.u()?,
                live: [r.u()?, r.u()?],
                halo: match r.u()? {
                    0 => None,
                    1 => Some(r.map()?),
                    _ => return Err(DescError("bad guard")),
                },
            });
        }
        let mut segments = Vec::new();
        for _ in 0..r.len()? {
            let (offset, source) = (r.u()?, r.u()?);
            let recipe = match r.u()? {
                0 => Recipe::Copy { floats: r.u()? },
                1 => {
                    let [out, inputs, padded_inputs, kh, kw] =
                        [r.u()?, r.u()?, r.u()?, r.u()?, r.u()?];
                    let transform = match r.u()? {
                        0 => None,
                        1 => {
                            let mut matrix = || -> Result<Vec<f64>, DescError> {
                                (0..r.len()?)
                                    .map(|_| Ok(f64::from_bits(r.u()? as u64)))
                                    .collect()
                            };
                            Some([matrix()?, matrix()?])
                        }
                        _ => return Err(DescError("bad weight transform")),
                    };
                    let panels = (0..r.len()?)
                        .map(|_| Ok([r.u()?, r.u()?, r.u()?]))
                        .collect::<Result<_, DescError>>()?;
                    Recipe::Conv(ConvPacking {
                        out,
                        inputs,
                        padded_inputs,
                        kernel: [kh, kw],
                        transform,
                        panels,
                        precision: r.precision()?,
                    })
                }
                _ => return Err(DescError("bad weight segment")),
            };
            segments.push(Segment {
                offset,
                source,
                recipe,
            });
        }
        let packed_bytes = r.u()?;
        if !r.0.is_empty() {
            return Err(DescError("trailing bytes"));
        }
        let desc = ModelDesc {
            model,
            batch,
            image,
            preprocess,
            output_kind,
            arena_bytes,
            weights_dtype,
            tier,
            precision,
            amx,
            input,
            outputs,
            blocks,
            steps,
            guards,
            segments,
            packed_bytes,
        };
        desc.check()?;
        Ok(desc)
    }
}

fn precision_code(p: Precision) -> usize {
    match p {
        Precision::F32 => 0,
        Precision::Bf16 => 1,
        Precision::U8 => 2,
    }
}

mod check;
#[cfg(test)]
mod tests;
