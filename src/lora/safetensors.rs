//! A reader for the safetensors format (8-byte little-endian header length, a JSON header naming
//! each tensor's dtype, shape and byte range, then the data), converting F32/F16/BF16/F64 to f32.
//! LoRA files need nothing more, and reading them ourselves keeps errors in the crate's terms.
use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};

/// Headers beyond this are not LoRA files (real ones are a few hundred KiB for thousands of keys).
const MAX_HEADER: usize = 100 << 20;

/// One tensor's place in the file.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub dtype: String,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A parsed header over the file's bytes; tensors are converted only when asked for.
#[derive(Debug)]
pub(crate) struct File<'a> {
    pub entries: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
    data: &'a [u8],
}

/// A tensor converted to f32, row-major.
#[derive(Clone, PartialEq)]
pub(crate) struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

// The data can be megabytes: print what identifies a tensor, not its values.
impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::InvalidArg(format!("not a valid safetensors file: {message}"))
}

impl<'a> File<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad(format!("{} bytes is too short for a header", bytes.len())))?;
        let header_len = u64::from_le_bytes(len_bytes);
        let rest = &bytes[8..];
        if header_len > MAX_HEADER as u64 || header_len > rest.len() as u64 {
            return Err(bad(format!(
                "header length {header_len} exceeds the {} bytes that follow (truncated, or not safetensors)",
                rest.len()
            )));
        }
        let (header, data) = rest.split_at(header_len as usize);
        let header: BTreeMap<String, Value> = serde_json::from_slice(header)
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value)
                    .map_err(|e| bad(format!("__metadata__ is not a string map: {e}")))?;
                continue;
            }
            let entry = Entry::from_json(&name, value, data.len())?;
            entries.insert(name, entry);
        }
        Ok(File {
            entries,
            metadata,
            data,
        })
    }

    /// The tensor `name` as f32; values must be finite, since they end up in model weights.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::InvalidArg(format!("tensor {name} is not in the file")))?;
        let bytes = &self.data[entry.start..entry.end];
        let data: Vec<f32> = match entry.dtype.as_str() {
            "F32" => words::<4>(bytes).map(f32::from_le_bytes).collect(),
            "F64" => words::<8>(bytes)
                .map(|w| f64::from_le_bytes(w) as f32)
                .collect(),
            "F16" => words::<2>(bytes)
                .map(|w| f16_to_f32(u16::from_le_bytes(w)))
                .collect(),
            "BF16" => words::<2>(bytes)
                .map(|w| f32::from_bits(u32::from(u16::from_le_bytes(w)) << 16))
                .collect(),
            other => {
                return Err(Error::Unsupported(format!(
                    "tensor {name} has dtype {other}; LoRA factors must be F32, F16, BF16 or F64"
                )))
            }
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArg(format!(
                "tensor {name} holds a non-finite value ({}) at index {i}",
                data[i]
            )));
        }
        Ok(Tensor {
            shape: entry.shape.clone(),
            data,
        })
    }
}

impl Entry {
    fn from_json(name: &str, value: Value, data_len: usize) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Raw {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [usize; 2],
        }
        let raw: Raw =
            serde_json::from_value(value).map_err(|e| bad(format!("entry {name}: {e}")))?;
        let [start, end] = raw.data_offsets;
        if start > end || end > data_len {
            return Err(bad(format!(
                "tensor {name}: data offsets [{start}, {end}] lie outside the {data_len} data bytes"
            )));
        }
        // Unknown dtypes are refused when read, so that a file can still be inspected.
        if let Some(size) = dtype_size(&raw.dtype) {
            let expected = raw
                .shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(d));
            if expected != Some(end - start) {
                return Err(bad(format!(
                    "tensor {name}: shape {:?} of {} does not fill its {} bytes",
                    raw.shape,
                    raw.dtype,
                    end - start
                )));
            }
        }
        Ok(Entry {
            dtype: raw.dtype,
            shape: raw.shape,
            start,
            end,
        })
    }
}

fn dtype_size(dtype: &str) -> Option<usize> {
    match dtype {
        "F64" => Some(8),
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
        _ => None,
    }
}

fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut w = [0u8; N];
        w.copy_from_slice(c);
        w
    })
}

/// IEEE 754 half to single precision, subnormals included.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant * 2^-24, exact in f32.
            let v = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ErrorCode;

    /// Builds a safetensors file from (name, shape, f32 values) and string metadata.
    pub(crate) fn build<S: AsRef<str>>(
        tensors: &[(S, Vec<usize>, Vec<f32>)],
        metadata: &[(&str, &str)],
    ) -> Vec<u8> {
        let raw: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (n.as_ref(), "F32", s.clone(), bytes)
            })
            .collect();
        build_raw(&raw, metadata)
    }

    /// The same with each tensor's dtype and bytes given as they are.
    pub(crate) fn build_raw(
        tensors: &[(&str, &str, Vec<usize>, Vec<u8>)],
        metadata: &[(&str, &str)],
    ) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        if !metadata.is_empty() {
            let map: serde_json::Map<String, Value> = metadata
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            header.insert("__metadata__".into(), Value::Object(map));
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn reads_f32_f16_bf16_f64_and_metadata() {
        let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7bff]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let bf16: Vec<u8> = [0x3f80u16, 0xc040]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [0.25f64, -3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f32s: Vec<u8> = [1.5f32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = build_raw(
            &[
                ("a", "F16", vec![2, 2], f16),
                ("b", "BF16", vec![2], bf16),
                ("c", "F64", vec![2], f64s),
                ("d", "F32", vec![], f32s),
            ],
            &[("format", "pt")],
        );
        let file = File::parse(&bytes).unwrap();
        assert_eq!(file.metadata["format"], "pt");
        let a = file.tensor("a").unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.data, vec![1.0, -2.0, 2f32.powi(-24), 65504.0]);
        assert_eq!(file.tensor("b").unwrap().data, vec![1.0, -3.0]);
        assert_eq!(file.tensor("c").unwrap().data, vec![0.25, -3.0]);
        assert_eq!(file.tensor("d").unwrap().data, vec![1.5]);
    }

    #[test]
    fn refuses_broken_files() {
        let good = build(&[("w", vec![2], vec![1.0, 2.0])], &[]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("too short", vec![1, 2, 3]),
            ("truncated", good[..good.len() - 3].to_vec()),
            ("header length", {
                let mut b = good.clone();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
            ("JSON", {
                let mut b = 5u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{nope");
                b
            }),
            (
                "shape",
                build_raw(&[("w", "F32", vec![4], vec![0; 8])], &[]),
            ),
        ];
        for (what, bytes) in cases {
            let err = File::parse(&bytes).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArg, "{what}: {err}");
            assert!(err.to_string().contains("safetensors"), "{what}: {err}");
        }
    }

    #[test]
    fn refuses_offsets_beyond_the_data_and_odd_dtypes() {
        let mut header = serde_json::Map::new();
        header.insert(
            "w".into(),
            serde_json::json!({"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}),
        );
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&[0; 16]);
        let err = File::parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("offsets"), "{err}");

        let bytes = build_raw(&[("q", "I8", vec![2], vec![1, 2])], &[]);
        let err = File::parse(&bytes).unwrap().tensor("q").unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert!(
            err.to_string().contains("q") && err.to_string().contains("I8"),
            "{err}"
        );

        let bytes = build(&[("n", vec![2], vec![1.0, f32::NAN])], &[]);
        let err = File::parse(&bytes).unwrap().tensor("n").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains("non-finite"), "{err}");
    }
}
