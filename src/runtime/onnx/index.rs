//! The weight index of a graph: every MatMul / Gemm / Conv whose weight is an initializer, with the
//! module path it came from, so that adapters named after PyTorch modules can find their weights.
//!
//! optimum's TorchScript export keeps the module path only in node names
//! (`/down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_q/MatMul`) and pre-transposes Linear
//! weights for MatMul (`onnx::MatMul_1631`, [in, out]); Gemm and Conv keep the parameter name
//! (`time_embedding.linear_1.weight`). Other exporters keep parameter names and put a Transpose in
//! front of the MatMul. The index records which layout each weight has.
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::model::{Initializer, Model, Node, Storage, FLOAT};
use crate::error::{Error, Result};

/// How a weight is stored relative to PyTorch's layout ([out, in] or [out, in, kh, kw]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Stored as PyTorch has it.
    Plain,
    /// A Linear weight stored transposed, [in, out].
    Transposed,
}

/// One weight a LoRA can update.
#[derive(Debug, Clone)]
pub struct WeightRef {
    /// PyTorch module path, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`.
    pub module: String,
    /// The initializer holding it.
    pub initializer: String,
    /// `MatMul`, `Gemm` or `Conv`.
    pub op: String,
    pub layout: Layout,
    /// Shape in PyTorch layout.
    pub shape: Vec<usize>,
    storage: Storage,
    data_type: i32,
}

impl WeightRef {
    /// Shape as stored in the graph.
    pub fn stored_shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::Plain => self.shape.clone(),
            Layout::Transposed => vec![self.shape[1], self.shape[0]],
        }
    }

    /// Adds `scale * delta` (PyTorch layout, row-major) to `stored` (this weight's stored layout).
    pub fn add_delta(&self, stored: &mut [f32], delta: &[f32], scale: f32) {
        match self.layout {
            Layout::Plain => {
                for (w, d) in stored.iter_mut().zip(delta) {
                    *w += scale * d;
                }
            }
            Layout::Transposed => {
                let (rows, cols) = (self.shape[0], self.shape[1]);
                // delta is [out=rows, in=cols]; stored is [in, out].
                for (o, row) in delta.chunks_exact(cols).enumerate().take(rows) {
                    for (i, d) in row.iter().enumerate() {
                        stored[i * rows + o] += scale * d;
                    }
                }
            }
        }
    }
}

/// The weights of one graph file that adapters can target, by module path.
#[derive(Debug, Clone)]
pub struct WeightIndex {
    path: PathBuf,
    weights: BTreeMap<String, WeightRef>,
}

impl WeightIndex {
    /// Reads `path` (an .onnx file; external data stays on disk until a weight is read).
    pub fn load(path: &Path) -> Result<WeightIndex> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        let model = Model::parse(&bytes)
            .map_err(|e| Error::model(path, format!("not a readable ONNX model: {e}")))?;
        Ok(WeightIndex {
            path: path.to_path_buf(),
            weights: index(&model),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, module: &str) -> Option<&WeightRef> {
        self.weights.get(module)
    }

    pub fn iter(&self) -> impl Iterator<Item = &WeightRef> {
        self.weights.values()
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The weight's stored values (its stored layout), read from the model file or its external data.
    pub fn read(&self, weight: &WeightRef) -> Result<Vec<f32>> {
        if weight.data_type != FLOAT {
            return Err(Error::Unsupported(format!(
                "`{}` in {} is not float32 (ONNX type {}); adapters need float32 weights",
                weight.module,
                self.path.display(),
                weight.data_type
            )));
        }
        let count: usize = weight.shape.iter().product();
        let bytes = match &weight.storage {
            Storage::Raw(range) | Storage::Floats(range) => {
                read_range(&self.path, range.start as u64, range.len())?
            }
            Storage::External {
                location,
                offset,
                length,
            } => {
                let file = external_path(&self.path, location)?;
                let len = length.map_or(count * 4, |l| l as usize);
                read_range(&file, *offset, len)?
            }
        };
        if bytes.len() != count * 4 {
            return Err(Error::model(
                &self.path,
                format!(
                    "initializer `{}` holds {} bytes, its shape {:?} needs {}",
                    weight.initializer,
                    bytes.len(),
                    weight.shape,
                    count * 4
                ),
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// External data must stay inside the model's folder (as ONNX Runtime requires).
fn external_path(model: &Path, location: &str) -> Result<PathBuf> {
    let relative = Path::new(location);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::model(
            model,
            format!("external data `{location}` is outside the model's folder"),
        ));
    }
    Ok(model.parent().unwrap_or(Path::new(".")).join(relative))
}

fn read_range(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io("reading", path, e))?;
    let mut out = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("reading", path, e))?;
    Ok(out)
}

/// Module path of a node: its name without the leading `/` and the last (operator) segment.
fn module_of_node(node: &Node) -> Option<String> {
    let name = node.name.trim_start_matches('/');
    let (scope, _op) = name.rsplit_once('/')?;
    (!scope.is_empty()).then(|| scope.replace('/', "."))
}

fn index(model: &Model) -> BTreeMap<String, WeightRef> {
    let producers = model.producers();
    let mut weights: BTreeMap<String, WeightRef> = BTreeMap::new();
    let mut ambiguous = HashSet::new();
    for node in &model.nodes {
        let Some((init, layout)) = weight_of(model, &producers, node) else {
            continue;
        };
        // A parameter name (`x.weight`) is the most reliable path; exported constants
        // (`onnx::MatMul_12`) only have the node's scope.
        let module = init
            .name
            .strip_suffix(".weight")
            .filter(|m| !m.starts_with("onnx::"))
            .map(str::to_string)
            .or_else(|| module_of_node(node));
        let Some(module) = module else { continue };
        let dims = init.shape();
        let shape = match layout {
            Layout::Plain => dims,
            Layout::Transposed => vec![dims[1], dims[0]],
        };
        let weight = WeightRef {
            module: module.clone(),
            initializer: init.name.clone(),
            op: node.op_type.clone(),
            layout,
            shape,
            storage: init.storage.clone(),
            data_type: init.data_type,
        };
        match weights.get(&module) {
            Some(existing) if existing.initializer != weight.initializer => {
                // Two weights claim one module path: neither can be targeted safely.
                ambiguous.insert(module);
            }
            Some(_) => {}
            None => {
                weights.insert(module, weight);
            }
        }
    }
    for module in ambiguous {
        weights.remove(&module);
    }
    weights
}

/// The initializer a MatMul / Gemm / Conv multiplies by, and its layout.
fn weight_of<'m>(
    model: &'m Model,
    producers: &std::collections::HashMap<&str, &Node>,
    node: &Node,
) -> Option<(&'m Initializer, Layout)> {
    let name = node.inputs.get(1)?;
    match node.op_type.as_str() {
        "Conv" => model
            .initializer(name)
            .filter(|i| i.dims.len() >= 3)
            .map(|i| (i, Layout::Plain)),
        "Gemm" => {
            let init = model.initializer(name).filter(|i| i.dims.len() == 2)?;
            let layout = if node.int_attribute("transB") == Some(1) {
                Layout::Plain
            } else {
                Layout::Transposed
            };
            Some((init, layout))
        }
        "MatMul" => {
            if let Some(init) = model.initializer(name) {
                return (init.dims.len() == 2).then_some((init, Layout::Transposed));
            }
            // Transpose(W [out, in]) -> MatMul: W is in PyTorch's layout.
            let transpose = producers.get(name.as_str())?;
            let swaps = transpose.op_type == "Transpose" && transpose.int_attributes.is_empty();
            let init = model
                .initializer(transpose.inputs.first()?)
                .filter(|i| swaps && i.dims.len() == 2)?;
            Some((init, Layout::Plain))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(package: &str, component: &str) -> WeightIndex {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(package)
            .join(component)
            .join("model.onnx");
        WeightIndex::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn indexes_unet_linears_and_convs_with_their_layouts() {
        let index = index_of("tiny-sd", "unet");
        let q = index
            .get("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
            .expect("to_q");
        assert_eq!((q.op.as_str(), q.layout), ("MatMul", Layout::Transposed));
        assert!(
            q.initializer.starts_with("onnx::MatMul"),
            "{}",
            q.initializer
        );
        let conv = index.get("down_blocks.0.resnets.0.conv1").expect("conv1");
        assert_eq!((conv.op.as_str(), conv.layout), ("Conv", Layout::Plain));
        assert_eq!(conv.shape, [16, 16, 3, 3]);
        let gemm = index.get("time_embedding.linear_1").expect("gemm");
        assert_eq!(
            (gemm.layout, gemm.shape.as_slice()),
            (Layout::Plain, &[64, 16][..])
        );
        assert_eq!(index.len(), 83, "10 Gemm + 33 Conv + 40 MatMul weights");
    }

    #[test]
    fn text_encoder_paths_come_from_node_names() {
        let index = index_of("tiny-sd", "text_encoder");
        let q = index
            .get("text_model.encoder.layers.0.self_attn.q_proj")
            .expect("q_proj");
        assert_eq!(q.shape, [32, 32]);
        assert_eq!(index.read(q).expect("values").len(), 32 * 32);
    }

    #[test]
    fn transposed_deltas_land_in_the_stored_layout() {
        let weight = WeightRef {
            module: "m".into(),
            initializer: "w".into(),
            op: "MatMul".into(),
            layout: Layout::Transposed,
            shape: vec![2, 3],
            storage: Storage::Raw(0..0),
            data_type: FLOAT,
        };
        // delta [out=2, in=3]; stored [in=3, out=2].
        let mut stored = vec![0.0; 6];
        weight.add_delta(&mut stored, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2.0);
        assert_eq!(stored, [2.0, 8.0, 4.0, 10.0, 6.0, 12.0]);
    }

    #[test]
    fn external_data_outside_the_folder_is_refused() {
        let err = external_path(Path::new("/m/model.onnx"), "../secret").expect_err("escapes");
        assert_eq!(err.code(), crate::ErrorCode::Model);
        assert!(external_path(Path::new("/m/model.onnx"), "/etc/passwd").is_err());
        assert_eq!(
            external_path(Path::new("/m/model.onnx"), "model.onnx_data").expect("inside"),
            Path::new("/m/model.onnx_data")
        );
    }
}
