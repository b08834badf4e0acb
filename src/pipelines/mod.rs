//! Pipelines compose components into a diffusion run; the only place that knows the order of one.
mod conditioning;
mod denoise;
pub mod flux;
mod guidance;
mod inputs;
mod loras;
mod pipeline;
mod prepare;
mod resample;
mod vae;

pub use guidance::apply_guidance;
pub use pipeline::{Defaults, Pipeline};
pub use resample::resize;
