//! What the alpha-based DDIM family (DDIM, PNDM, LCM) shares: integer training timesteps
//! indexing a float32 alphas-cumprod table.
use ndarray::{ArrayViewD, ArrayViewMutD};

use super::common::{
    check_step_args, mix_noise, np_arange, np_linspace, BetaDefaults, NoiseSchedule, Spacing,
};
use super::config::Config;
use super::SchedulerError;

/// Integer training timesteps for the DDIM/PNDM family, newest (noisiest) first.
pub(crate) fn ddim_timesteps(
    scheduler: &'static str,
    spacing: Spacing,
    n_train: usize,
    steps: usize,
    offset: i64,
) -> Result<Vec<i64>, SchedulerError> {
    let ts: Vec<i64> = match spacing {
        Spacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps, true)
            .iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        Spacing::Leading => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange(n_train as f64, 0.0, -ratio)
                .iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    };
    check_train_range(scheduler, &ts, n_train)?;
    Ok(ts)
}

/// diffusers would index `alphas_cumprod` out of range (or wrap around) here.
pub(crate) fn check_train_range(
    scheduler: &'static str,
    ts: &[i64],
    n_train: usize,
) -> Result<(), SchedulerError> {
    match ts.iter().find(|&&t| t < 0 || t >= n_train as i64) {
        Some(t) => Err(SchedulerError::InvalidSchedule {
            scheduler,
            reason: format!("timestep {t} falls outside 0..{n_train} (check steps_offset)"),
        }),
        None => Ok(()),
    }
}

/// The training alphas and the current integer schedule of one DDIM-family scheduler.
pub(crate) struct AlphaSchedule {
    alphas_cumprod: Vec<f32>,
    /// Stands in for alphas before the first training step (`set_alpha_to_one`).
    final_alpha_cumprod: f32,
    timesteps_i: Vec<i64>,
    /// The same timesteps as float32, for `Scheduler::timesteps`.
    timesteps: Vec<f32>,
}

impl AlphaSchedule {
    /// The beta keys and `set_alpha_to_one`, whose default differs between classes.
    pub(crate) fn read(
        cfg: &Config,
        betas: BetaDefaults,
        set_alpha_to_one: bool,
    ) -> Result<Self, SchedulerError> {
        let alphas_cumprod = NoiseSchedule::read(cfg, betas)?.alphas_cumprod;
        Ok(Self {
            final_alpha_cumprod: if cfg.bool("set_alpha_to_one", set_alpha_to_one)? {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            timesteps_i: Vec::new(),
            timesteps: Vec::new(),
        })
    }

    pub(crate) fn n_train(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub(crate) fn set_timesteps(&mut self, ts: Vec<i64>) {
        self.timesteps = ts.iter().map(|&t| t as f32).collect();
        self.timesteps_i = ts;
    }

    pub(crate) fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    pub(crate) fn timesteps_i(&self) -> &[i64] {
        &self.timesteps_i
    }

    /// `step`'s argument checks, then the timestep of `step_index`.
    pub(crate) fn step_timestep(
        &self,
        scheduler: &'static str,
        step_index: usize,
        model_output: &ArrayViewD<f32>,
        sample: &ArrayViewMutD<f32>,
    ) -> Result<i64, SchedulerError> {
        let len = self.timesteps_i.len();
        check_step_args(scheduler, step_index, len, model_output, sample)?;
        Ok(self.timesteps_i[step_index])
    }

    /// alphas_cumprod[t], or `final_alpha_cumprod` where diffusers' `prev_t` runs past 0.
    pub(crate) fn alpha_at(&self, t: i64) -> f32 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
            .unwrap_or(self.final_alpha_cumprod)
    }

    /// sqrt(a) * x + sqrt(1 - a) * noise, the DDPM forward process at step `step_index`.
    pub(crate) fn add_noise(
        &self,
        original: ArrayViewMutD<f32>,
        noise: ArrayViewD<f32>,
        step_index: usize,
    ) {
        if let Some(&t) = self.timesteps_i.get(step_index) {
            let a = self.alpha_at(t);
            mix_noise(original, noise, a.sqrt(), (1.0 - a).sqrt());
        }
    }
}
