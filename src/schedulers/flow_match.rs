//! Rectified-flow Euler sampler, diffusers' `FlowMatchEulerDiscreteScheduler` (SD3, FLUX):
//! x moves along the predicted velocity from sigma to the next sigma.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{check_step_args, check_steps, mix_noise, np_linspace};
use super::config::Config;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "flow_match_euler";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeShift {
    Exponential,
    Linear,
}

/// Flow-matching Euler with static `shift` or resolution-dependent dynamic shifting.
pub struct FlowMatchEulerScheduler {
    n_train: usize,
    shift: f64,
    dynamic: bool,
    time_shift: TimeShift,
    base_shift: f64,
    max_shift: f64,
    base_seq_len: f64,
    max_seq_len: f64,
    invert_sigmas: bool,
    shift_terminal: Option<f64>,
    stochastic: bool,
    sigma_min: f64,
    sigma_max: f64,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

/// Float operations of the shift formulas, so one code path serves float64 (the default
/// schedule) and float32 (caller-supplied sigmas, where numpy stays in float32).
trait Real: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    fn lit(x: f64) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
}
impl Real for f64 {
    fn lit(x: f64) -> Self {
        x
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn div(self, o: Self) -> Self {
        self / o
    }
}
impl Real for f32 {
    fn lit(x: f64) -> Self {
        x as f32
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn div(self, o: Self) -> Self {
        self / o
    }
}

impl FlowMatchEulerScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "FlowMatchEulerDiscreteScheduler")?;
        let n_train = cfg.usize("num_train_timesteps", 1000)?;
        if !(1..=1_000_000).contains(&n_train) {
            return Err(cfg.unsupported(
                "num_train_timesteps",
                n_train,
                "an integer in 1..=1000000",
            ));
        }
        for key in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
        ] {
            cfg.require_false(key)?;
        }
        let shift = cfg.f64("shift", 1.0)?;
        let dynamic = cfg.bool("use_dynamic_shifting", false)?;
        let time_shift =
            match cfg.choice("time_shift_type", "exponential", &["exponential", "linear"])? {
                "linear" => TimeShift::Linear,
                _ => TimeShift::Exponential,
            };
        // The training table: sigma = t / N, statically shifted unless shifting is dynamic.
        let n32 = n_train as f32;
        let (s32, m32) = (shift as f32, (shift - 1.0) as f32);
        let at = |t: f32| {
            let s = t / n32;
            if dynamic {
                s
            } else {
                s32 * s / (1.0 + m32 * s)
            }
        };
        Ok(Self {
            n_train,
            shift,
            dynamic,
            time_shift,
            base_shift: cfg.f64("base_shift", 0.5)?,
            max_shift: cfg.f64("max_shift", 1.15)?,
            base_seq_len: cfg.f64("base_image_seq_len", 256.0)?,
            max_seq_len: cfg.f64("max_image_seq_len", 4096.0)?,
            invert_sigmas: cfg.bool("invert_sigmas", false)?,
            shift_terminal: cfg.f64_opt("shift_terminal")?.filter(|&v| v != 0.0),
            stochastic: cfg.bool("stochastic_sampling", false)?,
            sigma_max: at(n32) as f64,
            sigma_min: at(1.0) as f64,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    /// Sigmas per step plus the final 0 (1 with `invert_sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// FLUX's `calculate_shift`: mu linear in the image token count, from the config's
    /// base/max shift and sequence lengths.
    pub fn mu_for_image_seq_len(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len);
        let b = self.base_shift - m * self.base_seq_len;
        image_seq_len as f64 * m + b
    }

    /// `set_timesteps(num_inference_steps, mu=mu)`; `mu` is required with
    /// `use_dynamic_shifting` and ignored otherwise.
    pub fn set_timesteps_mu(
        &mut self,
        num_inference_steps: usize,
        mu: Option<f64>,
    ) -> Result<(), SchedulerError> {
        check_steps(NAME, num_inference_steps, self.n_train)?;
        let n = self.n_train as f64;
        let t = np_linspace(
            self.sigma_max * n,
            self.sigma_min * n,
            num_inference_steps,
            true,
        );
        let sig: Vec<f64> = t.iter().map(|&t| t / n).collect();
        let sig = self.shifted(&sig, mu)?;
        self.finish(sig.iter().map(|&s| s as f32).collect());
        Ok(())
    }

    /// `set_timesteps(sigmas=sigmas, mu=mu)`: caller-chosen sigmas (cast to float32 first,
    /// as diffusers does), then shifted.
    pub fn set_sigmas_mu(&mut self, sigmas: &[f64], mu: Option<f64>) -> Result<(), SchedulerError> {
        check_steps(NAME, sigmas.len(), self.n_train)?;
        let sig: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        let sig = self.shifted(&sig, mu)?;
        self.finish(sig);
        Ok(())
    }

    fn shifted<T: Real>(&self, sig: &[T], mu: Option<f64>) -> Result<Vec<T>, SchedulerError> {
        let one = T::lit(1.0);
        let mut out: Vec<T> = if self.dynamic {
            let mu = mu.ok_or(SchedulerError::Unsupported {
                scheduler: NAME,
                what: "use_dynamic_shifting without mu (call set_timesteps_with_mu)",
            })?;
            let k = T::lit(match self.time_shift {
                TimeShift::Exponential => mu.exp(),
                TimeShift::Linear => mu,
            });
            sig.iter().map(|&s| k.div(k + (one.div(s) - one))).collect()
        } else {
            let (a, b) = (T::lit(self.shift), T::lit(self.shift - 1.0));
            sig.iter().map(|&s| a.mul(s).div(one + b.mul(s))).collect()
        };
        if let (Some(term), Some(&last)) = (self.shift_terminal, out.last()) {
            // Stretch so the last sigma lands exactly on shift_terminal.
            let scale = (one - last).div(T::lit(1.0 - term));
            out = out.iter().map(|&s| one - (one - s).div(scale)).collect();
        }
        Ok(out)
    }

    fn finish(&mut self, mut sig: Vec<f32>) {
        let n = self.n_train as f32;
        let end = if self.invert_sigmas {
            sig.iter_mut().for_each(|s| *s = 1.0 - *s);
            1.0
        } else {
            0.0
        };
        self.timesteps = sig.iter().map(|&s| s * n).collect();
        sig.push(end);
        self.sigmas = sig;
    }
}

impl Scheduler for FlowMatchEulerScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        self.set_timesteps_mu(num_inference_steps, None)
    }

    fn set_timesteps_with_mu(
        &mut self,
        num_inference_steps: usize,
        mu: f64,
    ) -> Result<(), SchedulerError> {
        self.set_timesteps_mu(num_inference_steps, Some(mu))
    }

    fn set_custom_sigmas(&mut self, sigmas: &[f64], mu: Option<f64>) -> Result<(), SchedulerError> {
        self.set_sigmas_mu(sigmas, mu)
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
        check_step_args(
            NAME,
            step_index,
            self.timesteps.len(),
            &model_output,
            &sample,
        )?;
        let sigma = self.sigmas[step_index];
        let next = self.sigmas[step_index + 1];
        if self.stochastic {
            let z = noise.randn(sample.shape());
            Zip::from(&mut sample)
                .and(&model_output)
                .and(&z)
                .for_each(|s, &m, &n| *s = (1.0 - next) * (*s - sigma * m) + next * n);
        } else {
            let dt = next - sigma;
            Zip::from(&mut sample)
                .and(&model_output)
                .for_each(|s, &m| *s += dt * m);
        }
        Ok(())
    }

    /// diffusers' `scale_noise`: sigma * noise + (1 - sigma) * x.
    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        if let Some(&sigma) = self.sigmas.get(step_index) {
            mix_noise(original, noise, 1.0 - sigma, sigma);
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
