//! Qwen2-VL / Qwen2.5-VL style models: a vision encoder, a token embedding (merging image features
//! in the graph, or leaving that to us) and a decoder with 3-D (M-RoPE) position ids.
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{concatenate, s, Array2, Array3, ArrayView2, Axis};
use ort::value::DynValue;
use serde_json::Value;

use super::config;
use super::decoder::{value, CacheState, Decoder, DecoderNames};
use super::generate::Decoding;
use super::processor::{ProcessedImage, QwenImageProcessor};
use super::rope;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::runtime::{ElementType, Graph, Input, Runtime};

/// How the embedding graph treats image features.
#[derive(Debug)]
enum Embedding {
    /// onnxruntime-genai: `input_ids` + `image_features` -> `inputs_embeds` with the features
    /// already in the image-pad positions.
    Merged(Graph),
    /// transformers.js `embed_tokens`: `input_ids` -> `inputs_embeds`; we scatter the features.
    Plain(Graph),
}

/// Input and output names of the three graphs: the canonical ones, or what genai_config.json's
/// `inputs`/`outputs` maps say.
#[derive(Debug, Clone)]
pub(crate) struct QwenNames {
    pub pixel_values: String,
    pub image_grid_thw: String,
    pub image_features: String,
    pub embed_ids: String,
    pub embed_features: String,
    pub embed_output: String,
    pub inputs_embeds: String,
    pub position_ids: String,
}

impl Default for QwenNames {
    fn default() -> QwenNames {
        QwenNames {
            pixel_values: "pixel_values".into(),
            image_grid_thw: "image_grid_thw".into(),
            image_features: "image_features".into(),
            embed_ids: "input_ids".into(),
            embed_features: "image_features".into(),
            embed_output: "inputs_embeds".into(),
            inputs_embeds: "inputs_embeds".into(),
            position_ids: "position_ids".into(),
        }
    }
}

impl QwenNames {
    /// Names from genai_config.json's `model` section, defaults where it names none.
    pub fn from_genai(model: &Value) -> QwenNames {
        let mut names = QwenNames::default();
        let fields: [(&mut String, &str); 8] = [
            (&mut names.pixel_values, "/vision/inputs/pixel_values"),
            (&mut names.image_grid_thw, "/vision/inputs/image_grid_thw"),
            (&mut names.image_features, "/vision/outputs/image_features"),
            (&mut names.embed_ids, "/embedding/inputs/input_ids"),
            (
                &mut names.embed_features,
                "/embedding/inputs/image_features",
            ),
            (&mut names.embed_output, "/embedding/outputs/inputs_embeds"),
            (&mut names.inputs_embeds, "/decoder/inputs/inputs_embeds"),
            (&mut names.position_ids, "/decoder/inputs/position_ids"),
        ];
        for (field, pointer) in fields {
            if let Some(name) = model.pointer(pointer).and_then(Value::as_str) {
                *field = name.to_string();
            }
        }
        names
    }
}

/// Graph files and names of one Qwen-VL package.
pub(crate) struct QwenFiles<'a> {
    pub vision: &'a Path,
    pub embedding: &'a Path,
    pub decoder: &'a Path,
    /// Whether the embedding graph merges image features itself.
    pub merged_embedding: bool,
    pub names: QwenNames,
    pub decoder_names: DecoderNames,
    pub shared_buffer: bool,
}

/// Token ids and sizes the prompt preparation needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QwenIds {
    pub image_pad: i64,
    pub vision_start: i64,
    pub merge_size: usize,
    pub context_length: usize,
    pub kv_dims: [usize; 2],
}

impl QwenIds {
    /// From a Hugging Face config.json (transformers 4 flat or 5 nested `text_config`), with
    /// genai_config.json's `model` section taking precedence where it has a value.
    pub fn read(path: &Path, hf: &Value, genai: Option<&Value>) -> Result<QwenIds> {
        let pick = |key: &str| {
            genai
                .and_then(|g| config::int(g, key))
                .or_else(|| config::int(hf, key))
        };
        let need = |key: &str| {
            pick(key).ok_or_else(|| Error::model(path, format!("has no integer `{key}`")))
        };
        let merge = genai
            .and_then(|g| g.pointer("/vision/spatial_merge_size"))
            .or_else(|| hf.pointer("/vision_config/spatial_merge_size"))
            .and_then(Value::as_i64)
            .unwrap_or(2);
        let heads = need("num_key_value_heads")?;
        let head_dim = match pick("head_size").or_else(|| pick("head_dim")) {
            Some(d) => d,
            None => need("hidden_size")? / need("num_attention_heads")?.max(1),
        };
        let context = pick("context_length")
            .or_else(|| pick("max_position_embeddings"))
            .unwrap_or(4096);
        let positive = |v: i64, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| Error::model(path, format!("`{what}` must be positive, got {v}")))
        };
        Ok(QwenIds {
            image_pad: need("image_token_id")?,
            vision_start: need("vision_start_token_id")?,
            merge_size: positive(merge, "spatial_merge_size")?,
            context_length: positive(context, "context_length")?,
            kv_dims: [
                positive(heads, "num_key_value_heads")?,
                positive(head_dim, "head_size")?,
            ],
        })
    }
}

/// A loaded Qwen-VL model.
pub(crate) struct Qwen {
    names: QwenNames,
    vision: Graph,
    embedding: Embedding,
    decoder: Decoder,
    processor: QwenImageProcessor,
    ids: QwenIds,
}

/// A prompt ready for the decoder.
pub(crate) struct Prepared {
    pub input_ids: Vec<i64>,
    pub vision: Duration,
    positions: Array2<i64>,
    delta: i64,
    embeds: Array3<f32>,
}

impl Qwen {
    pub fn load(
        runtime: &Runtime,
        files: QwenFiles<'_>,
        processor: QwenImageProcessor,
        ids: QwenIds,
    ) -> Result<Qwen> {
        let names = files.names;
        let vision = runtime.load_graph("vision_encoder", files.vision)?;
        input_named(&vision, &names.pixel_values)?;
        input_named(&vision, &names.image_grid_thw)?;
        output_named(&vision, &names.image_features)?;
        let graph = runtime.load_graph("embedding", files.embedding)?;
        input_named(&graph, &names.embed_ids)?;
        output_named(&graph, &names.embed_output)?;
        let embedding = if files.merged_embedding {
            input_named(&graph, &names.embed_features)?;
            Embedding::Merged(graph)
        } else {
            Embedding::Plain(graph)
        };
        let graph = runtime.load_graph("decoder", files.decoder)?;
        input_named(&graph, &names.inputs_embeds)?;
        input_named(&graph, &names.position_ids)?;
        let decoder = Decoder::new(
            graph,
            &files.decoder_names,
            Some(ids.kv_dims),
            files.shared_buffer,
        )?;
        Ok(Qwen {
            names,
            vision,
            embedding,
            decoder,
            processor,
            ids,
        })
    }

    pub fn graphs(&self) -> Vec<&Graph> {
        let embedding = match &self.embedding {
            Embedding::Merged(graph) | Embedding::Plain(graph) => graph,
        };
        vec![&self.vision, embedding, self.decoder.graph()]
    }

    pub fn context_length(&self) -> usize {
        self.ids.context_length
    }

    /// Preprocesses `images` (in prompt order).
    pub fn process_images(&self, images: &[&Image]) -> Result<Vec<ProcessedImage>> {
        images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                self.processor.process(image).map_err(|e| match e {
                    Error::InvalidArg(m) => Error::InvalidArg(format!("image {}: {m}", i + 1)),
                    other => other,
                })
            })
            .collect()
    }

    /// Expands each image-pad token of the rendered, tokenized prompt into as many tokens as its
    /// image has merged patches (what the Hugging Face processor does to the text).
    pub fn expand_image_pads(&self, ids: &[i64], images: &[ProcessedImage]) -> Result<Vec<i64>> {
        let pads = ids.iter().filter(|&&id| id == self.ids.image_pad).count();
        if pads != images.len() {
            return Err(Error::InvalidArg(format!(
                "the prompt has {pads} image placeholders but the request has {} images",
                images.len()
            )));
        }
        let mut next = images.iter();
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if id != self.ids.image_pad {
                out.push(id);
                continue;
            }
            // Counted above: there is one image per placeholder.
            if let Some(image) = next.next() {
                let n = image.merged_tokens(self.ids.merge_size);
                out.extend(std::iter::repeat_n(id, n));
            }
        }
        Ok(out)
    }

    /// Runs the vision encoder and the embedding over the expanded prompt.
    pub fn prepare(&self, input_ids: Vec<i64>, images: &[ProcessedImage]) -> Result<Prepared> {
        let grids: Vec<[i64; 3]> = images.iter().map(|i| i.grid_thw).collect();
        let (positions, delta) = rope::rope_index(
            &input_ids,
            &grids,
            self.ids.merge_size,
            self.ids.image_pad,
            self.ids.vision_start,
        )?;
        let started = Instant::now();
        let features = self.image_features(images)?;
        let vision = started.elapsed();
        let embeds = self.embed(&input_ids, features.view())?;
        Ok(Prepared {
            input_ids,
            vision,
            positions,
            delta,
            embeds,
        })
    }

    /// Image features of every image, [tokens, hidden], in prompt order. One vision run per image:
    /// each image attends only to itself, so this equals one batched run.
    fn image_features(&self, images: &[ProcessedImage]) -> Result<Array2<f32>> {
        let hidden = self.hidden_size();
        let mut rows = Vec::with_capacity(images.len());
        for image in images {
            let grid = ndarray::arr2(&[image.grid_thw]).into_dyn();
            let (features, _) = self.vision.run(
                &[
                    (
                        self.names.pixel_values.as_str(),
                        Input::F32(image.pixel_values.view().into_dyn()),
                    ),
                    (self.names.image_grid_thw.as_str(), Input::I64(grid.view())),
                ],
                &self.names.image_features,
            )?;
            let expected = image.merged_tokens(self.ids.merge_size);
            let features = features
                .into_dimensionality::<ndarray::Ix2>()
                .ok()
                .filter(|f| f.dim() == (expected, hidden))
                .ok_or_else(|| {
                    Error::backend(
                        "vision_encoder",
                        format!("image_features is not [{expected}, {hidden}]"),
                    )
                })?;
            rows.push(features);
        }
        let views: Vec<ArrayView2<'_, f32>> = rows.iter().map(|r| r.view()).collect();
        if views.is_empty() {
            return Ok(Array2::zeros((0, hidden)));
        }
        concatenate(Axis(0), &views).map_err(|e| Error::internal("vision_encoder", e))
    }

    fn hidden_size(&self) -> usize {
        let graph = self.decoder.graph();
        graph
            .input(&self.names.inputs_embeds)
            .and_then(|i| i.shape.last().copied())
            .and_then(|d| usize::try_from(d).ok())
            .unwrap_or(0)
    }

    /// `inputs_embeds` [1, seq, hidden] for `ids`, with `features` in the image-pad positions.
    fn embed(&self, ids: &[i64], features: ArrayView2<'_, f32>) -> Result<Array3<f32>> {
        let ids_array = Array2::from_shape_vec((1, ids.len()), ids.to_vec())
            .map_err(|e| Error::internal("embedding", e))?
            .into_dyn();
        let names = &self.names;
        let ids_input = (names.embed_ids.as_str(), Input::I64(ids_array.view()));
        let embeds = match &self.embedding {
            Embedding::Merged(graph) => {
                let features = features.to_owned().into_dyn();
                let features_input = (names.embed_features.as_str(), Input::F32(features.view()));
                graph
                    .run(&[ids_input, features_input], &names.embed_output)?
                    .0
            }
            Embedding::Plain(graph) => {
                let (mut embeds, _) = graph.run(&[ids_input], &names.embed_output)?;
                let slots = ids
                    .iter()
                    .enumerate()
                    .filter(|(_, &id)| id == self.ids.image_pad);
                for ((position, _), row) in slots.zip(features.rows()) {
                    embeds.slice_mut(s![0, position, ..]).assign(&row);
                }
                embeds
            }
        };
        embeds
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| Error::backend("embedding", format!("inputs_embeds: {e}")))
    }

    /// Runs the decoder over the prompt: the state is ready for the first new token.
    pub fn start(&self, prepared: Prepared, capacity: usize) -> Result<QwenState<'_>> {
        let mut cache = self.decoder.start(capacity)?;
        let seq = prepared.input_ids.len();
        let positions = prepared
            .positions
            .into_shape_with_order((3, 1, seq))
            .map_err(|e| Error::internal("decoder", e))?;
        let inputs = vec![
            (
                self.names.inputs_embeds.as_str(),
                value("decoder", prepared.embeds)?.into(),
            ),
            (
                self.names.position_ids.as_str(),
                value("decoder", positions)?.into(),
            ),
        ];
        let (logits, ort) = self.decoder.run(&mut cache, inputs, seq)?;
        Ok(QwenState {
            model: self,
            cache,
            delta: prepared.delta,
            logits,
            ort,
        })
    }

    fn embed_token(&self, token: i64) -> Result<DynValue> {
        let no_features = Array2::<f32>::zeros((0, self.hidden_size()));
        let embeds = self.embed(&[token], no_features.view())?;
        value("embedding", embeds)
    }
}

/// One request's decoding state.
pub(crate) struct QwenState<'m> {
    model: &'m Qwen,
    cache: CacheState,
    delta: i64,
    logits: Vec<f32>,
    /// Time inside ONNX Runtime's decoder runs.
    pub ort: Duration,
}

impl Decoding for QwenState<'_> {
    fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.logits
    }

    fn advance(&mut self, token: i64) -> Result<()> {
        let embeds = self.model.embed_token(token)?;
        let positions = rope::decode_positions(self.cache.len(), self.delta, 1)
            .into_shape_with_order((3, 1, 1))
            .map_err(|e| Error::internal("decoder", e))?;
        let inputs = vec![
            (self.model.names.inputs_embeds.as_str(), embeds.into()),
            (
                self.model.names.position_ids.as_str(),
                value("decoder", positions)?.into(),
            ),
        ];
        let (logits, ort) = self.model.decoder.run(&mut self.cache, inputs, 1)?;
        self.logits = logits;
        self.ort += ort;
        Ok(())
    }

    fn has_room(&self) -> bool {
        self.cache.len() < self.cache.capacity()
    }
}

fn input_named(graph: &Graph, name: &str) -> Result<String> {
    if let Some(input) = graph.input(name) {
        if input.dtype == ElementType::F16 {
            return Err(Error::Unsupported(format!(
                "{}: input `{name}` is float16; the VLM runtime runs float32 graphs",
                graph.path().display()
            )));
        }
    }
    graph.input(name).map(|i| i.name.clone()).ok_or_else(|| {
        Error::model(
            graph.path(),
            format!(
                "{} graph has no input `{name}`: it has {}",
                graph.component(),
                graph.signature()
            ),
        )
    })
}

fn output_named(graph: &Graph, name: &str) -> Result<String> {
    graph.output(name).map(|o| o.name.clone()).ok_or_else(|| {
        Error::model(
            graph.path(),
            format!(
                "{} graph has no output `{name}`: it has {}",
                graph.component(),
                graph.signature()
            ),
        )
    })
}
