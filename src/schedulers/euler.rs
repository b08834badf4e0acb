//! Euler sampler of Karras et al. (2022), diffusers' `EulerDiscreteScheduler`, plus the
//! sigma-schedule construction it shares with the ancestral and Heun variants.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_index, check_shapes, check_steps, discrete_timesteps_f32, exponential_sigmas, init_sigma,
    karras_sigmas, np_interp, np_log_f32, sigma_to_t, BetaDefaults, NoiseSchedule, Prediction,
    Spacing,
};
use super::config::Config;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "euler";

/// How inference sigmas are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SigmaRamp {
    /// Interpolated at the spaced timesteps.
    Interpolated,
    Karras,
    Exponential,
}

impl SigmaRamp {
    pub(crate) fn read(cfg: &Config) -> Result<Self, SchedulerError> {
        cfg.require_false("use_beta_sigmas")?;
        let karras = cfg.bool("use_karras_sigmas", false)?;
        let exponential = cfg.bool("use_exponential_sigmas", false)?;
        match (karras, exponential) {
            (true, true) => Err(cfg.unsupported(
                "use_karras_sigmas",
                "true together with use_exponential_sigmas = true",
                "at most one sigma ramp",
            )),
            (true, false) => Ok(SigmaRamp::Karras),
            (false, true) => Ok(SigmaRamp::Exponential),
            _ => Ok(SigmaRamp::Interpolated),
        }
    }
}

/// Inputs shared by the sigma-based schedulers' `set_timesteps`.
pub(crate) struct SigmaParams<'a> {
    pub(crate) train_sigmas: &'a [f32],
    pub(crate) spacing: Spacing,
    pub(crate) steps_offset: i64,
    pub(crate) ramp: SigmaRamp,
    pub(crate) sigma_min: Option<f64>,
    pub(crate) sigma_max: Option<f64>,
}

/// Float32 timesteps and float64 sigmas (without the final entry), the way the
/// Euler/Heun classes build them: numpy interpolation, then an optional ramp whose
/// timesteps are mapped back through log-sigma interpolation.
pub(crate) fn sigma_schedule(p: &SigmaParams, steps: usize) -> (Vec<f32>, Vec<f64>) {
    let n_train = p.train_sigmas.len();
    let ts = discrete_timesteps_f32(p.spacing, n_train, steps, p.steps_offset);
    let sig: Vec<f64> = ts
        .iter()
        .map(|&t| np_interp(t as f64, p.train_sigmas))
        .collect();
    if p.ramp == SigmaRamp::Interpolated || sig.is_empty() {
        return (ts, sig);
    }
    let smin = p.sigma_min.unwrap_or(sig[sig.len() - 1]);
    let smax = p.sigma_max.unwrap_or(sig[0]);
    let sig = match p.ramp {
        SigmaRamp::Karras => karras_sigmas(smin, smax, steps),
        _ => exponential_sigmas(smin, smax, steps),
    };
    let log_sigmas: Vec<f32> = p.train_sigmas.iter().map(|&s| np_log_f32(s)).collect();
    let ts = sig
        .iter()
        .map(|&s| sigma_to_t(s, &log_sigmas) as f32)
        .collect();
    (ts, sig)
}

/// Euler's x0 estimate from the model output at noise level `sigma`.
#[inline]
pub(crate) fn predict_x0(pred: Prediction, s: f32, m: f32, sigma: f32) -> f32 {
    match pred {
        Prediction::Epsilon => s - sigma * m,
        Prediction::Velocity => {
            m * (-sigma / (sigma * sigma + 1.0).sqrt()) + s / (sigma * sigma + 1.0)
        }
        Prediction::Sample => m,
    }
}

/// x / sqrt(sigma^2 + 1), the k-diffusion input scaling.
pub(crate) fn scale_by_sigma(mut sample: ArrayViewMutD<f32>, sigma: Option<f32>) {
    if let Some(sigma) = sigma {
        let d = (sigma * sigma + 1.0).sqrt();
        sample.mapv_inplace(|x| x / d);
    }
}

/// x + sigma * noise, the variance-exploding forward process.
pub(crate) fn add_noise_sigma(
    mut original: ArrayViewMutD<f32>,
    noise: ArrayViewD<f32>,
    sigma: Option<f32>,
) {
    if let (Some(sigma), true) = (sigma, original.shape() == noise.shape()) {
        Zip::from(&mut original)
            .and(&noise)
            .for_each(|x, &n| *x += n * sigma);
    }
}

/// Deterministic Euler steps in sigma space (no churn).
pub struct EulerDiscreteScheduler {
    train_sigmas: Vec<f32>,
    first_alpha: f32,
    spacing: Spacing,
    steps_offset: i64,
    prediction: Prediction,
    ramp: SigmaRamp,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigma_min: bool,
    init_sigma_at_rest: f32,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

impl EulerDiscreteScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "EulerDiscreteScheduler")?;
        let mut sched = NoiseSchedule::read(
            &cfg,
            BetaDefaults {
                beta_start: 0.0001,
                beta_end: 0.02,
                beta_schedule: "linear",
                allow_exp: false,
                zero_snr_key: true,
            },
        )?;
        sched.pin_terminal_alpha();
        let prediction = Prediction::read(
            &cfg,
            &["epsilon", "v_prediction", "sample", "original_sample"],
        )?;
        cfg.choice("interpolation_type", "linear", &["linear"])?;
        if cfg.str("timestep_type", "discrete")? == "continuous"
            && prediction == Prediction::Velocity
        {
            return Err(cfg.unsupported(
                "timestep_type",
                "\"continuous\" with v_prediction",
                "\"discrete\"",
            ));
        }
        let final_type = cfg.choice("final_sigmas_type", "zero", &["zero", "sigma_min"])?;
        let spacing = Spacing::read(&cfg, "linspace")?;
        let train_sigmas = sched.sigmas();
        Ok(Self {
            first_alpha: sched.alphas_cumprod[0],
            spacing,
            steps_offset: cfg.i64("steps_offset", 0)?,
            prediction,
            ramp: SigmaRamp::read(&cfg)?,
            sigma_min: cfg.f64_opt("sigma_min")?,
            sigma_max: cfg.f64_opt("sigma_max")?,
            final_sigma_min: final_type == "sigma_min",
            init_sigma_at_rest: init_sigma(&train_sigmas, spacing),
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    /// Sigmas per step plus the final one (0, or sigma_min with `final_sigmas_type`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, num_inference_steps, self.train_sigmas.len())?;
        let params = SigmaParams {
            train_sigmas: &self.train_sigmas,
            spacing: self.spacing,
            steps_offset: self.steps_offset,
            ramp: self.ramp,
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
        };
        let (ts, sig) = sigma_schedule(&params, num_inference_steps);
        let last = if self.final_sigma_min {
            ((1.0 - self.first_alpha) / self.first_alpha).sqrt()
        } else {
            0.0
        };
        self.sigmas = sig
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(last))
            .collect();
        self.timesteps = ts;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        if self.sigmas.is_empty() {
            self.init_sigma_at_rest
        } else {
            init_sigma(&self.sigmas, self.spacing)
        }
    }

    fn scale_model_input(&self, sample: ArrayViewMutD<f32>, step_index: usize) {
        scale_by_sigma(sample, self.sigmas.get(step_index).copied());
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_index(NAME, step_index, self.timesteps.len())?;
        check_shapes(NAME, &model_output, &sample)?;
        let sigma = self.sigmas[step_index];
        let dt = self.sigmas[step_index + 1] - sigma;
        let pred = self.prediction;
        Zip::from(&mut sample).and(&model_output).for_each(|s, &m| {
            let x0 = predict_x0(pred, *s, m, sigma);
            let derivative = (*s - x0) / sigma;
            *s += derivative * dt;
        });
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        add_noise_sigma(original, noise, self.sigmas.get(step_index).copied());
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
