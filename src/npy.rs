//! Reading and writing `.npy` files (NumPy's array format, version 1.0-3.0): little-endian
//! float32, float64 (read as float32) and int64, C order.

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
    parse(&bytes)
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
    let count: usize = shape.iter().product();
    let body = &bytes[header_end..];
    let width = match descr {
        "<f4" | "<i8" | "<f8" => {
            if descr == "<f4" {
                4
            } else {
                8
            }
        }
        other => return Err(NpyError::Dtype(other.to_string())),
    };
    if body.len() != count * width {
        return Err(NpyError::Format(format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            count * width,
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
}
