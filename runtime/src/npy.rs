//! `.npy` input and output of f32 tensors in C order.
//!
//! Reading checks the header against the file before allocating: the data must be exactly as long
//! as the header's shape says, so a lying header costs neither memory nor time. Writing goes to a
//! temporary file beside the target that is renamed into place, so a failed write leaves no partial
//! file.

use std::path::{Path, PathBuf};

use npyz::WriterBuilder;
use thiserror::Error;

/// An f32 array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values, in C order.
    pub data: Vec<f32>,
}

/// Why a `.npy` file could not be read or written. Every variant names the file.
#[derive(Debug, Error)]
pub enum NpyError {
    /// The file cannot be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error reading it.
        cause: std::io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error writing it.
        cause: std::io::Error,
    },
    /// The file is not `.npy`.
    #[error("{}: not a valid .npy file: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The array is not little-endian float32.
    #[error("{}: the array has dtype {found}; expected little-endian float32 ('<f4') — convert with x.astype(np.float32)", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The dtype in its header.
        found: String,
    },
    /// The array is in Fortran order.
    #[error("{}: the array is in Fortran order; expected C order (np.ascontiguousarray)", path.display())]
    FortranOrder {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a little-endian f32 array in C order.
pub fn read_f32(path: &Path) -> Result<Array, NpyError> {
    let read_err = |cause| NpyError::Read {
        path: path.to_path_buf(),
        cause,
    };
    if path.is_dir() {
        return Err(read_err(std::io::Error::other(
            "it is a directory, not a file",
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    parse_f32(path, &bytes)
}

/// Parses the bytes of a `.npy` file read from `path` (named in errors) as [`read_f32`] does.
pub fn parse_f32(path: &Path, bytes: &[u8]) -> Result<Array, NpyError> {
    let format = |reason: String| NpyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let header = Header::parse(bytes).map_err(format)?;
    if header.descr != "'<f4'" {
        return Err(NpyError::Dtype {
            path: path.to_path_buf(),
            found: header.descr,
        });
    }
    if header.fortran_order && header.shape.len() > 1 {
        return Err(NpyError::FortranOrder {
            path: path.to_path_buf(),
        });
    }
    let (shape, rest) = (header.shape, &bytes[header.data_offset..]);
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

/// The header of a `.npy` file: a Python dict literal with exactly the keys `descr`,
/// `fortran_order` and `shape`. Parsed here in one linear pass (a general literal parser can be
/// driven into exponential time by a hostile header of nested brackets).
#[derive(Debug, PartialEq)]
struct Header {
    /// The dtype as written, quotes included (`'<f4'`), or the literal that stands for it.
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
    /// Where the data starts.
    data_offset: usize,
}

/// The largest header accepted (numpy writes a few hundred bytes).
const MAX_HEADER: usize = 1 << 20;

#[derive(Debug, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Ints(Vec<u64>),
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Header, String> {
        if bytes.is_empty() {
            return Err("the file is empty (0 bytes)".into());
        }
        let magic = b"\x93NUMPY";
        if bytes.len() < magic.len() + 2 || &bytes[..magic.len()] != magic {
            return Err("it does not start with the magic string \\x93NUMPY".into());
        }
        let major = bytes[magic.len()];
        let (len, start) = match major {
            1 if bytes.len() >= 10 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            1..=3 => return Err("the file ends inside the header length".into()),
            v => return Err(format!("format version {v} is not 1, 2 or 3")),
        };
        if len > MAX_HEADER {
            return Err(format!(
                "the header claims {len} bytes (at most {MAX_HEADER})"
            ));
        }
        let text = bytes
            .get(start..start + len)
            .ok_or_else(|| format!("the header claims {len} bytes; the file ends before"))?;
        let text = std::str::from_utf8(text)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or("the header is not ASCII text")?;
        let mut fields = Vec::new();
        let mut p = Literal {
            s: text.as_bytes(),
            at: 0,
        };
        p.expect(b'{')?;
        loop {
            if p.eat(b'}') {
                break;
            }
            let Lit::Str(key) = p.value()? else {
                return Err("a header key is not a string".into());
            };
            p.expect(b':')?;
            fields.push((key, p.value()?));
            if !p.eat(b',') {
                if !p.eat(b'}') {
                    return Err(format!(
                        "expected `,` or `}}` at byte {} of the header",
                        p.at
                    ));
                }
                break;
            }
        }
        p.skip_space();
        if p.at != p.s.len() {
            return Err("text after the header's closing `}`".into());
        }
        let mut descr = None;
        let mut fortran_order = None;
        let mut shape = None;
        for (key, value) in fields {
            let slot_taken = match (key.as_str(), value) {
                ("descr", Lit::Str(d)) => descr.replace(format!("'{d}'")).is_some(),
                ("descr", _) => descr.replace("a structured dtype".into()).is_some(),
                ("fortran_order", Lit::Bool(b)) => fortran_order.replace(b).is_some(),
                ("shape", Lit::Ints(dims)) => shape.replace(dims).is_some(),
                ("fortran_order" | "shape", v) => {
                    return Err(format!(
                        "header key '{key}' has the wrong kind of value {v:?}"
                    ))
                }
                (other, _) => return Err(format!("unexpected header key '{other}'")),
            };
            if slot_taken {
                return Err(format!("header key '{key}' appears twice"));
            }
        }
        let missing = |k: &str| format!("the header has no '{k}'");
        let dims = shape.ok_or_else(|| missing("shape"))?;
        let shape = dims
            .iter()
            .map(|d| usize::try_from(*d).map_err(|_| format!("dimension {d} is too large")))
            .collect::<Result<_, _>>()?;
        Ok(Header {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape,
            data_offset: start + len,
        })
    }
}

/// A cursor over the header's Python literal.
struct Literal<'a> {
    s: &'a [u8],
    at: usize,
}

impl Literal<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_space();
        let found = self.s.get(self.at) == Some(&c);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            return Ok(());
        }
        Err(format!(
            "expected `{}` at byte {} of the header",
            c as char, self.at
        ))
    }

    fn value(&mut self) -> Result<Lit, String> {
        self.skip_space();
        let start = self.at;
        match self.s.get(self.at) {
            Some(&q @ (b'\'' | b'"')) => {
                let len = self.s[start + 1..]
                    .iter()
                    .position(|&c| c == q || c == b'\\')
                    .filter(|&n| self.s[start + 1 + n] == q)
                    .ok_or("an unterminated string in the header")?;
                self.at = start + len + 2;
                Ok(Lit::Str(
                    String::from_utf8_lossy(&self.s[start + 1..start + 1 + len]).into_owned(),
                ))
            }
            Some(b'(') => {
                self.at += 1;
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        return Ok(Lit::Ints(dims));
                    }
                    dims.push(self.int()?);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        return Ok(Lit::Ints(dims));
                    }
                }
            }
            _ => {
                let word_len = self.s[start..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .count();
                self.at += word_len;
                match &self.s[start..start + word_len] {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    _ => Err(format!("an unexpected value at byte {start} of the header")),
                }
            }
        }
    }

    fn int(&mut self) -> Result<u64, String> {
        self.skip_space();
        let start = self.at;
        let digits = self.s[start..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        self.at += digits;
        std::str::from_utf8(&self.s[start..start + digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("expected a dimension at byte {start} of the header"))
    }
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
    crate::files::write_with(path, None, |file| {
        let dims: Vec<u64> = shape.iter().map(|d| *d as u64).collect();
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&dims)
            .writer(std::io::BufWriter::new(file))
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
    .map_err(write_err)
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

    /// A version-1 file with `header` (padded as numpy pads it) and `data` bytes.
    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<Array, String> {
        parse_f32(Path::new("x.npy"), bytes).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_headers_numpy_writes() {
        let one = 1.5f32.to_le_bytes();
        for (header, shape) in [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                vec![1],
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                vec![],
            ),
            (
                "{\"shape\": (1,),'fortran_order':True,'descr':'<f4'}",
                vec![1],
            ),
        ] {
            let a = parse(&npy(header, &one)).unwrap();
            assert_eq!((a.shape, a.data), (shape, vec![1.5]), "{header}");
        }
        // Version 2: a four-byte header length.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v2.extend_from_slice(header.as_bytes());
        v2.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&v2).unwrap().shape, vec![2]);
    }

    #[test]
    fn rejects_hostile_headers_quickly_and_by_name() {
        let nested = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}0, 3), }}",
            "[".repeat(5000)
        );
        for (header, message) in [
            (nested.as_str(), "expected a dimension at byte 51"),
            ("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", "dtype '<f8'"),
            ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", "unexpected value"),
            ("{'descr': '<f4', 'shape': (1,), }", "no 'fortran_order'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", "unexpected value"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': True}", "unexpected header key 'x'"),
            ("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "'descr' appears twice"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", "expected a dimension"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", "is too large"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }", "needs 4000000000000 bytes of data, the file holds 4"),
            ("{'descr': '<f4 , 'fortran_order': False, 'shape': (1,), }", "expected `,` or `}` at byte 18"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x", "after the header's closing"),
        ] {
            let start = std::time::Instant::now();
            let err = parse(&npy(header, &1.0f32.to_le_bytes())).unwrap_err();
            assert!(err.contains(message), "{header}: {err}");
            assert!(err.starts_with("x.npy: "), "{err}");
            assert!(start.elapsed().as_secs() < 5, "{header}: took {:?}", start.elapsed());
        }
        for (bytes, message) in [
            (&b""[..], "the file is empty (0 bytes)"),
            (b"\x93NUMPY\x01", "magic string"),
            (
                b"\x93NUMPY\x01\x00\xff\xff{",
                "claims 65535 bytes; the file ends before",
            ),
            (
                b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{",
                "claims 2147483647 bytes (at most 1048576)",
            ),
            (b"\x93NUMPY\x07\x00\x01\x00{", "format version 7"),
        ] {
            let err = parse(bytes).unwrap_err();
            assert!(err.contains(message), "{bytes:?}: {err}");
        }
    }
}
