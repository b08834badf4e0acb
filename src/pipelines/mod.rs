//! Pipelines compose components into a diffusion run; the only place that knows the order of one.
mod request;
mod txt2img;

pub use request::{
    prompt_from_bytes, CancelToken, Progress, Request, MAX_IMAGES_PER_REQUEST, MAX_STEPS,
};
pub use txt2img::{apply_guidance, Defaults, Output, Pipeline, Timings};
