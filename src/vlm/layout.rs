//! Which export layout a VLM package uses, told from its files.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config;
use super::decoder::DecoderNames;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// The layouts the runtime loads.
#[derive(Debug)]
pub(crate) enum Layout {
    /// onnxruntime-genai (builder or mobius): `genai_config.json` names three graphs.
    Genai {
        config: Value,
        vision: PathBuf,
        embedding: PathBuf,
        decoder: PathBuf,
        names: DecoderNames,
        shared_buffer: bool,
    },
    /// transformers.js / onnx-community: `onnx/vision_encoder.onnx`, `onnx/embed_tokens.onnx`,
    /// `onnx/decoder_model_merged.onnx`.
    TransformersJs {
        vision: PathBuf,
        embedding: PathBuf,
        decoder: PathBuf,
    },
    /// optimum vision-encoder-decoder: `encoder_model.onnx` + `decoder_model_merged.onnx`.
    EncoderDecoder { encoder: PathBuf, decoder: PathBuf },
}

impl Layout {
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Genai { .. } => "onnxruntime-genai",
            Layout::TransformersJs { .. } => "transformers.js",
            Layout::EncoderDecoder { .. } => "optimum vision-encoder-decoder",
        }
    }

    /// Tells the layout of `dir`; when none matches, the error lists the graphs found with their
    /// inputs and outputs (read through `runtime`).
    pub fn detect(runtime: &Runtime, dir: &Path) -> Result<Layout> {
        if !dir.is_dir() {
            return Err(Error::model(dir, "is not a directory"));
        }
        let genai = dir.join("genai_config.json");
        if let Some(config) = config::read_json(&genai)? {
            return Layout::genai(dir, &genai, config);
        }
        for sub in ["onnx", ""] {
            let base = dir.join(sub);
            let vision = base.join("vision_encoder.onnx");
            let embedding = base.join("embed_tokens.onnx");
            let decoder = base.join("decoder_model_merged.onnx");
            if vision.is_file() && embedding.is_file() && decoder.is_file() {
                return Ok(Layout::TransformersJs {
                    vision,
                    embedding,
                    decoder,
                });
            }
            let encoder = base.join("encoder_model.onnx");
            if encoder.is_file() && decoder.is_file() {
                return Ok(Layout::EncoderDecoder { encoder, decoder });
            }
        }
        Err(Error::model(
            dir,
            format!(
                "is not a VLM package this runtime knows: expected genai_config.json \
                 (onnxruntime-genai), onnx/vision_encoder.onnx + embed_tokens.onnx + \
                 decoder_model_merged.onnx (transformers.js) or encoder_model.onnx + \
                 decoder_model_merged.onnx (optimum); found: {}",
                describe_graphs(runtime, dir)
            ),
        ))
    }

    fn genai(dir: &Path, path: &Path, config: Value) -> Result<Layout> {
        let model = config
            .get("model")
            .ok_or_else(|| Error::model(path, "has no `model` section"))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "qwen2_5_vl" | "qwen2_vl") {
            return Err(Error::Unsupported(format!(
                "{}: model type `{kind}`; the VLM runtime runs qwen2_vl and qwen2_5_vl genai packages",
                path.display()
            )));
        }
        let file = |section: &str| -> Result<PathBuf> {
            let name = model
                .pointer(&format!("/{section}/filename"))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::model(path, format!("has no `model.{section}.filename`")))?;
            config::package_file(dir, path, name)
        };
        let decoder = model.get("decoder").unwrap_or(&Value::Null);
        let text = |section: &str, key: &str, default: &str| {
            decoder
                .pointer(&format!("/{section}/{key}"))
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let layers = decoder
            .get("num_hidden_layers")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::model(path, "has no `model.decoder.num_hidden_layers`"))?;
        let patterns = [
            (
                text("inputs", "past_key_names", "past_key_values.%d.key"),
                text("outputs", "present_key_names", "present.%d.key"),
            ),
            (
                text("inputs", "past_value_names", "past_key_values.%d.value"),
                text("outputs", "present_value_names", "present.%d.value"),
            ),
        ];
        let cache = (0..layers)
            .flat_map(|layer| {
                let at = move |p: &str| p.replace("%d", &layer.to_string());
                patterns
                    .iter()
                    .map(move |(past, present)| (at(past), at(present)))
            })
            .collect();
        let names = DecoderNames {
            logits: text("outputs", "logits", "logits"),
            attention_mask: text("inputs", "attention_mask", "attention_mask"),
            cache: Some(cache),
        };
        let shared_buffer = config
            .pointer("/search/past_present_share_buffer")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Layout::Genai {
            vision: file("vision")?,
            embedding: file("embedding")?,
            decoder: file("decoder")?,
            names,
            shared_buffer,
            config,
        })
    }
}

/// The `.onnx` files in `dir` and its direct subdirectories with their signatures, for errors.
fn describe_graphs(runtime: &Runtime, dir: &Path) -> String {
    let mut found = Vec::new();
    let visit = |d: &Path, depth: usize, found: &mut Vec<String>| -> Vec<PathBuf> {
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && depth == 0 {
                subdirs.push(path);
            } else if path.extension().is_some_and(|e| e == "onnx") {
                let shown = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                let io = match runtime.load_graph("graph", &path) {
                    Ok(graph) => graph.signature(),
                    Err(e) => format!("unreadable: {e}"),
                };
                found.push(format!("{shown} {io}"));
            }
        }
        subdirs
    };
    for sub in visit(dir, 0, &mut found) {
        visit(&sub, 1, &mut found);
    }
    found.sort();
    if found.is_empty() {
        "no graphs".into()
    } else {
        found.join("; ")
    }
}
