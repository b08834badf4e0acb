//! `--unet-only`: the denoising loop's UNet runs alone, through `Graph::run` or an IO binding, so the
//! two can be compared step for step without the rest of the pipeline.
use std::time::{Duration, Instant};

use diffgentor::model::TimestepShape;
use diffgentor::rng::{self, RngMode};
use diffgentor::runtime::{ElementType, Graph, Input};
use diffgentor::{Error, Pipeline};
use ndarray::{ArrayD, Zip};

use crate::report::Sample;

/// One request's worth of UNet steps on fixed text embeddings.
pub struct UnetLoop<'p> {
    graph: &'p Graph,
    sample_shape: Vec<usize>,
    embeddings: ArrayD<f32>,
    timestep: (ElementType, Vec<usize>),
    images: usize,
    steps: usize,
    io_binding: bool,
}

impl<'p> UnetLoop<'p> {
    pub fn new(
        pipeline: &'p Pipeline,
        width: u32,
        height: u32,
        images: usize,
        steps: usize,
        guided: bool,
        io_binding: bool,
    ) -> diffgentor::Result<UnetLoop<'p>> {
        let model = pipeline.model();
        let factor = model.package.vae_scale_factor;
        let batch = if guided { 2 * images } else { images };
        let sample_shape = vec![
            batch,
            model.package.latent_channels(),
            (height / factor) as usize,
            (width / factor) as usize,
        ];
        let unet = model
            .denoiser
            .unet()
            .ok_or_else(|| Error::Unsupported("--unet-only needs a package with a UNet".into()))?;
        let graph = &unet.graph;
        let hidden = graph
            .input("encoder_hidden_states")
            .ok_or_else(|| Error::InvalidArg("the UNet has no encoder_hidden_states".into()))?;
        let fixed = |dim: i64, fallback: usize| usize::try_from(dim).unwrap_or(fallback);
        let dim = match hidden.shape.get(2) {
            Some(&d) if d > 0 => d as usize,
            _ => {
                return Err(Error::InvalidArg(format!(
                    "--unet-only needs a fixed embedding width; the UNet has {hidden}"
                )))
            }
        };
        let seq = fixed(
            hidden.shape.get(1).copied().unwrap_or(-1),
            model
                .text_encoder
                .as_ref()
                .map_or(77, |(tokenizer, _)| tokenizer.max_length()),
        );
        let embeddings = rng::generator(RngMode::Fast, 7).randn(&[batch, seq, dim]);
        let kind = unet.timestep;
        let timestep_shape = match kind.shape {
            TimestepShape::Scalar => vec![],
            TimestepShape::Single => vec![1],
            TimestepShape::Batch => vec![batch],
        };
        Ok(UnetLoop {
            graph,
            sample_shape,
            embeddings,
            timestep: (kind.dtype, timestep_shape),
            images,
            steps,
            io_binding,
        })
    }

    /// Runs the steps; the next sample mixes in the last output, as a scheduler step would.
    pub fn run(&self, seed: u64) -> diffgentor::Result<Sample> {
        let begun = Instant::now();
        let mut sample = rng::generator(RngMode::Fast, seed).randn(&self.sample_shape);
        let mut steps = Vec::with_capacity(self.steps);
        let mut ort = Duration::ZERO;
        let mut binding = if self.io_binding {
            let mut binding = self.graph.binding("out_sample", &self.sample_shape)?;
            binding.fix("encoder_hidden_states", Input::F32(self.embeddings.view()))?;
            Some(binding)
        } else {
            None
        };
        for i in 0..self.steps {
            let started = Instant::now();
            let t = 999.0 - (i * 1000 / self.steps.max(1)) as f32;
            let (t32, t64);
            let timestep = match self.timestep.0 {
                ElementType::I64 => {
                    t64 = ArrayD::from_elem(self.timestep.1.clone(), t as i64);
                    Input::I64(t64.view())
                }
                _ => {
                    t32 = ArrayD::from_elem(self.timestep.1.clone(), t);
                    Input::F32(t32.view())
                }
            };
            let mix = |s: &mut f32, &o: &f32| *s = 0.9 * *s + 0.1 * o;
            match &mut binding {
                Some(binding) => {
                    let (output, took) = binding.run(&[
                        ("sample", Input::F32(sample.view())),
                        ("timestep", timestep),
                    ])?;
                    Zip::from(&mut sample).and(&output).for_each(mix);
                    ort += took;
                }
                None => {
                    let (output, took) = self.graph.run(
                        &[
                            ("sample", Input::F32(sample.view())),
                            ("timestep", timestep),
                            ("encoder_hidden_states", Input::F32(self.embeddings.view())),
                        ],
                        "out_sample",
                    )?;
                    Zip::from(&mut sample).and(&output).for_each(mix);
                    ort += took;
                }
            }
            steps.push(started.elapsed());
        }
        Ok(Sample::from_steps(begun.elapsed(), self.images, steps, ort))
    }
}
