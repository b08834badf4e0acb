//! Pipelines compose components into a diffusion run; the only place that knows the order of one.
mod conditioning;
mod denoise;
pub mod flux;
mod guidance;
mod inputs;
mod pipeline;
mod plan;
mod prepare;
mod request;
mod resample;
mod vae;

pub use guidance::apply_guidance;
pub use pipeline::{Defaults, Output, Pipeline, Timings};
pub use plan::{Plan, Stage, MAX_STAGES};
pub use request::{
    check_strength, prompt_from_bytes, CancelToken, Progress, Request, MAX_GUIDANCE_SCALE,
    MAX_IMAGES_PER_REQUEST, MAX_PROMPT_BYTES, MAX_STEPS,
};
pub use resample::{resize, Resample};
