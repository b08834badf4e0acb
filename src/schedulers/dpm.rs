//! DPM-Solver++ multistep (Lu et al. 2022), diffusers' `DPMSolverMultistepScheduler`
//! with `algorithm_type` "dpmsolver++" or "sde-dpmsolver++" and orders 1-3.
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_step_args, check_steps, mix_noise, np_arange, np_interp, np_linspace, BetaDefaults,
    NoiseSchedule, Prediction, Spacing,
};
use super::config::Config;
use super::sigmas::{ramp_sigmas, with_final_sigma, SigmaRamp};
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

/// alpha_t = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma * alpha_t (VP parameterisation).
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Half log-SNR, computed in float32 as diffusers does.
fn lambda(sigma: f32) -> (f32, f32, f32) {
    let (a, s) = alpha_sigma(sigma);
    (a, s, a.ln() - s.ln())
}

/// Coefficients of one update: x = k_s*x + k0*D0 + k1*D1 + k2*D2 + kn*noise.
struct Coeffs {
    k_s: f32,
    k0: f32,
    k1: Option<f32>,
    k2: Option<f32>,
    kn: Option<f32>,
}

/// Multistep DPM-Solver++ in data (x0) prediction.
pub struct DpmSolverMultistepScheduler {
    alphas_cumprod: Vec<f32>,
    train_sigmas: Vec<f32>,
    karras_name: bool,
    order: usize,
    prediction: Prediction,
    sde: bool,
    heun_solver: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    ramp: SigmaRamp,
    final_zero: bool,
    lambda_min_clipped: f64,
    spacing: Spacing,
    steps_offset: i64,
    round_ramp: bool,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    // Converted model outputs, oldest first, at most `order` of them.
    history: Vec<ArrayD<f32>>,
    lower_order_nums: usize,
}

impl DpmSolverMultistepScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        Self::build(config, false)
    }

    /// `dpmpp_2m_karras`: the same class with `use_karras_sigmas = true`.
    pub fn from_config_karras(config: &Value) -> Result<Self, SchedulerError> {
        Self::build(config, true)
    }

    fn build(config: &Value, force_karras: bool) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "DPMSolverMultistepScheduler")?;
        let mut sched = NoiseSchedule::read(&cfg, BetaDefaults::DDPM)?;
        sched.pin_terminal_alpha();
        cfg.require_false("thresholding")?;
        cfg.require_false("use_lu_lambdas")?;
        cfg.require_false("use_flow_sigmas")?;
        // diffusers maps the legacy "deis" / "logrho"/"bh*" values onto these.
        let algorithm = cfg.choice(
            "algorithm_type",
            "dpmsolver++",
            &["dpmsolver++", "sde-dpmsolver++", "deis"],
        )?;
        let solver = cfg.choice(
            "solver_type",
            "midpoint",
            &["midpoint", "heun", "logrho", "bh1", "bh2"],
        )?;
        let order = cfg.usize("solver_order", 2)?;
        if !(1..=3).contains(&order) {
            return Err(cfg.unsupported("solver_order", order, "1, 2, 3"));
        }
        if let Some(v) = cfg.str_opt("variance_type")? {
            return Err(cfg.unsupported("variance_type", format!("{v:?}"), "null"));
        }
        let ramp = if force_karras {
            cfg.require_false("use_beta_sigmas")?;
            if cfg.bool("use_exponential_sigmas", false)? {
                return Err(cfg.unsupported(
                    "use_exponential_sigmas",
                    true,
                    "false with dpmpp_2m_karras",
                ));
            }
            SigmaRamp::Karras
        } else {
            SigmaRamp::read(&cfg)?
        };
        let train_sigmas = sched.sigmas();
        Ok(Self {
            karras_name: ramp == SigmaRamp::Karras,
            order,
            prediction: Prediction::read(&cfg, &["epsilon", "sample", "v_prediction"])?,
            sde: algorithm == "sde-dpmsolver++",
            heun_solver: solver == "heun",
            lower_order_final: cfg.bool("lower_order_final", true)?,
            euler_at_final: cfg.bool("euler_at_final", false)?,
            ramp,
            final_zero: cfg.choice("final_sigmas_type", "zero", &["zero", "sigma_min"])? == "zero",
            lambda_min_clipped: cfg.f64("lambda_min_clipped", f64::NEG_INFINITY)?,
            spacing: Spacing::read(&cfg, "linspace")?,
            steps_offset: cfg.i64("steps_offset", 0)?,
            round_ramp: cfg.str("beta_schedule", "linear")? != "squaredcos_cap_v2",
            alphas_cumprod: sched.alphas_cumprod,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            history: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// Sigmas per step plus the final one.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Integer timesteps before any sigma ramp, up to the lambda clip.
    fn spaced_timesteps(&self, n: usize) -> Vec<i64> {
        let n_train = self.alphas_cumprod.len();
        // searchsorted over the ascending (flipped) log-SNR table, compared in float64.
        let clipped = self
            .alphas_cumprod
            .iter()
            .rev()
            .take_while(|&&a| {
                ((a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64) < self.lambda_min_clipped
            })
            .count();
        let last = (n_train - clipped) as i64;
        match self.spacing {
            Spacing::Linspace => np_linspace(0.0, (last - 1) as f64, n + 1, true)
                .iter()
                .rev()
                .take(n)
                .map(|t| t.round_ties_even() as i64)
                .collect(),
            Spacing::Leading => {
                let ratio = last / (n as i64 + 1);
                (1..=n as i64)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = n_train as f64 / n as f64;
                np_arange(last as f64, 0.0, -ratio)
                    .iter()
                    .map(|t| t.round_ties_even() as i64 - 1)
                    .collect()
            }
        }
    }

    /// Converts the raw model output to a data (x0) prediction.
    fn convert(
        &self,
        model_output: &ArrayViewD<f32>,
        sample: &ArrayViewMutD<f32>,
        sigma: f32,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        let mut x0 = model_output.to_owned();
        match self.prediction {
            Prediction::Epsilon => Zip::from(&mut x0)
                .and(sample)
                .for_each(|m, &s| *m = (s - sigma_t * *m) / alpha_t),
            Prediction::Velocity => Zip::from(&mut x0)
                .and(sample)
                .for_each(|m, &s| *m = alpha_t * s - sigma_t * *m),
            Prediction::Sample => {}
        }
        x0
    }

    fn coeffs(&self, i: usize, order: usize) -> Coeffs {
        let (a_t, s_t, l_t) = lambda(self.sigmas[i + 1]);
        let (_, s_0, l_0) = lambda(self.sigmas[i]);
        let h = l_t - l_0;
        let (e1, e2) = ((-h).exp(), (-2.0 * h).exp());
        let kn = self.sde.then(|| s_t * (1.0 - e2).sqrt());
        // Non-SDE: x = (s_t/s_0) x - a_t (e^-h - 1) D0 + ...
        // SDE:     x = (s_t/s_0) e^-h x + a_t (1 - e^-2h) D0 + ... + noise term.
        let (k_s, k0) = if self.sde {
            (s_t / s_0 * e1, a_t * (1.0 - e2))
        } else {
            (s_t / s_0, -(a_t * (e1 - 1.0)))
        };
        let k1 = (order >= 2).then(|| match (self.sde, self.heun_solver || order == 3) {
            (false, false) => -(0.5 * (a_t * (e1 - 1.0))),
            (false, true) => a_t * ((e1 - 1.0) / h + 1.0),
            (true, false) => 0.5 * (a_t * (1.0 - e2)),
            (true, true) => a_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
        });
        let k2 = (order == 3).then(|| {
            if self.sde {
                a_t * ((1.0 - e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5)
            } else {
                -(a_t * ((e1 - 1.0 + h) / (h * h) - 0.5))
            }
        });
        Coeffs {
            k_s,
            k0,
            k1,
            k2,
            kn,
        }
    }

    /// The difference terms (D1, D2 scalings) built from previous lambdas.
    fn ratios(&self, i: usize, order: usize) -> (f32, f32, f32) {
        let l = |k: usize| lambda(self.sigmas[k]).2;
        let (l_t, l_0) = (l(i + 1), l(i));
        let h = l_t - l_0;
        let r0 = (l_0 - l(i - 1)) / h;
        if order < 3 {
            return (r0, 0.0, 0.0);
        }
        let r1 = (l(i - 1) - l(i - 2)) / h;
        (r0, r1, r0 / (r0 + r1))
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        let n = num_inference_steps;
        check_steps(self.name(), n, self.alphas_cumprod.len())?;
        let mut ts = self.spaced_timesteps(n);
        let sig: Vec<f64> = if self.ramp == SigmaRamp::Interpolated {
            ts.iter()
                .map(|&t| np_interp(t as f64, &self.train_sigmas))
                .collect()
        } else {
            // Unlike the Euler family, the ramp spans the whole training range.
            let train = &self.train_sigmas;
            let (smin, smax) = (train[0] as f64, train[train.len() - 1] as f64);
            let (sig, ramp_ts) = ramp_sigmas(self.ramp, smin, smax, n, train);
            let round = self.round_ramp && self.ramp == SigmaRamp::Karras;
            ts = ramp_ts
                .iter()
                .map(|&t| (if round { t.round_ties_even() } else { t }) as i64)
                .collect();
            sig
        };
        if ts.is_empty() {
            return Err(SchedulerError::InvalidSchedule {
                scheduler: self.name(),
                reason: "empty timestep schedule".into(),
            });
        }
        // diffusers' "sigma_min" final sigma is the first training sigma.
        let last = if self.final_zero {
            0.0
        } else {
            self.train_sigmas[0]
        };
        self.sigmas = with_final_sigma(&sig, last);
        self.timesteps = ts.iter().map(|&t| t as f32).collect();
        self.history.clear();
        self.lower_order_nums = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let i = step_index;
        let len = self.timesteps.len();
        check_step_args(self.name(), i, len, &model_output, &sample)?;
        if i == 0 {
            self.history.clear();
            self.lower_order_nums = 0;
        }
        let final_step = i == len - 1
            && (self.euler_at_final || (self.lower_order_final && len < 15) || self.final_zero);
        let second_last = i == len - 2 && self.lower_order_final && len < 15;
        let x0 = self.convert(&model_output, &sample, self.sigmas[i]);
        self.history.push(x0);
        if self.history.len() > self.order {
            self.history.remove(0);
        }
        let z = if self.sde {
            Some(noise.randn(model_output.shape()))
        } else {
            None
        };
        // Higher orders need as many previous steps (at indices i-1, i-2) as history holds.
        let order = if self.order == 1 || self.lower_order_nums < 1 || final_step {
            1
        } else if self.order == 2 || self.lower_order_nums < 2 || second_last {
            2
        } else {
            3
        }
        .min(self.history.len())
        .min(i + 1);
        let c = self.coeffs(i, order);
        let (r0, r1, r_mix) = if order >= 2 {
            self.ratios(i, order)
        } else {
            (1.0, 1.0, 0.0)
        };
        let (inv_r0, inv_r1, inv_sum) = (1.0 / r0, 1.0 / r1, 1.0 / (r0 + r1));
        let hist = &self.history;
        let n = hist.len();
        let m: Vec<Vec<f32>> = (0..order)
            .map(|k| hist[n - 1 - k].iter().copied().collect())
            .collect();
        let zv: Vec<f32> = z.map(|z| z.iter().copied().collect()).unwrap_or_default();
        for (j, s) in sample.iter_mut().enumerate() {
            let mut x = c.k_s * *s + c.k0 * m[0][j];
            if let Some(k1) = c.k1 {
                let d1_0 = inv_r0 * (m[0][j] - m[1][j]);
                match c.k2 {
                    None => x += k1 * d1_0,
                    Some(k2) => {
                        let d1_1 = inv_r1 * (m[1][j] - m[2][j]);
                        let d1 = d1_0 + r_mix * (d1_0 - d1_1);
                        let d2 = inv_sum * (d1_0 - d1_1);
                        x = x + k1 * d1 + k2 * d2;
                    }
                }
            }
            if let Some(kn) = c.kn {
                x += kn * zv[j];
            }
            *s = x;
        }
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        if let Some(&sigma) = self.sigmas.get(step_index) {
            let (a, s) = alpha_sigma(sigma);
            mix_noise(original, noise, a, s);
        }
    }

    fn name(&self) -> &'static str {
        if self.karras_name {
            "dpmpp_2m_karras"
        } else {
            "dpmpp_2m"
        }
    }
}
