//! Diffusion noise schedulers with the numerics of Hugging Face diffusers.
//!
//! Pure array math over `ndarray`: each scheduler reads a diffusers
//! `scheduler_config.json` (unknown keys ignored, missing keys take that class's diffusers
//! default) and reproduces diffusers' float32/float64 rounding closely enough that a
//! denoising loop matches the Python reference to ~1e-6.
mod alphas;
mod common;
mod config;
mod ddim;
mod dpm;
mod euler;
mod euler_ancestral;
mod flow_match;
mod heun;
mod lcm;
mod pndm;
mod sigmas;

use ndarray::{ArrayViewD, ArrayViewMutD};
use serde_json::Value;

pub use ddim::DdimScheduler;
pub use dpm::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralScheduler;
pub use flow_match::FlowMatchEulerScheduler;
pub use heun::HeunDiscreteScheduler;
pub use lcm::LcmScheduler;
pub use pndm::PndmScheduler;

use crate::rng::NoiseSource;

/// Everything that can go wrong building or driving a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown scheduler {name:?}; known schedulers: {known}")]
    UnknownScheduler { name: String, known: String },
    #[error("no scheduler name given and the scheduler config has no \"_class_name\"")]
    MissingName,
    #[error("{scheduler}: unsupported {key} = {value} (supported: {supported})")]
    UnsupportedConfig {
        scheduler: &'static str,
        key: String,
        value: String,
        supported: String,
    },
    #[error("{scheduler}: invalid config value {key} = {value}, expected {expected}")]
    InvalidConfig {
        scheduler: &'static str,
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{scheduler}: num_inference_steps must be between 1 and {max}, got {steps}")]
    InvalidSteps {
        scheduler: &'static str,
        steps: usize,
        max: usize,
    },
    #[error("{scheduler}: {reason}")]
    InvalidSchedule {
        scheduler: &'static str,
        reason: String,
    },
    #[error("{scheduler}: set_timesteps must be called before step")]
    NotInitialized { scheduler: &'static str },
    #[error("{scheduler}: step_index {step_index} is out of range for {len} timesteps")]
    StepIndexOutOfRange {
        scheduler: &'static str,
        step_index: usize,
        len: usize,
    },
    #[error(
        "{scheduler}: model_output shape {model_output:?} does not match sample shape {sample:?}"
    )]
    ShapeMismatch {
        scheduler: &'static str,
        model_output: Vec<usize>,
        sample: Vec<usize>,
    },
    #[error("{scheduler}: {what} is not supported")]
    Unsupported {
        scheduler: &'static str,
        what: &'static str,
    },
}

/// A diffusion sampler. Call `set_timesteps`, then for each `i` in `0..timesteps().len()`:
/// `scale_model_input(sample, i)`, run the model at `timesteps()[i]`, `step(.., i, ..)`.
pub trait Scheduler: Send {
    /// Builds the inference schedule; resets any multistep history.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError>;

    /// One entry per model call (Heun and PNDM repeat entries, as diffusers does).
    fn timesteps(&self) -> &[f32];

    /// Factor for the initial Gaussian latents: 1, except for the Euler-family samplers,
    /// which start at their largest sigma.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Scales the model input in place for step `step_index`: the identity, except for the
    /// Euler-family samplers. An out-of-range index leaves the sample unchanged.
    fn scale_model_input(&self, sample: ArrayViewMutD<f32>, step_index: usize) {
        let _ = (sample, step_index);
    }

    /// Advances `sample` in place to the previous (less noisy) sample. Stochastic
    /// schedulers draw from `noise` exactly when diffusers calls `randn_tensor`.
    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError>;

    /// Forward-diffuses `original` in place to the noise level of step `step_index`
    /// (img2img). An out-of-range index leaves it unchanged.
    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize);

    /// The short scheduler name (one of [`names`]).
    fn name(&self) -> &'static str;

    /// Model calls per inference step (diffusers' `order`): 2 for Heun, else 1. img2img skips
    /// `t_start * order` entries of [`Scheduler::timesteps`].
    fn order(&self) -> usize {
        1
    }

    /// `set_timesteps` with a resolution-dependent shift `mu` (FLUX/SD3 dynamic shifting).
    /// Schedulers without dynamic shifting ignore `mu`, like diffusers.
    fn set_timesteps_with_mu(
        &mut self,
        num_inference_steps: usize,
        mu: f64,
    ) -> Result<(), SchedulerError> {
        let _ = mu;
        self.set_timesteps(num_inference_steps)
    }

    /// A caller-chosen sigma schedule (FLUX passes `linspace(1, 1/n, n)`), optionally
    /// dynamically shifted by `mu`. Only flow matching supports this.
    fn set_custom_sigmas(&mut self, sigmas: &[f64], mu: Option<f64>) -> Result<(), SchedulerError> {
        let _ = (sigmas, mu);
        Err(SchedulerError::Unsupported {
            scheduler: self.name(),
            what: "a custom sigma schedule",
        })
    }
}

const NAMES: &[&str] = &[
    "ddim",
    "pndm",
    "euler",
    "euler_a",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "heun",
    "lcm",
    "flow_match_euler",
];

/// diffusers class names accepted as aliases, with the short name each maps to.
const CLASS_ALIASES: &[(&str, &str)] = &[
    ("DDIMScheduler", "ddim"),
    ("PNDMScheduler", "pndm"),
    ("EulerDiscreteScheduler", "euler"),
    ("EulerAncestralDiscreteScheduler", "euler_a"),
    ("DPMSolverMultistepScheduler", "dpmpp_2m"),
    ("HeunDiscreteScheduler", "heun"),
    ("LCMScheduler", "lcm"),
    ("FlowMatchEulerDiscreteScheduler", "flow_match_euler"),
];

/// The accepted short scheduler names.
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// Builds a scheduler by name (short name or diffusers class name, case-insensitive), or
/// from `config["_class_name"]` when `name` is `None`. `config` is the package's
/// `scheduler_config.json` merged with request overrides; DDIM also reads a non-diffusers
/// `"eta"` key (default 0).
pub fn create(name: Option<&str>, config: &Value) -> Result<Box<dyn Scheduler>, SchedulerError> {
    let name = match name {
        Some(n) => n,
        None => config
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or(SchedulerError::MissingName)?,
    };
    let short = NAMES
        .iter()
        .copied()
        .find(|n| n.eq_ignore_ascii_case(name))
        .or_else(|| {
            CLASS_ALIASES
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(name))
                .map(|&(_, s)| s)
        })
        .ok_or_else(|| unknown(name))?;
    Ok(match short {
        "ddim" => Box::new(DdimScheduler::from_config(config)?),
        "pndm" => Box::new(PndmScheduler::from_config(config)?),
        "euler" => Box::new(EulerDiscreteScheduler::from_config(config)?),
        "euler_a" => Box::new(EulerAncestralScheduler::from_config(config)?),
        "dpmpp_2m" => Box::new(DpmSolverMultistepScheduler::from_config(config)?),
        "dpmpp_2m_karras" => Box::new(DpmSolverMultistepScheduler::from_config_karras(config)?),
        "heun" => Box::new(HeunDiscreteScheduler::from_config(config)?),
        "lcm" => Box::new(LcmScheduler::from_config(config)?),
        "flow_match_euler" => Box::new(FlowMatchEulerScheduler::from_config(config)?),
        _ => return Err(unknown(name)),
    })
}

fn unknown(name: &str) -> SchedulerError {
    let classes: Vec<&str> = CLASS_ALIASES.iter().map(|(c, _)| *c).collect();
    SchedulerError::UnknownScheduler {
        name: name.to_string(),
        known: format!(
            "{} (or the diffusers class names {})",
            NAMES.join(", "),
            classes.join(", ")
        ),
    }
}
