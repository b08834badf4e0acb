//! Graphs whose weights live in external data (`model.onnx_data`, as every real SD UNet is
//! exported): the index reads them and promoted sessions find them. The tiny text encoder is
//! rewritten into that layout here, with the wire writer, so no large file is committed.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use super::index::WeightIndex;
use super::wire::{fields, put_bytes_field, put_varint_field};
use crate::runtime::{Graph, Input, Runtime, RuntimeOptions};

const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_FLOAT_DATA: u32 = 4;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_EXTERNAL_DATA: u32 = 13;
const TENSOR_DATA_LOCATION: u32 = 14;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn entry(key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes_field(&mut out, 1, key.as_bytes());
    put_bytes_field(&mut out, 2, value.as_bytes());
    out
}

/// `model` with every initializer's raw data moved to `dir/model.onnx_data`; returns the new model path.
fn externalize(model: &Path, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(model).expect("model");
    let mut data = Vec::new();
    let mut out = Vec::new();
    for field in fields(&bytes) {
        let field = field.expect("valid model");
        if field.number != MODEL_GRAPH {
            out.extend_from_slice(field.raw);
            continue;
        }
        let mut graph = Vec::new();
        for part in fields(field.bytes().expect("graph")) {
            let part = part.expect("valid graph");
            if part.number != GRAPH_INITIALIZER {
                graph.extend_from_slice(part.raw);
                continue;
            }
            let mut tensor = Vec::new();
            let mut payload = None;
            for t in fields(part.bytes().expect("tensor")) {
                let t = t.expect("valid tensor");
                match t.number {
                    TENSOR_RAW_DATA | TENSOR_FLOAT_DATA => payload = Some(t.bytes().expect("data")),
                    _ => tensor.extend_from_slice(t.raw),
                }
            }
            if let Some(payload) = payload {
                let offset = data.len();
                data.extend_from_slice(payload);
                put_bytes_field(
                    &mut tensor,
                    TENSOR_EXTERNAL_DATA,
                    &entry("location", "model.onnx_data"),
                );
                put_bytes_field(
                    &mut tensor,
                    TENSOR_EXTERNAL_DATA,
                    &entry("offset", &offset.to_string()),
                );
                put_bytes_field(
                    &mut tensor,
                    TENSOR_EXTERNAL_DATA,
                    &entry("length", &payload.len().to_string()),
                );
                put_varint_field(&mut tensor, TENSOR_DATA_LOCATION, 1);
            }
            put_bytes_field(&mut graph, GRAPH_INITIALIZER, &tensor);
        }
        put_bytes_field(&mut out, MODEL_GRAPH, &graph);
    }
    std::fs::write(dir.join("model.onnx_data"), data).expect("data");
    let path = dir.join("model.onnx");
    std::fs::write(&path, out).expect("model");
    path
}

fn runtime() -> std::sync::Arc<Runtime> {
    let bundled = repo().join(".ort/lib/libonnxruntime.so.1.31.1");
    Runtime::new(RuntimeOptions {
        ort_library: bundled.is_file().then_some(bundled),
        ..RuntimeOptions::default()
    })
    .unwrap_or_else(|e| panic!("ONNX Runtime must load (run `make ort`): {e}"))
}

fn hidden(graph: &Graph, weights: Option<&crate::runtime::WeightSet>) -> ArrayD<f32> {
    let ids = ArrayD::from_shape_vec(vec![1, 77], (0..77).map(|i| i % 50).collect()).unwrap();
    let (mut out, _) = graph
        .run_outputs_with(
            &[("input_ids", Input::I64(ids.view()))],
            weights,
            &["last_hidden_state"],
        )
        .expect("runs");
    out.pop().expect("output")
}

#[test]
fn external_weights_are_indexed_read_and_promoted() {
    let inline = repo().join("models/tiny-sd/text_encoder/model.onnx");
    let dir = tempfile::tempdir().expect("tempdir");
    let external = externalize(&inline, dir.path());
    assert!(
        std::fs::metadata(&external).expect("model").len()
            < std::fs::metadata(&inline).expect("inline").len() / 2,
        "the weights moved out of the model file"
    );

    let (a, b) = (
        WeightIndex::load(&inline).expect("inline"),
        WeightIndex::load(&external).expect("external"),
    );
    assert_eq!(a.len(), b.len());
    let module = "text_model.encoder.layers.1.self_attn.v_proj";
    let (wa, wb) = (
        a.get(module).expect("inline v_proj"),
        b.get(module).expect("external v_proj"),
    );
    let base = a.read(wa).expect("inline values");
    assert_eq!(base, b.read(wb).expect("external values"));

    let runtime = runtime();
    let original = runtime
        .load_graph("text_encoder", &inline)
        .expect("inline graph");
    let graph = runtime
        .load_graph("text_encoder", &external)
        .expect("external graph");
    let expected = hidden(&original, None);
    assert_eq!(
        hidden(&graph, None),
        expected,
        "external data loads as the inline graph"
    );
    graph
        .promote(&BTreeSet::from([wb.initializer.clone()]))
        .expect("a promoted session finds the external data");
    assert_eq!(
        hidden(&graph, None),
        expected,
        "nothing fed: the stored weight"
    );
    let doubled: Vec<f32> = base.iter().map(|v| v * 2.0).collect();
    let set = graph
        .weight_set(vec![(wb.initializer.clone(), wb.stored_shape(), doubled)])
        .expect("weight set");
    let changed = hidden(&graph, Some(&set));
    assert!(
        (&changed - &expected)
            .mapv(f32::abs)
            .iter()
            .any(|d| *d > 1e-3),
        "the fed weight is used"
    );
    let unpromoted = original
        .weight_set(vec![(wa.initializer.clone(), wa.stored_shape(), base)])
        .expect("weight set");
    let err = original
        .run_outputs_with(
            &[("input_ids", Input::I64(ArrayD::zeros(vec![1, 77]).view()))],
            Some(&unpromoted),
            &["last_hidden_state"],
        )
        .expect_err("feeding a weight that was never promoted");
    assert!(err.to_string().contains("never promoted"), "{err}");
}
