//! Reading and writing `.npy` files (NumPy's array format, version 1.0-3.0): little-endian
//! float32, float64 (read as float32) and int64, C order.
//!
//! Hand-written rather than `ndarray-npy` (0.10): its reader allocates whatever the header's
//! shape claims before it reads the data, so a 144-byte file claiming 2^40 floats aborts the
//! process on a failed 4 TiB allocation instead of failing with an error. Here the whole file is
//! read first and every size is checked against it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a .npy file: {0}")]
    Format(String),
    #[error("unsupported .npy dtype {0:?} (supported: <f4, <f8, <i8)")]
    Dtype(String),
    #[error("Fortran-order .npy arrays are not supported; save with np.ascontiguousarray")]
    FortranOrder,
    /// Any of the above, in the file at `path`.
    #[error("{path}: {source}")]
    File { path: String, source: Box<NpyError> },
}

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyArray {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl NpyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32 { shape, .. } | NpyArray::I64 { shape, .. } => shape,
        }
    }
}

pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes).map_err(|source| NpyError::File {
        path: path.display().to_string(),
        source: Box::new(source),
    })
}

pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::Format("missing \\x93NUMPY magic".into()));
    }
    let (header_len, header_start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(NpyError::Format(format!("unknown version {v}"))),
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| NpyError::Format("header runs past the end of the file".into()))?;
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| NpyError::Format("header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| NpyError::Format("header has no descr".into()))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if dict_value(header, "fortran_order").map(str::trim) == Some("True") {
        return Err(NpyError::FortranOrder);
    }
    let shape = parse_shape(header)?;
    let body = &bytes[header_end..];
    let width = match descr {
        "<f4" => 4,
        "<i8" | "<f8" => 8,
        other => return Err(NpyError::Dtype(other.to_string())),
    };
    let needed = shape
        .iter()
        .try_fold(width, |acc: usize, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Format(format!("shape {shape:?} is too large")))?;
    if body.len() != needed {
        return Err(NpyError::Format(format!(
            "shape {shape:?} needs {needed} data bytes, file has {}",
            body.len()
        )));
    }
    Ok(match descr {
        "<f4" => NpyArray::F32 {
            shape,
            data: body
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        },
        "<f8" => NpyArray::F32 {
            shape,
            data: body
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
        },
        _ => NpyArray::I64 {
            shape,
            data: body
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        },
    })
}

/// The raw text of `'key': value` in the header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?;
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_shape(header: &str) -> Result<Vec<usize>, NpyError> {
    let raw = dict_value(header, "shape")
        .ok_or_else(|| NpyError::Format("header has no shape".into()))?;
    let inner = raw
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| NpyError::Format(format!("bad shape {raw}")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| NpyError::Format(format!("bad shape {raw}")))
        })
        .collect()
}

/// Encodes a float32 array as `.npy` (version 1.0).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    std::fs::write(path, encode_f32(shape, data)).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A float32 fixture of the crate's tests/data folder (unit tests and timings).
#[cfg(test)]
pub(crate) fn test_f32(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    match read(&path) {
        Ok(NpyArray::F32 { data, .. }) => data,
        other => panic!("{name}: expected a float32 array, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_float32() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = encode_f32(&[2, 3, 4], &data);
        assert_eq!(
            bytes.len() % 64,
            (24 * 4) % 64,
            "header must pad to 64 bytes"
        );
        assert_eq!(
            parse(&bytes).unwrap(),
            NpyArray::F32 {
                shape: vec![2, 3, 4],
                data
            }
        );
    }

    #[test]
    fn reads_one_dimensional_and_scalar_shapes() {
        let bytes = encode_f32(&[3], &[1.0, 2.0, 3.0]);
        assert_eq!(parse(&bytes).unwrap().shape(), &[3]);
        let bytes = encode_f32(&[], &[7.0]);
        assert_eq!(
            parse(&bytes).unwrap(),
            NpyArray::F32 {
                shape: vec![],
                data: vec![7.0]
            }
        );
    }

    #[test]
    fn rejects_truncated_data() {
        let mut bytes = encode_f32(&[4], &[1.0, 2.0, 3.0, 4.0]);
        bytes.truncate(bytes.len() - 2);
        assert!(matches!(parse(&bytes), Err(NpyError::Format(_))));
    }

    /// A version 1.0 file with header dict `dict` and data `body`.
    fn with_header(dict: &str, body: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_float64_as_float32_and_int64() {
        let body: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = with_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &body,
        );
        assert_eq!(
            parse(&bytes).unwrap(),
            NpyArray::F32 {
                shape: vec![2],
                data: vec![1.5, -2.0]
            }
        );
        let body: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = with_header(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
            &body,
        );
        assert_eq!(
            parse(&bytes).unwrap(),
            NpyArray::I64 {
                shape: vec![1, 2],
                data: vec![7, -1]
            }
        );
    }

    #[test]
    fn rejects_other_dtypes_and_fortran_order() {
        let bytes = with_header(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
            &[0; 8],
        );
        assert!(matches!(parse(&bytes), Err(NpyError::Dtype(d)) if d == "<i4"));
        let bytes = with_header(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &[0; 16],
        );
        assert!(matches!(parse(&bytes), Err(NpyError::FortranOrder)));
    }

    #[test]
    fn refuses_sizes_the_file_does_not_hold() {
        // A shape far larger than the file, and one whose byte count overflows usize.
        for shape in ["(1099511627776,)", "(4611686018427387904, 4)"] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let bytes = with_header(&dict, &[0; 16]);
            assert!(matches!(parse(&bytes), Err(NpyError::Format(_))), "{shape}");
        }
        // A version 2.0 header length of 4 GiB in a 20-byte file.
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(b"{'descr'");
        assert!(matches!(parse(&bytes), Err(NpyError::Format(_))));
    }

    #[test]
    fn read_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"not numpy").unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("bad.npy"), "{message}");
        assert!(message.contains("not a .npy file"), "{message}");
        let message = read(&dir.path().join("missing.npy"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("missing.npy"), "{message}");
    }
}
