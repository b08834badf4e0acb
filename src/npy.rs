//! Minimal NumPy `.npy` (format 1.0/2.0) reading and writing for little-endian float32 C-order arrays:
//! enough for supplying initial latents and for golden files, without another dependency.
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a float32 array written by `numpy.save`.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    parse_f32(&bytes).map_err(|msg| Error::InvalidArg(format!("{}: {msg}", path.display())))
}

fn parse_f32(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-ASCII header")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    if !field("descr")?.starts_with("'<f4'") {
        return Err("dtype must be little-endian float32 ('<f4')".into());
    }
    if !field("fortran_order")?.starts_with("False") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let close = shape_text.find(')').ok_or("malformed shape")?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("malformed shape dimension `{s}`"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &bytes[start + header_len..];
    if data.len() != count * 4 {
        return Err(format!(
            "expected {} data bytes for shape {shape:?}, found {}",
            count * 4,
            data.len()
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())
}

/// Serialises a float32 array as `.npy` version 1.0.
pub fn to_bytes(array: &ArrayD<f32>) -> Vec<u8> {
    let dims: Vec<String> = array.shape().iter().map(ToString::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, ending the header with a newline.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + array.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in array.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 array as `.npy` (atomically).
pub fn write_f32(path: &Path, array: &ArrayD<f32>) -> Result<()> {
    crate::image::write_atomically(path, &to_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, -2.5, 3.0, 0.0, f32::MAX, 1e-8])
            .unwrap();
        assert_eq!(parse_f32(&to_bytes(&a)).unwrap(), a);
        assert!(parse_f32(b"garbage").is_err());
        let mut truncated = to_bytes(&a);
        truncated.pop();
        assert!(parse_f32(&truncated).unwrap_err().contains("data bytes"));
    }
}
