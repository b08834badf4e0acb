//! Pseudo numerical methods (Liu et al. 2022), diffusers' `PNDMScheduler`: optional
//! Runge-Kutta warm-up (PRK) followed by linear multistep (PLMS) updates.
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_index, check_shapes, check_steps, BetaDefaults, NoiseSchedule, Prediction, Spacing,
};
use super::config::Config;
use super::ddim::{add_noise_alpha, check_train_range, ddim_timesteps};
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "pndm";

/// PNDM with diffusers' call pattern: PLMS repeats one timestep, PRK repeats several.
pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    n_train: usize,
    steps_offset: i64,
    spacing: Spacing,
    v_prediction: bool,
    skip_prk_steps: bool,
    steps: usize,
    prk_len: usize,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f32>,
    // Multistep state, reset by set_timesteps.
    counter: usize,
    ets: Vec<ArrayD<f32>>,
    cur_model_output: Option<ArrayD<f32>>,
    cur_sample: Option<ArrayD<f32>>,
}

impl PndmScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "PNDMScheduler")?;
        let sched = NoiseSchedule::read(
            &cfg,
            BetaDefaults {
                beta_start: 0.0001,
                beta_end: 0.02,
                beta_schedule: "linear",
                allow_exp: false,
                zero_snr_key: false,
            },
        )?;
        let ac = sched.alphas_cumprod;
        let prediction = Prediction::read(&cfg, &["epsilon", "v_prediction"])?;
        Ok(Self {
            final_alpha_cumprod: if cfg.bool("set_alpha_to_one", false)? {
                1.0
            } else {
                ac[0]
            },
            n_train: ac.len(),
            alphas_cumprod: ac,
            steps_offset: cfg.i64("steps_offset", 0)?,
            spacing: Spacing::read(&cfg, "leading")?,
            v_prediction: prediction == Prediction::Velocity,
            skip_prk_steps: cfg.bool("skip_prk_steps", false)?,
            steps: 0,
            prk_len: 0,
            timesteps_i: Vec::new(),
            timesteps: Vec::new(),
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
    }

    fn alpha_at(&self, t: i64) -> f32 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
            .unwrap_or(self.final_alpha_cumprod)
    }

    /// x_{t-1} from x_t (`src`, or `out` itself when `None`) and an epsilon estimate.
    fn prev_sample(
        &self,
        out: &mut ArrayViewMutD<f32>,
        src: Option<&ArrayD<f32>>,
        t: i64,
        prev_t: i64,
        eps: &ArrayD<f32>,
    ) {
        let a_t = self.alpha_at(t);
        let a_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let (sa_t, sb_t) = (a_t.sqrt(), b_t.sqrt());
        let coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        let v = self.v_prediction;
        let f = |s: f32, e: f32| {
            let e = if v { sa_t * e + sb_t * s } else { e };
            coeff * s - diff * e / denom
        };
        match src {
            Some(src) => Zip::from(out)
                .and(src)
                .and(eps)
                .for_each(|o, &s, &e| *o = f(s, e)),
            None => Zip::from(out).and(eps).for_each(|o, &e| *o = f(*o, e)),
        }
    }

    fn step_prk(&mut self, model_output: ArrayViewD<f32>, t: i64, sample: &mut ArrayViewMutD<f32>) {
        let half = (self.n_train / self.steps / 2) as i64;
        let prev_t = t - if self.counter % 2 == 1 { 0 } else { half };
        let t = self.timesteps_i[self.counter / 4 * 4];
        let eps = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(model_output.mapv(|m| (1.0f64 / 6.0) as f32 * m));
                self.ets.push(model_output.to_owned());
                self.cur_sample = Some(sample.to_owned());
                model_output.to_owned()
            }
            1 | 2 => {
                if let Some(cur) = self.cur_model_output.as_mut() {
                    Zip::from(cur)
                        .and(&model_output)
                        .for_each(|c, &m| *c += (1.0f64 / 3.0) as f32 * m);
                }
                model_output.to_owned()
            }
            _ => {
                let mut eps = model_output.mapv(|m| (1.0f64 / 6.0) as f32 * m);
                if let Some(cur) = self.cur_model_output.take() {
                    Zip::from(&mut eps).and(&cur).for_each(|e, &c| *e += c);
                }
                eps
            }
        };
        let src = self.cur_sample.clone();
        self.prev_sample(sample, src.as_ref(), t, prev_t, &eps);
        self.counter += 1;
    }

    fn step_plms(
        &mut self,
        model_output: ArrayViewD<f32>,
        t: i64,
        sample: &mut ArrayViewMutD<f32>,
    ) {
        let stride = (self.n_train / self.steps) as i64;
        let (mut t, mut prev_t) = (t, t - stride);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.to_owned());
        } else {
            // The second call re-evaluates the first step's interval (a Heun-like warm-up).
            prev_t = t;
            t += stride;
        }
        let n = self.ets.len();
        let e = |k: usize| &self.ets[n - k];
        let mut src = None;
        let eps: ArrayD<f32> = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.to_owned());
            model_output.to_owned()
        } else if n == 1 && self.counter == 1 {
            src = self.cur_sample.take();
            let mut eps = model_output.to_owned();
            Zip::from(&mut eps)
                .and(e(1))
                .for_each(|m, &e1| *m = (*m + e1) / 2.0);
            eps
        } else if n == 2 {
            let mut eps = e(1).clone();
            Zip::from(&mut eps)
                .and(e(2))
                .for_each(|m, &e2| *m = (3.0 * *m - e2) / 2.0);
            eps
        } else if n == 3 {
            let mut eps = e(1).clone();
            Zip::from(&mut eps)
                .and(e(2))
                .and(e(3))
                .for_each(|m, &e2, &e3| *m = (23.0 * *m - 16.0 * e2 + 5.0 * e3) / 12.0);
            eps
        } else {
            let c = (1.0f64 / 24.0) as f32;
            let mut eps = e(1).clone();
            Zip::from(&mut eps)
                .and(e(2))
                .and(e(3))
                .and(e(4))
                .for_each(|m, &e2, &e3, &e4| {
                    *m = c * (55.0 * *m - 59.0 * e2 + 37.0 * e3 - 9.0 * e4)
                });
            eps
        };
        self.prev_sample(sample, src.as_ref(), t, prev_t, &eps);
        self.counter += 1;
    }
}

impl Scheduler for PndmScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        let n = num_inference_steps;
        check_steps(NAME, n, self.n_train)?;
        // Ascending training steps, as PNDM builds them.
        let mut base = ddim_timesteps(NAME, self.spacing, self.n_train, n, self.steps_offset)?;
        base.reverse();
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.skip_prk_steps {
            let mut plms: Vec<i64> = base[..n - 1].to_vec();
            if n >= 2 {
                plms.push(base[n - 2]);
            }
            plms.push(base[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if n < 4 {
                return Err(SchedulerError::InvalidSchedule {
                    scheduler: NAME,
                    reason: format!(
                        "PRK warm-up (skip_prk_steps = false) needs at least 4 steps, got {n}"
                    ),
                });
            }
            let half = (self.n_train / n / 2) as i64;
            let pairs: Vec<i64> = base[n - 4..].iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&t| [t, t])
                .collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            (prk, base[..n - 3].iter().rev().copied().collect())
        };
        let ts: Vec<i64> = prk.iter().chain(plms.iter()).copied().collect();
        check_train_range(NAME, &ts, self.n_train)?;
        self.steps = n;
        self.prk_len = prk.len();
        self.timesteps = ts.iter().map(|&t| t as f32).collect();
        self.timesteps_i = ts;
        self.counter = 0;
        self.ets.clear();
        self.cur_model_output = None;
        self.cur_sample = None;
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_index(NAME, step_index, self.timesteps_i.len())?;
        check_shapes(NAME, &model_output, &sample)?;
        let t = self.timesteps_i[step_index];
        if self.counter < self.prk_len && !self.skip_prk_steps {
            self.step_prk(model_output, t, &mut sample);
        } else {
            self.step_plms(model_output, t, &mut sample);
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
