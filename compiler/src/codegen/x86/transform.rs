//! The AVX-512 Winograd transforms: one tile's input or output transform on zmm vectors of 16
//! channels, coefficients in a table after the code.

use super::*;

/// One Winograd transform `M_y · D · M_xᵀ` of one tile on zmm vectors of 16 channels, for
/// `vectors` whole vectors and a masked last one of `last_lanes` (0: none), every pointer moving
/// on by 64 bytes a vector. `D`'s entry (i, j) is read at `source + loads[i · columns + j]` (`None`:
/// known zero, left out of the sums); result (a, b) is written at
/// `destination + stores[a · results along x + b]` (`None`: outside the map, not written). The output transform (`output`) starts each
/// result from the bias, adds the residual at the same offset from `residual`, and applies ReLU.
/// Along two axes the products along y pass through a stack buffer, as in the 128-bit emitter.
/// The coefficients are a table after the code, read as embedded broadcasts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransformTile {
    /// F(m, r) along y and x; (1, 1) is the identity.
    pub y: (usize, usize),
    /// F(m, r) along x.
    pub x: (usize, usize),
    /// `Aᵀ` (the output transform, with its epilogue) instead of `Bᵀ`.
    pub output: bool,
    /// Byte offsets of the inputs from `source` (`None`: a known zero).
    pub loads: Vec<Option<i32>>,
    /// Byte offsets of the results from `destination` (`None`: not written).
    pub stores: Vec<Option<i32>>,
    /// Full vectors of 16 channels.
    pub vectors: usize,
    /// Channels of a last, masked vector (0: none).
    pub last_lanes: usize,
    /// Whether results start from the bias (output transform).
    pub bias: bool,
    /// Whether the residual is added (output transform).
    pub residual: bool,
    /// Whether ReLU ends the epilogue (output transform).
    pub relu: bool,
}

/// Registers of [`TransformTile`]: a row's inputs from zmm0, the sum in `SUM`, the bias in
/// `BIAS`, ReLU's zero in `ZERO`.
const SUM: usize = 16;

const BIAS: usize = 30;

const ZERO: usize = 31;

impl TransformTile {
    /// `transform<index>_<in|out>_<m_y>x<m_x>_<r_y>x<r_x>`.
    pub fn name(&self, index: usize) -> String {
        let kind = if self.output { "out" } else { "in" };
        let ((my, ry), (mx, rx)) = (self.y, self.x);
        format!("transform{index}_{kind}_{my}x{mx}_{ry}x{rx}")
    }

    /// The matrices along y and x (rows of results, columns of inputs).
    fn matrices(&self) -> [Vec<Vec<f64>>; 2] {
        [self.y, self.x].map(|(m, r)| {
            let t =
                crate::codegen::winograd::Transform::new(m, r).expect("an offered Winograd tile");
            match self.output {
                true => t.at,
                false => t.bt,
            }
        })
    }

    /// The machine code.
    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        let [my, mx] = self.matrices();
        let (ly, lx) = (my[0].len(), mx[0].len());
        assert_eq!(self.loads.len(), ly * lx, "{self:?}");
        assert_eq!(self.stores.len(), my.len() * mx.len(), "{self:?}");
        assert!(ly.max(lx) <= SUM, "{self:?}");
        let mut a = CodeAssembler::new(64)?;
        let mut constants = Constants::default();
        let two_axes = ly > 1 && lx > 1;
        let stage = (my.len() * lx * 64) as i32;
        if two_axes {
            a.sub(rsp, stage)?;
        }
        if self.relu {
            a.vpxord(zmm(ZERO), zmm(ZERO), zmm(ZERO))?;
        }
        if self.last_lanes > 0 {
            a.mov(eax, (1u32 << self.last_lanes) - 1)?;
            a.kmovw(k1, eax)?;
        }
        if self.vectors > 0 {
            a.mov(eax, self.vectors as u32)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            self.vector(&mut a, &mut constants, &my, &mx, false)?;
            for r in [rdi, rsi, rdx, rcx] {
                a.add(r, 64)?;
            }
            a.dec(eax)?;
            a.jnz(top)?;
        }
        if self.last_lanes > 0 {
            self.vector(&mut a, &mut constants, &my, &mx, true)?;
        }
        if two_axes {
            a.add(rsp, stage)?;
        }
        a.vzeroupper()?;
        a.ret()?;
        constants.place(&mut a)?;
        a.assemble(0)
    }

    /// One vector of 16 channels (`masked`: the last, partial one).
    fn vector(
        &self,
        a: &mut CodeAssembler,
        constants: &mut Constants,
        my: &[Vec<f64>],
        mx: &[Vec<f64>],
        masked: bool,
    ) -> Result<(), IcedError> {
        let (ly, lx) = (my[0].len(), mx[0].len());
        let load = |a: &mut CodeAssembler, reg: usize, at: AsmMemoryOperand| match masked {
            true => a.vmovups(zmm(reg).k1().z(), at),
            false => a.vmovups(zmm(reg), at),
        };
        if self.bias {
            load(a, BIAS, zmmword_ptr(rdx))?;
        }
        if !(ly > 1 && lx > 1) {
            // One axis: the inputs in registers, each result written as it is formed.
            let m = if ly > 1 { my } else { mx };
            let mut present = vec![false; m[0].len()];
            for (i, at) in self.loads.iter().enumerate() {
                if let Some(at) = at {
                    load(a, i, zmmword_ptr(rdi + *at))?;
                    present[i] = true;
                }
            }
            for (o, row) in m.iter().enumerate() {
                self.result(a, constants, row, &present, o, masked)?;
            }
            return Ok(());
        }
        // Along y, one column at a time, into the stack buffer: entry (a, j) at (a · L_x + j) · 64.
        for j in 0..lx {
            let mut present = vec![false; ly];
            for (i, here) in present.iter_mut().enumerate() {
                if let Some(at) = self.loads[i * lx + j] {
                    load(a, i, zmmword_ptr(rdi + at))?;
                    *here = true;
                }
            }
            for (r, row) in my.iter().enumerate() {
                if !combine(a, constants, row, &present)? {
                    a.vpxord(zmm(SUM), zmm(SUM), zmm(SUM))?;
                }
                a.vmovups(zmmword_ptr(rsp + ((r * lx + j) * 64) as i32), zmm(SUM))?;
            }
        }
        // Along x, one row at a time.
        for r in 0..my.len() {
            for j in 0..lx {
                a.vmovups(zmm(j), zmmword_ptr(rsp + ((r * lx + j) * 64) as i32))?;
            }
            for (b, row) in mx.iter().enumerate() {
                self.result(a, constants, row, &vec![true; lx], r * mx.len() + b, masked)?;
            }
        }
        Ok(())
    }

    /// Result `index`: the combination of the registers `row` weighs, then (output transform)
    /// bias, residual and ReLU, written unless it falls outside the map.
    fn result(
        &self,
        a: &mut CodeAssembler,
        constants: &mut Constants,
        row: &[f64],
        present: &[bool],
        index: usize,
        masked: bool,
    ) -> Result<(), IcedError> {
        let Some(at) = self.stores[index] else {
            return Ok(());
        };
        let formed = combine(a, constants, row, present)?;
        let sum = zmm(SUM);
        if self.bias {
            match formed {
                true => a.vaddps(sum, sum, zmm(BIAS))?,
                false => a.vmovaps(sum, zmm(BIAS))?,
            }
        } else if !formed {
            a.vpxord(sum, sum, sum)?;
        }
        if self.residual {
            match masked {
                true => a.vaddps(sum.k1().z(), sum, zmmword_ptr(rcx + at))?,
                false => a.vaddps(sum, sum, zmmword_ptr(rcx + at))?,
            }
        }
        if self.relu {
            // NaN becomes 0, as in the interpreter's f32::max (see ZmmTile).
            a.vmaxps(sum, sum, zmm(ZERO))?;
        }
        match masked {
            true => a.vmovups(zmmword_ptr(rsi + at).k1(), sum),
            false => a.vmovups(zmmword_ptr(rsi + at), sum),
        }
    }
}

/// `Σ row[i] · zmm(i)` over the present inputs with a non-zero coefficient into `SUM`, with adds
/// and subtracts for ±1 (a +1 term first) as the 128-bit emitter's `combine`; false (and `SUM`
/// untouched) when no term is left.
fn combine(
    a: &mut CodeAssembler,
    constants: &mut Constants,
    row: &[f64],
    present: &[bool],
) -> Result<bool, IcedError> {
    let mut terms: Vec<(f64, usize)> = row
        .iter()
        .enumerate()
        .filter(|&(i, c)| present[i] && *c != 0.0)
        .map(|(i, c)| (*c, i))
        .collect();
    terms.sort_by_key(|(c, _)| crate::codegen::winograd::sum_order(*c));
    let sum = zmm(SUM);
    for (n, &(c, i)) in terms.iter().enumerate() {
        let v = zmm(i);
        match (n, c) {
            (0, 1.0) => a.vmovaps(sum, v)?,
            (0, -1.0) => {
                // −v: flip the sign bit, as fneg does.
                let sign = constants.label(a, -0.0)?;
                a.vxorps(sum, v, dword_bcst(sign))?
            }
            (0, _) => {
                let k = constants.label(a, c as f32)?;
                a.vmulps(sum, v, dword_bcst(k))?
            }
            (_, 1.0) => a.vaddps(sum, sum, v)?,
            (_, -1.0) => a.vsubps(sum, sum, v)?,
            (_, _) => {
                let k = constants.label(a, c as f32)?;
                a.vfmadd231ps(sum, v, dword_bcst(k))?
            }
        }
    }
    Ok(!terms.is_empty())
}

/// The f32 constants of a function, each a label into the table placed after its code.
#[derive(Default)]
struct Constants {
    labels: Vec<(u32, CodeLabel)>,
}

impl Constants {
    fn label(&mut self, a: &mut CodeAssembler, value: f32) -> Result<CodeLabel, IcedError> {
        let bits = value.to_bits();
        if let Some((_, l)) = self.labels.iter().find(|(b, _)| *b == bits) {
            return Ok(*l);
        }
        let l = a.create_label();
        self.labels.push((bits, l));
        Ok(l)
    }

    fn place(&mut self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        for (bits, label) in &mut self.labels {
            a.set_label(label)?;
            a.dd(&[*bits])?;
        }
        Ok(())
    }
}
