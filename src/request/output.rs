//! What a generator returns: images, the values that were used, and where the time went.
use std::time::Duration;

use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, Value};

use crate::image::Image;

/// Where the time of one request went. `ort_run` is the sum of all ONNX Runtime run calls.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub tokenize: Duration,
    pub text_encode: Duration,
    pub denoise_steps: Vec<Duration>,
    pub decode: Duration,
    pub ort_run: Duration,
    pub total: Duration,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Output {
    pub images: Vec<Image>,
    /// Final latents before VAE decoding, [num_images, channels, h/f, w/f]; empty (shape [0]) from
    /// remote generators, which have none.
    pub latents: ArrayD<f32>,
    /// The seed actually used (drawn from the clock when the request had none).
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// Canonical scheduler name that ran.
    pub scheduler: String,
    pub timings: Timings,
    /// What the generator reports besides the images: a remote service's `model` and
    /// `revised_prompts`, the request fields it `ignored` (best effort). Empty for local pipelines.
    pub metadata: Map<String, Value>,
}

impl Output {
    /// The output of a generator that returns images alone (a remote service): no latents, seed 0
    /// and no scheduler (neither was used), the size of the first image, `total` as its only
    /// timing.
    pub fn from_images(
        images: Vec<Image>,
        metadata: Map<String, Value>,
        total: Duration,
    ) -> Output {
        let (width, height) = images.first().map_or((0, 0), |i| (i.width, i.height));
        Output {
            images,
            latents: ArrayD::zeros(IxDyn(&[0])),
            seed: 0,
            width,
            height,
            scheduler: String::new(),
            timings: Timings {
                total,
                ..Timings::default()
            },
            metadata,
        }
    }
}
