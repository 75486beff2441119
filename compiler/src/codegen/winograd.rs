//! Winograd minimal filtering F(m, r): the Toom-Cook transforms that compute `m` outputs of an
//! `r`-tap correlation from `m + r − 1` products instead of `m·r`, and the weight transform.
//!
//! For one axis, `y = Aᵀ[(G g) ⊙ (Bᵀ d)]` with `d` the `L = m + r − 1` inputs of a tile and `g`
//! the `r` taps. The transforms come from evaluating at the points 0, ±1, ±2, ±½, 3, … and ∞:
//! `Aᵀ` (m × L) and `G` (L × r) are Vandermonde rows (the ∞ point picks the leading coefficient),
//! `Bᵀ` is the transposed inverse of the L × L evaluation matrix. Each row of `Bᵀ` is scaled to a
//! largest entry of 1 and the scale moved into `G`, which is applied once, in f64, at compile time.
//! A two-dimensional tile uses one transform per axis (separable); an axis with a 1-tap kernel uses
//! F(1, 1), the identity.
//!
//! Error grows with the tile: measured in f32 against f64 over 192 input channels, F(2,3) and
//! F(4,3) stay within 2.5·10⁻⁶ of the largest output, F(2,7) 2·10⁻⁶, F(3,7) 1·10⁻⁵ and F(4,7)
//! 2·10⁻⁵ (the direct path: 6·10⁻⁷). The compiler offers only the tiles [`choices`] lists.

/// Output tile sizes the compiler may pick for an `r`-tap axis: F(m, r) with an error bound
/// acceptable for f32 inference (see the module docs).
pub fn choices(r: usize) -> &'static [usize] {
    match r {
        1 => &[1],
        3 => &[2, 4],
        7 => &[2, 3],
        _ => &[],
    }
}

/// The transforms of F(m, r) along one axis, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Outputs per tile.
    pub m: usize,
    /// Taps of the kernel.
    pub r: usize,
    /// `Aᵀ`: m rows of L.
    pub at: Vec<Vec<f64>>,
    /// `G`: L rows of r.
    pub g: Vec<Vec<f64>>,
    /// `Bᵀ`: L rows of L.
    pub bt: Vec<Vec<f64>>,
}

/// Finite interpolation points, in the order they are used.
const POINTS: [f64; 10] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0, 1.0 / 3.0];

impl Transform {
    /// F(m, r); `None` when it would need more points than `POINTS` has (m + r − 1 > 11).
    pub fn new(m: usize, r: usize) -> Option<Transform> {
        let len = m + r - 1;
        if m == 0 || r == 0 || len > POINTS.len() + 1 {
            return None;
        }
        let points = &POINTS[..len - 1];
        let infinity = |i: usize, last: usize| if i == last { 1.0 } else { 0.0 };
        // Evaluation matrix of polynomials of degree < L: finite points, then ∞.
        let mut v: Vec<Vec<f64>> = points
            .iter()
            .map(|a| (0..len).map(|n| a.powi(n as i32)).collect())
            .collect();
        v.push((0..len).map(|n| infinity(n, len - 1)).collect());
        let inv = invert(&v)?;
        let mut bt: Vec<Vec<f64>> = (0..len)
            .map(|j| (0..len).map(|n| inv[n][j]).collect())
            .collect();
        let mut g: Vec<Vec<f64>> = points
            .iter()
            .map(|a| (0..r).map(|k| a.powi(k as i32)).collect())
            .collect();
        g.push((0..r).map(|k| infinity(k, r - 1)).collect());
        let at = (0..m)
            .map(|i| {
                let mut row: Vec<f64> = points.iter().map(|a| a.powi(i as i32)).collect();
                row.push(infinity(i, m - 1));
                row
            })
            .collect();
        for (b, gr) in bt.iter_mut().zip(&mut g) {
            let scale = b.iter().fold(0.0f64, |s, x| s.max(x.abs()));
            for x in b.iter_mut() {
                *x /= scale;
            }
            for x in gr.iter_mut() {
                *x *= scale;
            }
        }
        Some(Transform { m, r, at, g, bt })
    }

    /// Points per tile, `m + r − 1`.
    pub fn points(&self) -> usize {
        self.m + self.r - 1
    }

    /// `G · taps`: the transformed taps of one kernel row or column.
    pub fn weights(&self, taps: &[f64]) -> Vec<f64> {
        self.g
            .iter()
            .map(|row| row.iter().zip(taps).map(|(a, b)| a * b).sum())
            .collect()
    }
}

/// Where a term of coefficient `c` goes in a transform's sum: +1 terms first (the sum starts from
/// one without a negation or multiply), then the others, then −1 terms (subtracted). Both
/// emitters order their sums so.
pub fn sum_order(c: f64) -> u8 {
    match c {
        1.0 => 0,
        -1.0 => 2,
        _ => 1,
    }
}

/// The inverse of a small square matrix by Gauss–Jordan elimination with partial pivoting;
/// `None` if it is singular.
fn invert(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let p = m[col][col];
        for x in m[col].iter_mut() {
            *x /= p;
        }
        let pivot_row = m[col].clone();
        for (row, r) in m.iter_mut().enumerate() {
            let f = r[col];
            if row != col && f != 0.0 {
                for (x, p) in r.iter_mut().zip(&pivot_row) {
                    *x -= f * p;
                }
            }
        }
    }
    Some(m.into_iter().map(|r| r[n..].to_vec()).collect())
}

/// The transformed weights of a 2-D kernel `taps[ky][kx]` (r_y × r_x): `G_y · taps · G_xᵀ`, L_y × L_x
/// values in row-major order, computed as the runtime computes them when it packs the weights
/// ([`inceptc_runtime::pack::transform`]).
pub fn transform_kernel(ty: &Transform, tx: &Transform, taps: &[f64]) -> Vec<f64> {
    inceptc_runtime::pack::transform(&ty.g.concat(), &tx.g.concat(), [ty.r, tx.r], taps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F(m, r) along one axis, all in f64.
    fn correlate(t: &Transform, d: &[f64], g: &[f64]) -> Vec<f64> {
        let u = t.weights(g);
        let v: Vec<f64> =
            t.bt.iter()
                .map(|row| row.iter().zip(d).map(|(a, b)| a * b).sum())
                .collect();
        t.at.iter()
            .map(|row| (0..t.points()).map(|k| row[k] * u[k] * v[k]).sum())
            .collect()
    }

    #[test]
    fn every_offered_tile_computes_the_correlation_exactly_in_f64() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        for r in [1, 3, 7] {
            for &m in choices(r).iter().chain(&[4, 5]) {
                let t = Transform::new(m, r).unwrap();
                let d: Vec<f64> = (0..t.points()).map(|_| next()).collect();
                let g: Vec<f64> = (0..r).map(|_| next()).collect();
                let y = correlate(&t, &d, &g);
                for (i, yi) in y.iter().enumerate() {
                    let want: f64 = (0..r).map(|k| g[k] * d[i + k]).sum();
                    assert!(
                        (yi - want).abs() < 1e-9,
                        "F({m},{r}) output {i}: {yi} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn f23_matches_the_textbook_input_transform() {
        // Lavin & Gray's F(2,3): Bᵀ rows (1,0,−1,0), (0,1,1,0), (0,−1,1,0), (0,1,0,−1), up to
        // sign and order of the points.
        let t = Transform::new(2, 3).unwrap();
        for row in &t.bt {
            assert!(row.iter().all(|x| [0.0, 1.0, -1.0].contains(x)), "{row:?}");
            assert_eq!(row.iter().filter(|x| **x != 0.0).count(), 2, "{row:?}");
        }
    }

    #[test]
    fn a_one_tap_axis_is_the_identity() {
        let t = Transform::new(1, 1).unwrap();
        assert_eq!(
            (t.at.clone(), t.g.clone(), t.bt.clone()),
            (vec![vec![1.0]], vec![vec![1.0]], vec![vec![1.0]])
        );
    }

    #[test]
    fn a_two_dimensional_kernel_is_transformed_along_both_axes() {
        let (ty, tx) = (Transform::new(2, 3).unwrap(), Transform::new(1, 1).unwrap());
        let taps = [1.0, 2.0, 3.0];
        assert_eq!(transform_kernel(&ty, &tx, &taps), ty.weights(&taps));
        let tx = Transform::new(2, 3).unwrap();
        let taps: Vec<f64> = (0..9).map(|i| i as f64).collect();
        let u = transform_kernel(&ty, &tx, &taps);
        // Row i of G_y · taps · G_xᵀ, column j, computed directly.
        for i in 0..4 {
            for j in 0..4 {
                let mut want = 0.0;
                for ky in 0..3 {
                    for kx in 0..3 {
                        want += ty.g[i][ky] * taps[ky * 3 + kx] * tx.g[j][kx];
                    }
                }
                assert!((u[i * 4 + j] - want).abs() < 1e-12);
            }
        }
    }
}
