//! The parts of an ONNX model that weight editing needs: nodes, initializers and graph inputs.
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use super::wire::{self, fields, push_int64s, WireError, WireResult};

// Field numbers from onnx.proto.
const MODEL_IR_VERSION: u32 = 1;
const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_INPUT: u32 = 11;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_NAME: u32 = 3;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const ATTRIBUTE_NAME: u32 = 1;
const ATTRIBUTE_I: u32 = 3;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_FLOAT_DATA: u32 = 4;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_EXTERNAL_DATA: u32 = 13;
const TENSOR_DATA_LOCATION: u32 = 14;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const VALUE_INFO_NAME: u32 = 1;
const VALUE_INFO_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TYPE_TENSOR_ELEM_TYPE: u32 = 1;
const TYPE_TENSOR_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const DIM_VALUE: u32 = 1;

/// `TensorProto.DataType.FLOAT`.
pub(crate) const FLOAT: i32 = 1;

/// One node: its operator, name, inputs and outputs, and its integer attributes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub int_attributes: Vec<(String, i64)>,
}

impl Node {
    pub fn int_attribute(&self, name: &str) -> Option<i64> {
        self.int_attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Where an initializer's values are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Storage {
    /// `raw_data`: little-endian bytes at this range of the model file.
    Raw(Range<usize>),
    /// `float_data`: packed float32s at this range of the model file.
    Floats(Range<usize>),
    /// In a file beside the model (`location` relative to the model's folder).
    External {
        location: String,
        offset: u64,
        length: Option<u64>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub storage: Storage,
}

impl Initializer {
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|&d| d.max(0) as usize).collect()
    }
}

/// A parsed model, borrowing nothing: ranges point into the bytes it was parsed from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Model {
    pub ir_version: u64,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<String>,
}

/// Offset of `inner` within `outer` (both slices of the same buffer).
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

impl Model {
    pub fn parse(bytes: &[u8]) -> WireResult<Model> {
        let mut model = Model::default();
        let mut graph = None;
        for field in fields(bytes) {
            let field = field?;
            match field.number {
                MODEL_IR_VERSION => model.ir_version = field.varint()?,
                MODEL_GRAPH => graph = Some(field.bytes()?),
                _ => {}
            }
        }
        let graph = graph.ok_or_else(|| WireError("the model has no graph".into()))?;
        for field in fields(graph) {
            let field = field?;
            match field.number {
                GRAPH_NODE => model.nodes.push(parse_node(field.bytes()?)?),
                GRAPH_INITIALIZER => model
                    .initializers
                    .push(parse_tensor(bytes, field.bytes()?)?),
                GRAPH_INPUT => model.inputs.push(value_info_name(field.bytes()?)?),
                _ => {}
            }
        }
        Ok(model)
    }

    pub fn initializer(&self, name: &str) -> Option<&Initializer> {
        self.initializers.iter().find(|i| i.name == name)
    }

    /// Node producing each tensor name.
    pub fn producers(&self) -> HashMap<&str, &Node> {
        let mut map = HashMap::new();
        for node in &self.nodes {
            for output in &node.outputs {
                map.insert(output.as_str(), node);
            }
        }
        map
    }
}

fn parse_node(bytes: &[u8]) -> WireResult<Node> {
    let mut node = Node::default();
    for field in fields(bytes) {
        let field = field?;
        match field.number {
            NODE_INPUT => node.inputs.push(field.string()?.to_string()),
            NODE_OUTPUT => node.outputs.push(field.string()?.to_string()),
            NODE_NAME => node.name = field.string()?.to_string(),
            NODE_OP_TYPE => node.op_type = field.string()?.to_string(),
            NODE_ATTRIBUTE => {
                let (mut name, mut value) = (None, None);
                for attr in fields(field.bytes()?) {
                    let attr = attr?;
                    match attr.number {
                        ATTRIBUTE_NAME => name = Some(attr.string()?.to_string()),
                        ATTRIBUTE_I => value = Some(attr.varint()? as i64),
                        _ => {}
                    }
                }
                if let (Some(name), Some(value)) = (name, value) {
                    node.int_attributes.push((name, value));
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

fn parse_tensor(model: &[u8], bytes: &[u8]) -> WireResult<Initializer> {
    let mut dims = Vec::new();
    let (mut name, mut data_type, mut storage) = (String::new(), 0, None);
    let mut external = Vec::new();
    let mut is_external = false;
    for field in fields(bytes) {
        let field = field?;
        match field.number {
            TENSOR_DIMS => push_int64s(&field, &mut dims)?,
            TENSOR_DATA_TYPE => data_type = field.varint()? as i32,
            TENSOR_NAME => name = field.string()?.to_string(),
            TENSOR_RAW_DATA | TENSOR_FLOAT_DATA => {
                let data = field.bytes()?;
                let start = offset_in(model, data);
                let range = start..start + data.len();
                storage = Some(if field.number == TENSOR_RAW_DATA {
                    Storage::Raw(range)
                } else {
                    Storage::Floats(range)
                });
            }
            TENSOR_EXTERNAL_DATA => {
                let (mut key, mut value) = ("", "");
                for entry in fields(field.bytes()?) {
                    let entry = entry?;
                    match entry.number {
                        ENTRY_KEY => key = entry.string()?,
                        ENTRY_VALUE => value = entry.string()?,
                        _ => {}
                    }
                }
                external.push((key.to_string(), value.to_string()));
            }
            TENSOR_DATA_LOCATION => is_external = field.varint()? == 1,
            _ => {}
        }
    }
    if is_external {
        let get = |key: &str| external.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let number = |key: &str| -> WireResult<Option<u64>> {
            get(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        WireError(format!("initializer `{name}`: external {key} `{v}`"))
                    })
                })
                .transpose()
        };
        storage = Some(Storage::External {
            location: get("location")
                .cloned()
                .ok_or_else(|| WireError(format!("initializer `{name}`: no external location")))?,
            offset: number("offset")?.unwrap_or(0),
            length: number("length")?,
        });
    }
    // A tensor with no data field holds zero elements (or all-default values); treat it as empty raw data.
    let storage = storage.unwrap_or(Storage::Raw(0..0));
    Ok(Initializer {
        name,
        dims,
        data_type,
        storage,
    })
}

fn value_info_name(bytes: &[u8]) -> WireResult<String> {
    for field in fields(bytes) {
        let field = field?;
        if field.number == VALUE_INFO_NAME {
            return Ok(field.string()?.to_string());
        }
    }
    Ok(String::new())
}

/// `bytes` with each named initializer also declared as a graph input (same element type and
/// shape), which makes ONNX Runtime treat it as an overridable default: a run that feeds the input
/// uses the fed tensor, a run that does not uses the stored weight. Needs IR version 4 or later.
pub(crate) fn promote(bytes: &[u8], names: &BTreeSet<String>) -> WireResult<Vec<u8>> {
    let model = Model::parse(bytes)?;
    if model.ir_version < 4 {
        // Before IR 4 every initializer had to be an input already.
        return Ok(bytes.to_vec());
    }
    let mut added = Vec::new();
    for name in names {
        if model.inputs.iter().any(|i| i == name) {
            continue;
        }
        let init = model
            .initializer(name)
            .ok_or_else(|| WireError(format!("the graph has no initializer `{name}`")))?;
        added.push(input_for(init));
    }
    let mut out = Vec::with_capacity(bytes.len() + added.iter().map(Vec::len).sum::<usize>() + 16);
    for field in fields(bytes) {
        let field = field?;
        if field.number != MODEL_GRAPH {
            out.extend_from_slice(field.raw);
            continue;
        }
        let mut graph = field.bytes()?.to_vec();
        for input in &added {
            wire::put_bytes_field(&mut graph, GRAPH_INPUT, input);
        }
        wire::put_bytes_field(&mut out, MODEL_GRAPH, &graph);
    }
    Ok(out)
}

/// A `ValueInfoProto` naming the initializer with its element type and fixed shape.
fn input_for(init: &Initializer) -> Vec<u8> {
    let mut shape = Vec::new();
    for &dim in &init.dims {
        let mut d = Vec::new();
        wire::put_varint_field(&mut d, DIM_VALUE, dim as u64);
        wire::put_bytes_field(&mut shape, SHAPE_DIM, &d);
    }
    let mut tensor = Vec::new();
    wire::put_varint_field(&mut tensor, TYPE_TENSOR_ELEM_TYPE, init.data_type as u64);
    wire::put_bytes_field(&mut tensor, TYPE_TENSOR_SHAPE, &shape);
    let mut ty = Vec::new();
    wire::put_bytes_field(&mut ty, TYPE_TENSOR, &tensor);
    let mut info = Vec::new();
    wire::put_bytes_field(&mut info, VALUE_INFO_NAME, init.name.as_bytes());
    wire::put_bytes_field(&mut info, VALUE_INFO_TYPE, &ty);
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_unet() -> Vec<u8> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd/unet/model.onnx");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn reads_the_tiny_unet() {
        let bytes = tiny_unet();
        let model = Model::parse(&bytes).expect("parses");
        assert!(model.ir_version >= 4);
        let conv = model
            .initializer("down_blocks.0.resnets.0.conv1.weight")
            .expect("conv weight");
        assert_eq!(conv.dims, [16, 16, 3, 3]);
        assert_eq!(conv.data_type, FLOAT);
        let Storage::Raw(range) = &conv.storage else {
            panic!("inline weights expected, got {:?}", conv.storage)
        };
        assert_eq!(range.len(), 16 * 16 * 9 * 4);
        let node = model
            .nodes
            .iter()
            .find(|n| n.name == "/time_embedding/linear_1/Gemm")
            .expect("gemm");
        assert_eq!(node.int_attribute("transB"), Some(1));
        assert!(model.inputs.iter().any(|i| i == "sample"));
    }

    #[test]
    fn promotion_adds_inputs_and_keeps_everything_else() {
        let bytes = tiny_unet();
        let names: BTreeSet<String> = ["down_blocks.0.resnets.0.conv1.weight".to_string()].into();
        let promoted = promote(&bytes, &names).expect("promotes");
        let before = Model::parse(&bytes).expect("parses");
        let after = Model::parse(&promoted).expect("parses");
        assert_eq!(after.inputs.len(), before.inputs.len() + 1);
        assert_eq!(
            after.inputs.last().map(String::as_str),
            Some("down_blocks.0.resnets.0.conv1.weight")
        );
        assert_eq!(after.nodes.len(), before.nodes.len());
        assert_eq!(after.initializers.len(), before.initializers.len());
        let missing: BTreeSet<String> = ["nope".to_string()].into();
        let err = promote(&bytes, &missing).expect_err("unknown initializer");
        assert!(err.0.contains("nope"), "{err}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Model::parse(b"not an onnx model at all").is_err());
        assert!(Model::parse(&[]).is_err(), "no graph");
    }
}
