//! `.npy` input and output of f32 tensors in C order.
//!
//! Reading checks the header against the file before allocating: the data must be exactly as long
//! as the header's shape says, so a lying header costs neither memory nor time. Writing goes to a
//! temporary file beside the target that is renamed into place, so a failed write leaves no partial
//! file.

use std::io::Write;
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;
use thiserror::Error;

/// An f32 array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Why a `.npy` file could not be read or written. Every variant names the file.
#[derive(Debug, Error)]
pub enum NpyError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: not a valid .npy file: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: the array has dtype {found}; expected little-endian float32 ('<f4') — convert with x.astype(np.float32)", path.display())]
    Dtype { path: PathBuf, found: String },
    #[error("{}: the array is in Fortran order; expected C order (np.ascontiguousarray)", path.display())]
    FortranOrder { path: PathBuf },
}

/// Reads a little-endian f32 array in C order.
pub fn read_f32(path: &Path) -> Result<Array, NpyError> {
    let read_err = |cause| NpyError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let format = |reason: String| NpyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_dir() {
        return Err(read_err(std::io::Error::other(
            "it is a directory, not a file",
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let mut rest: &[u8] = &bytes;
    let npy = npyz::NpyFile::new(&mut rest).map_err(|e| format(e.to_string()))?;
    let dtype = npy.dtype();
    let npyz::DType::Plain(type_str) = &dtype else {
        return Err(NpyError::Dtype {
            path: path.to_path_buf(),
            found: format!("{dtype:?}"),
        });
    };
    if type_str.to_string() != "<f4" {
        return Err(NpyError::Dtype {
            path: path.to_path_buf(),
            found: format!("'{type_str}'"),
        });
    }
    if npy.order() == npyz::Order::Fortran && npy.shape().len() > 1 {
        return Err(NpyError::FortranOrder {
            path: path.to_path_buf(),
        });
    }
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| format(format!("dimension {d} is too large"))))
        .collect::<Result<_, _>>()?;
    drop(npy);
    let elements = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| format(format!("shape {shape:?} is too large")))?;
    if rest.len() != elements * 4 {
        return Err(format(format!(
            "the header's shape {shape:?} needs {} bytes of data, the file holds {}",
            elements * 4,
            rest.len()
        )));
    }
    let data = rest
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// Writes an f32 array in C order, atomically: to a temporary file in the same directory, renamed
/// into place once complete.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let write_err = |cause| NpyError::Write {
        path: path.to_path_buf(),
        cause,
    };
    if shape.iter().product::<usize>() != data.len() {
        return Err(write_err(std::io::Error::other(format!(
            "shape {shape:?} does not hold {} values",
            data.len()
        ))));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".inceptc-")
        .suffix(".npy.tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    {
        let dims: Vec<u64> = shape.iter().map(|d| *d as u64).collect();
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&dims)
            .writer(std::io::BufWriter::new(tmp.as_file_mut()))
            .begin_nd()
            .map_err(write_err)?;
        writer.extend(data.iter().copied()).map_err(write_err)?;
        writer.finish().map_err(write_err)?;
    }
    tmp.as_file_mut().flush().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_an_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_f32(&path, &[2, 3, 4], &data).unwrap();
        let back = read_f32(&path).unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "the temporary file must be renamed, not left"
        );
    }

    #[test]
    fn rejects_a_header_that_promises_more_data_than_the_file_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_f32(&path, &[1, 3, 2, 2], &[0.0; 12]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(
            err.contains("needs 48 bytes of data, the file holds 44"),
            "{err}"
        );
    }
}
