//! Pseudo numerical methods (Liu et al. 2022), diffusers' `PNDMScheduler`: optional
//! Runge-Kutta warm-up (PRK) followed by linear multistep (PLMS) updates.
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::alphas::{check_train_range, ddim_timesteps, AlphaSchedule};
use super::common::{check_steps, BetaDefaults, Prediction, Spacing};
use super::config::Config;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "pndm";

/// PNDM with diffusers' call pattern: PLMS repeats one timestep, PRK repeats several.
pub struct PndmScheduler {
    alphas: AlphaSchedule,
    steps_offset: i64,
    spacing: Spacing,
    v_prediction: bool,
    skip_prk_steps: bool,
    steps: usize,
    prk_len: usize,
    // Multistep state, reset by set_timesteps.
    counter: usize,
    ets: Vec<ArrayD<f32>>,
    cur_model_output: Option<ArrayD<f32>>,
    cur_sample: Option<ArrayD<f32>>,
}

impl PndmScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "PNDMScheduler")?;
        let betas = BetaDefaults {
            zero_snr_key: false,
            ..BetaDefaults::DDPM
        };
        let alphas = AlphaSchedule::read(&cfg, betas, false)?;
        let prediction = Prediction::read(&cfg, &["epsilon", "v_prediction"])?;
        Ok(Self {
            alphas,
            steps_offset: cfg.i64("steps_offset", 0)?,
            spacing: Spacing::read(&cfg, "leading")?,
            v_prediction: prediction == Prediction::Velocity,
            skip_prk_steps: cfg.bool("skip_prk_steps", false)?,
            steps: 0,
            prk_len: 0,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
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
        let a_t = self.alphas.alpha_at(t);
        let a_prev = self.alphas.alpha_at(prev_t);
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
        let half = (self.alphas.n_train() / self.steps / 2) as i64;
        let prev_t = t - if self.counter % 2 == 1 { 0 } else { half };
        let t = self.alphas.timesteps_i()[self.counter / 4 * 4];
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
        let stride = (self.alphas.n_train() / self.steps) as i64;
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
        let n_train = self.alphas.n_train();
        check_steps(NAME, n, n_train)?;
        // Ascending training steps, as PNDM builds them.
        let mut base = ddim_timesteps(NAME, self.spacing, n_train, n, self.steps_offset)?;
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
            let half = (n_train / n / 2) as i64;
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
        check_train_range(NAME, &ts, n_train)?;
        self.steps = n;
        self.prk_len = prk.len();
        self.alphas.set_timesteps(ts);
        self.counter = 0;
        self.ets.clear();
        self.cur_model_output = None;
        self.cur_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        self.alphas.timesteps()
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let t = self
            .alphas
            .step_timestep(NAME, step_index, &model_output, &sample)?;
        if self.counter < self.prk_len && !self.skip_prk_steps {
            self.step_prk(model_output, t, &mut sample);
        } else {
            self.step_plms(model_output, t, &mut sample);
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        self.alphas.add_noise(original, noise, step_index);
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
