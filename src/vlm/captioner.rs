//! optimum's vision-encoder-decoder captioners (e.g. ViT + GPT-2): the encoder reads the image
//! once, the merged decoder attends to it at every step.
use std::path::Path;
use std::time::Duration;

use ndarray::{Array2, Array4};
use ort::value::DynValue;

use super::decoder::{value, CacheState, Decoder, DecoderNames};
use super::generate::Decoding;
use super::processor::VitImageProcessor;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::runtime::{ElementType, Graph, Input, Runtime};

/// A loaded encoder-decoder captioner.
pub(crate) struct Captioner {
    encoder: Graph,
    decoder: Decoder,
    processor: VitImageProcessor,
    /// The id generation starts from (`decoder_start_token_id`).
    start_id: i64,
    context_length: usize,
}

impl Captioner {
    pub fn load(
        runtime: &Runtime,
        encoder: &Path,
        decoder: &Path,
        processor: VitImageProcessor,
        start_id: i64,
        context_length: usize,
    ) -> Result<Captioner> {
        let encoder = runtime.load_graph("encoder", encoder)?;
        for (name, found) in [
            ("pixel_values", encoder.input("pixel_values").is_some()),
            (
                "last_hidden_state",
                encoder.output("last_hidden_state").is_some(),
            ),
        ] {
            if !found {
                return Err(Error::model(
                    encoder.path(),
                    format!(
                        "encoder graph lacks `{name}`: it has {}",
                        encoder.signature()
                    ),
                ));
            }
        }
        if encoder.input("pixel_values").map(|i| i.dtype) == Some(ElementType::F16) {
            return Err(Error::Unsupported(format!(
                "{}: pixel_values is float16; the VLM runtime runs float32 graphs",
                encoder.path().display()
            )));
        }
        let graph = runtime.load_graph("decoder", decoder)?;
        for name in ["input_ids", "encoder_hidden_states"] {
            if graph.input(name).is_none() {
                return Err(Error::model(
                    graph.path(),
                    format!(
                        "decoder graph lacks input `{name}`: it has {}",
                        graph.signature()
                    ),
                ));
            }
        }
        let decoder = Decoder::new(graph, &DecoderNames::default(), None, false)?;
        Ok(Captioner {
            encoder,
            decoder,
            processor,
            start_id,
            context_length,
        })
    }

    pub fn graphs(&self) -> Vec<&Graph> {
        vec![&self.encoder, self.decoder.graph()]
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn start_id(&self) -> i64 {
        self.start_id
    }

    /// Encodes `image`: the encoder states every decoder step attends to.
    pub fn encode(&self, image: &Image) -> Result<(Array4<f32>, ndarray::ArrayD<f32>, Duration)> {
        let pixels = self.processor.process(image)?;
        let (states, elapsed) = self.encoder.run(
            &[("pixel_values", Input::F32(pixels.view().into_dyn()))],
            "last_hidden_state",
        )?;
        Ok((pixels, states, elapsed))
    }

    /// Runs the decoder over `prefix` (the start id and any caption beginning).
    pub fn start(
        &self,
        states: ndarray::ArrayD<f32>,
        prefix: &[i64],
        capacity: usize,
    ) -> Result<CaptionState<'_>> {
        let mut cache = self.decoder.start(capacity)?;
        let encoder_states = value("decoder", states)?;
        let (logits, ort) = self.step(&mut cache, &encoder_states, prefix)?;
        Ok(CaptionState {
            model: self,
            cache,
            encoder_states,
            logits,
            ort,
        })
    }

    fn step(
        &self,
        cache: &mut CacheState,
        encoder_states: &DynValue,
        ids: &[i64],
    ) -> Result<(Vec<f32>, Duration)> {
        let ids = Array2::from_shape_vec((1, ids.len()), ids.to_vec())
            .map_err(|e| Error::internal("decoder", e))?;
        let new = ids.len();
        let inputs = vec![
            ("input_ids", value("decoder", ids)?.into()),
            ("encoder_hidden_states", encoder_states.into()),
        ];
        self.decoder.run(cache, inputs, new)
    }
}

/// One caption's decoding state.
pub(crate) struct CaptionState<'m> {
    model: &'m Captioner,
    cache: CacheState,
    encoder_states: DynValue,
    logits: Vec<f32>,
    pub ort: Duration,
}

impl Decoding for CaptionState<'_> {
    fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.logits
    }

    fn advance(&mut self, token: i64) -> Result<()> {
        let (logits, ort) = self
            .model
            .step(&mut self.cache, &self.encoder_states, &[token])?;
        self.logits = logits;
        self.ort += ort;
        Ok(())
    }

    fn has_room(&self) -> bool {
        self.cache.len() < self.cache.capacity()
    }
}
