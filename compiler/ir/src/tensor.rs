//! A dense row-major f32 tensor whose data is shared, so that graphs and interpreter values clone
//! cheaply.

use std::sync::Arc;

/// A dense, row-major f32 tensor. The data is immutable and shared between clones.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<[f32]>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; `None` when the lengths disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == data.len()).then(|| Tensor {
            shape,
            data: data.into(),
        })
    }

    /// A tensor of `shape` filled with zeros.
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n].into(),
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The index of the first NaN or infinite value, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        self.data.iter().position(|v| !v.is_finite())
    }

    /// max |a − b| / max |b|: the relative error measure used throughout the tests. `None` when
    /// the shapes differ; infinite when either side holds a NaN or an infinity.
    pub fn relative_error(&self, reference: &Tensor) -> Option<f64> {
        if self.shape != reference.shape {
            return None;
        }
        let mut max_diff = 0f64;
        let mut max_ref = 0f64;
        for (a, b) in self.data.iter().zip(reference.data.iter()) {
            if !a.is_finite() || !b.is_finite() {
                return Some(f64::INFINITY);
            }
            max_diff = max_diff.max((*a as f64 - *b as f64).abs());
            max_ref = max_ref.max((*b as f64).abs());
        }
        Some(if max_ref == 0.0 {
            max_diff
        } else {
            max_diff / max_ref
        })
    }
}
