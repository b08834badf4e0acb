//! Prompt encoding for every family: which text encoders run, which of their outputs condition the
//! denoiser, and how they are combined, as each diffusers pipeline's `encode_prompt` does it.
use std::time::Instant;

use ndarray::{concatenate, s, Array2, ArrayD, Axis};

use super::guidance::{Guidance, Text};
use crate::error::{Error, Result};
use crate::model::{Family, LoadedModel, TextEncoder};
use crate::request::Request;
use crate::request::Timings;
use crate::runtime::{ElementType, Input, StackWeights};

/// What the denoiser is conditioned on, one row per item of its batch.
pub(crate) struct Conditioning {
    /// `encoder_hidden_states`.
    pub hidden: ArrayD<f32>,
    /// SDXL's `text_embeds`; SD3's and FLUX's `pooled_projections`.
    pub pooled: Option<ArrayD<f32>>,
}

/// T5 sequence length when the request leaves it: diffusers' SD3 (256) and FLUX (512) defaults.
pub(crate) fn t5_length(family: Family, request: &Request) -> usize {
    request
        .max_sequence_length
        .unwrap_or(if family == Family::Flux { 512 } else { 256 })
}

/// Encodes the prompt (and the negative prompt when guidance needs it) and spreads the rows over
/// the denoiser batch in the order [`Guidance::texts`] gives.
pub(crate) fn encode(
    model: &LoadedModel,
    request: &Request,
    guidance: Guidance,
    adapters: Option<&StackWeights>,
    timings: &mut Timings,
) -> Result<Conditioning> {
    let package = &model.package;
    let family = package.family;
    let groups = guidance.texts();
    let wants_negative = groups.contains(&Text::Negative);
    // SDXL zeroes the unconditional embeddings when no negative prompt is given.
    let zero_negative = family == Family::Sdxl
        && wants_negative
        && request.negative_prompt.is_none()
        && package.force_zeros_for_empty_prompt;
    // Each distinct text is encoded once: row 0 the prompt, row 1 the negative prompt.
    let mut texts = vec![request.prompt.as_str()];
    if wants_negative && !zero_negative {
        texts.push(request.negative_prompt.as_deref().unwrap_or(""));
    }
    let mut run = Runner {
        texts: &texts,
        adapters,
        timings,
    };
    let first = || {
        model
            .text_encoder
            .as_ref()
            .map(|(t, e)| (t, e))
            .ok_or_else(|| Error::model(package.component("text_encoder"), "is missing"))
    };
    let (hidden, pooled) = match family {
        Family::StableDiffusion | Family::Inpaint | Family::InstructPix2Pix => {
            let (tokenizer, encoder) = first()?;
            let ids = run.clip_ids(tokenizer)?;
            let hidden = run.outputs(encoder, ids, &["last_hidden_state"])?;
            (one(hidden)?, None)
        }
        Family::Sdxl => {
            // Refiners have only the second encoder; its hidden states then stand alone.
            let mut parts = Vec::new();
            if let Some((tokenizer, encoder)) = &model.text_encoder {
                parts.push(run.clip(tokenizer, encoder, family)?.0);
            }
            let (tokenizer, encoder) = second(model)?;
            let (hidden, pooled) = run.clip(tokenizer, encoder, family)?;
            parts.push(hidden);
            (join(&parts, 2)?, pooled)
        }
        Family::Sd3 => {
            let (tokenizer, encoder) = first()?;
            let (first, pooled_l) = run.clip(tokenizer, encoder, family)?;
            let (tokenizer, encoder) = second(model)?;
            let (second, pooled_g) = run.clip(tokenizer, encoder, family)?;
            let clip_hidden = join(&[first, second], 2)?;
            let length = t5_length(family, request);
            let t5 = match &model.t5 {
                Some((tokenizer, encoder)) => {
                    let ids = run.t5_ids(tokenizer, length)?;
                    one(run.outputs(encoder, ids, &["last_hidden_state"])?)?
                }
                // diffusers' SD3 without T5: zeros of the transformer's joint attention width.
                None => ArrayD::zeros(vec![texts.len(), length, joint_width(model)?]),
            };
            let width = t5.shape()[2];
            let clip_width = clip_hidden.shape()[2];
            if clip_width > width {
                return Err(Error::model(
                    package.dir.clone(),
                    format!("CLIP width {clip_width} exceeds the T5 width {width}"),
                ));
            }
            // CLIP embeddings are zero-padded to T5's width, then come before T5's tokens.
            let mut padded = ArrayD::zeros(vec![texts.len(), clip_hidden.shape()[1], width]);
            padded
                .slice_mut(s![.., .., ..clip_width])
                .assign(&clip_hidden);
            let pooled = match (pooled_l, pooled_g) {
                (Some(l), Some(g)) => Some(join(&[l, g], 1)?),
                _ => None,
            };
            (join(&[padded, t5], 1)?, pooled)
        }
        Family::Flux => {
            let (tokenizer, encoder) = first()?;
            let ids = run.clip_ids(tokenizer)?;
            let pooled = run.outputs(encoder, ids, &["pooler_output"])?;
            let (tokenizer, encoder) = model
                .t5
                .as_ref()
                .ok_or_else(|| Error::model(package.component("text_encoder_2"), "is missing"))?;
            let ids = run.t5_ids(tokenizer, t5_length(family, request))?;
            let hidden = run.outputs(encoder, ids, &["last_hidden_state"])?;
            (one(hidden)?, Some(one(pooled)?))
        }
    };
    if (family.is_flow() || family == Family::Sdxl) && pooled.is_none() {
        return Err(Error::model(
            package.dir.clone(),
            "a text encoder lacks the pooled output this family needs (text_embeds)",
        ));
    }
    let n = request.num_images;
    let spread = |encoded: &ArrayD<f32>| -> Result<ArrayD<f32>> {
        let row = |r: usize| encoded.index_axis(Axis(0), r).insert_axis(Axis(0));
        let zeros = ArrayD::zeros(row(0).shape());
        let rows: Vec<_> = groups
            .iter()
            .flat_map(|t| std::iter::repeat_n(*t, n))
            .map(|t| match t {
                Text::Prompt => row(0),
                Text::Negative if zero_negative => zeros.view(),
                Text::Negative => row(1),
            })
            .collect();
        concatenate(Axis(0), &rows).map_err(|e| Error::internal("text_encoder", e))
    };
    Ok(Conditioning {
        hidden: spread(&hidden)?,
        pooled: pooled.as_ref().map(spread).transpose()?,
    })
}

/// Tokenizes the request's texts and runs encoders, accounting the time.
struct Runner<'t, 'm> {
    texts: &'t [&'t str],
    /// The request's LoRA weights (text-encoder LoRAs among them).
    adapters: Option<&'t StackWeights>,
    timings: &'m mut Timings,
}

impl Runner<'_, '_> {
    fn clip_ids(&mut self, tokenizer: &crate::model::Tokenizer) -> Result<Array2<i64>> {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(self.texts.len() * tokenizer.max_length());
        for text in self.texts {
            ids.extend(tokenizer.encode(text)?);
        }
        self.timings.tokenize += started.elapsed();
        Array2::from_shape_vec((self.texts.len(), tokenizer.max_length()), ids)
            .map_err(|e| Error::InvalidArg(format!("tokenizer output: {e}")))
    }

    fn t5_ids(
        &mut self,
        tokenizer: &crate::model::T5Tokenizer,
        length: usize,
    ) -> Result<Array2<i64>> {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(self.texts.len() * length);
        for text in self.texts {
            ids.extend(tokenizer.encode(text, length)?);
        }
        self.timings.tokenize += started.elapsed();
        Array2::from_shape_vec((self.texts.len(), length), ids)
            .map_err(|e| Error::InvalidArg(format!("tokenizer output: {e}")))
    }

    /// The penultimate hidden states and the projected `text_embeds` of a CLIP encoder, as
    /// SDXL and SD3 take them (`hidden_states[-2]`).
    fn clip(
        &mut self,
        tokenizer: &crate::model::Tokenizer,
        encoder: &TextEncoder,
        family: Family,
    ) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
        let penultimate = encoder.penultimate.as_deref().ok_or_else(|| {
            Error::model(
                encoder.graph.path(),
                format!(
                    "has no hidden_states.N outputs; {family} conditions on the penultimate layer"
                ),
            )
        })?;
        let ids = self.clip_ids(tokenizer)?;
        let mut names = vec![penultimate];
        if encoder.has_text_embeds {
            names.push("text_embeds");
        }
        let mut outputs = self.outputs(encoder, ids, &names)?.into_iter();
        let hidden = outputs
            .next()
            .ok_or_else(|| Error::internal("text_encoder", "no output"))?;
        Ok((hidden, outputs.next()))
    }

    fn outputs(
        &mut self,
        encoder: &TextEncoder,
        ids: Array2<i64>,
        names: &[&str],
    ) -> Result<Vec<ArrayD<f32>>> {
        let started = Instant::now();
        let ids = ids.into_dyn();
        let ids32;
        let input = match encoder.ids_dtype {
            ElementType::I32 => {
                ids32 = ids.mapv(|v| v as i32);
                Input::I32(ids32.view())
            }
            _ => Input::I64(ids.view()),
        };
        let weights = self
            .adapters
            .and_then(|a| a.for_graph(&encoder.graph))
            .map(|set| &**set);
        let (outputs, ort) =
            encoder
                .graph
                .run_outputs_with(&[("input_ids", input)], weights, names)?;
        self.timings.ort_run += ort;
        self.timings.text_encode += started.elapsed();
        Ok(outputs)
    }
}

fn one(mut outputs: Vec<ArrayD<f32>>) -> Result<ArrayD<f32>> {
    outputs
        .pop()
        .ok_or_else(|| Error::internal("text_encoder", "no output"))
}

fn join(parts: &[ArrayD<f32>], axis: usize) -> Result<ArrayD<f32>> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(axis), &views).map_err(|e| Error::internal("text_encoder", e))
}

fn second(model: &LoadedModel) -> Result<(&crate::model::Tokenizer, &TextEncoder)> {
    model
        .second_encoder
        .as_ref()
        .map(|(t, e)| (t, e))
        .ok_or_else(|| Error::model(model.package.component("text_encoder_2"), "is missing"))
}

/// SD3's `joint_attention_dim`: the width of the T5 embeddings its transformer expects.
fn joint_width(model: &LoadedModel) -> Result<usize> {
    model
        .package
        .denoiser_config
        .get("joint_attention_dim")
        .and_then(serde_json::Value::as_u64)
        .map(|d| d as usize)
        .ok_or_else(|| {
            Error::model(
                model.package.component("transformer"),
                "config.json has no joint_attention_dim (needed to run without text_encoder_3)",
            )
        })
}

/// SDXL's `time_ids` rows, as diffusers' `_get_add_time_ids` fills them when none are given:
/// original size (h, w), crop top-left (0, 0), then the target size (h, w), or, on refiners
/// (5 values), the aesthetic score (the negative score for unconditional rows).
pub(crate) fn time_ids(
    width: usize,
    (w, h): (u32, u32),
    guidance: Guidance,
    request: &Request,
) -> Result<ArrayD<f32>> {
    let (h, w) = (h as f32, w as f32);
    let row = |text: Text| match (width, text) {
        (6, _) => Ok(vec![h, w, 0.0, 0.0, h, w]),
        (5, Text::Prompt) => Ok(vec![h, w, 0.0, 0.0, request.aesthetic_score]),
        (5, Text::Negative) => Ok(vec![h, w, 0.0, 0.0, request.negative_aesthetic_score]),
        _ => Err(Error::Unsupported(format!(
            "UNet time_ids of width {width} (SDXL takes 6, its refiner 5)"
        ))),
    };
    let n = request.num_images;
    let mut rows = Vec::with_capacity(guidance.groups() * n * width);
    for text in guidance.texts() {
        let values = row(*text)?;
        for _ in 0..n {
            rows.extend_from_slice(&values);
        }
    }
    Array2::from_shape_vec((guidance.groups() * n, width), rows)
        .map(|a| a.into_dyn())
        .map_err(|e| Error::InvalidArg(format!("time_ids: {e}")))
}
