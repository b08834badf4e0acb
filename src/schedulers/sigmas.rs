//! What the sigma-space samplers share: the schedule of the Euler family (Euler, ancestral
//! Euler, Heun) and the Karras/exponential sigma ramps DPM-Solver uses as well.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};

use super::common::{
    check_step_args, check_steps, mix_noise, np_arange, np_interp, np_linspace, np_log_f32,
    BetaDefaults, NoiseSchedule, Prediction, Spacing,
};
use super::config::Config;
use super::SchedulerError;

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

/// A Karras or exponential ramp (`ramp` is not `Interpolated`) from `smin` to `smax`, in
/// float64, with each sigma's fractional training step in `train_sigmas`.
pub(crate) fn ramp_sigmas(
    ramp: SigmaRamp,
    smin: f64,
    smax: f64,
    steps: usize,
    train_sigmas: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let sig = match ramp {
        SigmaRamp::Karras => karras_sigmas(smin, smax, steps),
        _ => exponential_sigmas(smin, smax, steps),
    };
    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|&s| np_log_f32(s)).collect();
    let ts = sig.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
    (sig, ts)
}

/// Float64 sigmas cast to float32, then the final sigma appended, as every class stores them.
pub(crate) fn with_final_sigma(sig: &[f64], last: f32) -> Vec<f32> {
    sig.iter()
        .map(|&s| s as f32)
        .chain(std::iter::once(last))
        .collect()
}

/// Training sigmas, config and current schedule of an Euler-family scheduler.
pub(crate) struct SigmaSchedule {
    pub(crate) train_sigmas: Vec<f32>,
    spacing: Spacing,
    steps_offset: i64,
    ramp: SigmaRamp,
    /// Ramp bounds; `None` spans the interpolated sigmas.
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    pub(crate) timesteps: Vec<f32>,
    /// One sigma per model call plus the final one.
    pub(crate) sigmas: Vec<f32>,
}

impl SigmaSchedule {
    /// The beta keys, `timestep_spacing` and `steps_offset`; the ramp and its bounds are
    /// read by each class, since not every class has those keys.
    pub(crate) fn read(
        cfg: &Config,
        betas: BetaDefaults,
        ramp: SigmaRamp,
        sigma_min: Option<f64>,
        sigma_max: Option<f64>,
    ) -> Result<Self, SchedulerError> {
        let mut sched = NoiseSchedule::read(cfg, betas)?;
        sched.pin_terminal_alpha();
        Ok(Self {
            train_sigmas: sched.sigmas(),
            spacing: Spacing::read(cfg, "linspace")?,
            steps_offset: cfg.i64("steps_offset", 0)?,
            ramp,
            sigma_min,
            sigma_max,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    /// Float32 timesteps and sigmas (ending in `final_sigma`) the way the Euler/Heun classes
    /// build them: numpy interpolation, then an optional ramp whose timesteps are mapped
    /// back through log-sigma interpolation.
    pub(crate) fn set_timesteps(
        &mut self,
        scheduler: &'static str,
        steps: usize,
        final_sigma: f32,
    ) -> Result<(), SchedulerError> {
        let train = &self.train_sigmas;
        check_steps(scheduler, steps, train.len())?;
        let mut ts = discrete_timesteps_f32(self.spacing, train.len(), steps, self.steps_offset);
        let mut sig: Vec<f64> = ts.iter().map(|&t| np_interp(t as f64, train)).collect();
        if self.ramp != SigmaRamp::Interpolated && !sig.is_empty() {
            let smin = self.sigma_min.unwrap_or(sig[sig.len() - 1]);
            let smax = self.sigma_max.unwrap_or(sig[0]);
            let (ramp, ramp_ts) = ramp_sigmas(self.ramp, smin, smax, steps, train);
            ts = ramp_ts.iter().map(|&t| t as f32).collect();
            sig = ramp;
        }
        self.sigmas = with_final_sigma(&sig, final_sigma);
        self.timesteps = ts;
        Ok(())
    }

    /// `step`'s argument checks, then the sigmas at `step_index` and `step_index + 1`.
    pub(crate) fn step_sigmas(
        &self,
        scheduler: &'static str,
        step_index: usize,
        model_output: &ArrayViewD<f32>,
        sample: &ArrayViewMutD<f32>,
    ) -> Result<(f32, f32), SchedulerError> {
        let len = self.timesteps.len();
        check_step_args(scheduler, step_index, len, model_output, sample)?;
        Ok((self.sigmas[step_index], self.sigmas[step_index + 1]))
    }

    /// diffusers' `init_noise_sigma`, from the training sigmas before `set_timesteps`.
    pub(crate) fn init_noise_sigma(&self) -> f32 {
        if self.sigmas.is_empty() {
            init_sigma(&self.train_sigmas, self.spacing)
        } else {
            init_sigma(&self.sigmas, self.spacing)
        }
    }

    /// x / sqrt(sigma^2 + 1), the k-diffusion input scaling.
    pub(crate) fn scale_model_input(&self, mut sample: ArrayViewMutD<f32>, step_index: usize) {
        if let Some(&sigma) = self.sigmas.get(step_index) {
            let d = (sigma * sigma + 1.0).sqrt();
            sample.mapv_inplace(|x| x / d);
        }
    }

    /// x + sigma * noise, the variance-exploding forward process.
    pub(crate) fn add_noise(
        &self,
        original: ArrayViewMutD<f32>,
        noise: ArrayViewD<f32>,
        step_index: usize,
    ) {
        if let Some(&sigma) = self.sigmas.get(step_index) {
            mix_noise(original, noise, 1.0, sigma);
        }
    }
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

/// One Euler move of `sample` by `dt` along the derivative (x - x0) / sigma.
pub(crate) fn euler_update(
    sample: &mut ArrayViewMutD<f32>,
    model_output: &ArrayViewD<f32>,
    pred: Prediction,
    sigma: f32,
    dt: f32,
) {
    Zip::from(sample).and(model_output).for_each(|s, &m| {
        let x0 = predict_x0(pred, *s, m, sigma);
        let derivative = (*s - x0) / sigma;
        *s += derivative * dt;
    });
}

/// diffusers' `_sigma_to_t`: fractional training step of `sigma` by interpolating in
/// log-sigma space. `log_sigmas` is float32 (numpy log of the float32 sigmas).
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// Karras et al. (2022) sigma ramp with rho = 7, in float64.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n, true)
        .iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Log-uniform sigma ramp (`use_exponential_sigmas`), in float64.
fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n, true)
        .iter()
        .map(|x| x.exp())
        .collect()
}

/// Timesteps for the sigma-based (Euler/Heun) schedulers, as float32.
fn discrete_timesteps_f32(spacing: Spacing, n_train: usize, steps: usize, offset: i64) -> Vec<f32> {
    match spacing {
        Spacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps, true)
            .iter()
            .rev()
            .map(|&t| t as f32)
            .collect(),
        Spacing::Leading => {
            let ratio = n_train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f32 + offset as f32)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange(n_train as f64, 0.0, -ratio)
                .iter()
                .map(|t| t.round_ties_even() as f32 - 1.0)
                .collect()
        }
    }
}

/// diffusers' `init_noise_sigma` for sigma-based schedulers: max sigma, or
/// sqrt(max^2 + 1) for "leading" spacing.
fn init_sigma(sigmas: &[f32], spacing: Spacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        Spacing::Leading => (max * max + 1.0).sqrt(),
        _ => max,
    }
}
