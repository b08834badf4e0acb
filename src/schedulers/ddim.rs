//! DDIM (Song et al. 2020), diffusers' `DDIMScheduler`.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_index, check_shapes, check_steps, clamp, np_arange, np_linspace, BetaDefaults,
    NoiseSchedule, Prediction, Spacing,
};
use super::config::Config;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "ddim";

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

/// sqrt(a) * x + sqrt(1 - a) * noise, the DDPM forward process at one timestep.
pub(crate) fn add_noise_alpha(
    alpha_prod: f32,
    mut original: ArrayViewMutD<f32>,
    noise: ArrayViewD<f32>,
) {
    if original.shape() != noise.shape() {
        return;
    }
    let (sa, sb) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
    Zip::from(&mut original)
        .and(&noise)
        .for_each(|x, &n| *x = sa * *x + sb * n);
}

/// Denoising diffusion implicit models; `eta > 0` adds DDPM-style noise.
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    n_train: usize,
    steps_offset: i64,
    spacing: Spacing,
    prediction: Prediction,
    clip_sample: Option<f32>,
    eta: f32,
    steps: usize,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f32>,
}

impl DdimScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "DDIMScheduler")?;
        let sched = NoiseSchedule::read(
            &cfg,
            BetaDefaults {
                beta_start: 0.0001,
                beta_end: 0.02,
                beta_schedule: "linear",
                allow_exp: false,
                zero_snr_key: true,
            },
        )?;
        cfg.require_false("thresholding")?;
        let ac = sched.alphas_cumprod;
        let clip = cfg.bool("clip_sample", true)?;
        let clip_range = cfg.f64("clip_sample_range", 1.0)? as f32;
        Ok(Self {
            final_alpha_cumprod: if cfg.bool("set_alpha_to_one", true)? {
                1.0
            } else {
                ac[0]
            },
            n_train: ac.len(),
            alphas_cumprod: ac,
            steps_offset: cfg.i64("steps_offset", 0)?,
            spacing: Spacing::read(&cfg, "leading")?,
            prediction: Prediction::read(&cfg, &["epsilon", "sample", "v_prediction"])?,
            clip_sample: clip.then_some(clip_range),
            eta: cfg.f64("eta", 0.0)? as f32,
            steps: 0,
            timesteps_i: Vec::new(),
            timesteps: Vec::new(),
        })
    }

    fn alpha_at(&self, t: i64) -> f32 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
            .unwrap_or(self.final_alpha_cumprod)
    }
}

impl Scheduler for DdimScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, num_inference_steps, self.n_train)?;
        let ts = ddim_timesteps(
            NAME,
            self.spacing,
            self.n_train,
            num_inference_steps,
            self.steps_offset,
        )?;
        self.steps = num_inference_steps;
        self.timesteps = ts.iter().map(|&t| t as f32).collect();
        self.timesteps_i = ts;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, _sample: ArrayViewMutD<f32>, _step_index: usize) {}

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_index(NAME, step_index, self.timesteps_i.len())?;
        check_shapes(NAME, &model_output, &sample)?;
        let t = self.timesteps_i[step_index];
        // diffusers steps back by the leading stride whatever the spacing.
        let prev_t = t - (self.n_train / self.steps) as i64;
        let a_t = self.alpha_at(t);
        let a_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa_t, sb_t) = (a_t.sqrt(), b_t.sqrt());
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        let dir_coef = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let sa_prev = a_prev.sqrt();
        let (pred, clip) = (self.prediction, self.clip_sample);
        Zip::from(&mut sample).and(&model_output).for_each(|s, &m| {
            let (mut x0, eps) = match pred {
                Prediction::Epsilon => ((*s - sb_t * m) / sa_t, m),
                Prediction::Sample => (m, (*s - sa_t * m) / sb_t),
                Prediction::Velocity => (sa_t * *s - sb_t * m, sa_t * m + sb_t * *s),
            };
            if let Some(r) = clip {
                x0 = clamp(x0, -r, r);
            }
            *s = sa_prev * x0 + dir_coef * eps;
        });
        if self.eta > 0.0 {
            let z = noise.randn(model_output.shape());
            Zip::from(&mut sample)
                .and(&z)
                .for_each(|s, &n| *s += std_dev * n);
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        if let Some(&t) = self.timesteps_i.get(step_index) {
            add_noise_alpha(self.alpha_at(t), original, noise);
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
