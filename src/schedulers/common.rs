//! Shared numerics: beta schedules and the exact numpy/torch array recipes diffusers uses.
//!
//! diffusers mixes float32 torch math with float64 numpy math; each helper notes which it
//! reproduces, because the rounding of every intermediate decides bit-level parity.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};

use super::config::Config;
use super::SchedulerError;

/// How inference timesteps are spread over the training range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

impl Spacing {
    pub(crate) fn read(cfg: &Config, default: &'static str) -> Result<Self, SchedulerError> {
        Ok(
            match cfg.choice(
                "timestep_spacing",
                default,
                &["leading", "trailing", "linspace"],
            )? {
                "leading" => Spacing::Leading,
                "trailing" => Spacing::Trailing,
                _ => Spacing::Linspace,
            },
        )
    }
}

/// What the denoising model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prediction {
    Epsilon,
    Velocity,
    Sample,
}

impl Prediction {
    pub(crate) fn read(cfg: &Config, allowed: &[&'static str]) -> Result<Self, SchedulerError> {
        Ok(match cfg.choice("prediction_type", "epsilon", allowed)? {
            "v_prediction" => Prediction::Velocity,
            "sample" | "original_sample" => Prediction::Sample,
            _ => Prediction::Epsilon,
        })
    }
}

/// The training noise schedule: betas and their float32 cumulative alpha products.
pub(crate) struct NoiseSchedule {
    pub(crate) alphas_cumprod: Vec<f32>,
    /// `rescale_betas_zero_snr` was applied (sigma-based classes then pin the last alpha).
    pub(crate) zero_snr: bool,
}

/// Class defaults for the beta keys, which differ between scheduler classes.
pub(crate) struct BetaDefaults {
    pub(crate) beta_start: f64,
    pub(crate) beta_end: f64,
    pub(crate) beta_schedule: &'static str,
    /// Only HeunDiscreteScheduler accepts `beta_schedule = "exp"`.
    pub(crate) allow_exp: bool,
    /// Whether the class has `rescale_betas_zero_snr`.
    pub(crate) zero_snr_key: bool,
}

impl BetaDefaults {
    /// DDPM's linear 1e-4..0.02 betas, the default of most classes.
    pub(crate) const DDPM: Self = Self {
        beta_start: 0.0001,
        beta_end: 0.02,
        beta_schedule: "linear",
        allow_exp: false,
        zero_snr_key: true,
    };
}

impl NoiseSchedule {
    pub(crate) fn read(cfg: &Config, d: BetaDefaults) -> Result<Self, SchedulerError> {
        let n = cfg.usize("num_train_timesteps", 1000)?;
        // The cap only guards against absurd allocations from a bad config.
        if !(2..=1_000_000).contains(&n) {
            return Err(cfg.unsupported("num_train_timesteps", n, "an integer in 2..=1000000"));
        }
        let betas: Vec<f32> = match cfg.f64_list("trained_betas")? {
            Some(list) => {
                if list.len() != n {
                    return Err(cfg.unsupported(
                        "trained_betas",
                        format!("<{} values>", list.len()),
                        &format!("{n} values (num_train_timesteps)"),
                    ));
                }
                list.iter().map(|&b| b as f32).collect()
            }
            None => {
                let allowed: &[&'static str] = if d.allow_exp {
                    &["linear", "scaled_linear", "squaredcos_cap_v2", "exp"]
                } else {
                    &["linear", "scaled_linear", "squaredcos_cap_v2"]
                };
                let start = cfg.f64("beta_start", d.beta_start)?;
                let end = cfg.f64("beta_end", d.beta_end)?;
                match cfg.choice("beta_schedule", d.beta_schedule, allowed)? {
                    "linear" => torch_linspace_f32(start, end, n),
                    "scaled_linear" => {
                        // Python's `x ** 0.5` is libm pow, not sqrt.
                        let b = torch_linspace_f32(start.powf(0.5), end.powf(0.5), n);
                        b.iter().map(|x| x * x).collect()
                    }
                    "squaredcos_cap_v2" => betas_for_alpha_bar(n, |t| {
                        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                            .cos()
                            .powi(2)
                    }),
                    _ => betas_for_alpha_bar(n, |t| (t * -12.0).exp()),
                }
            }
        };
        let rescale = d.zero_snr_key && cfg.bool("rescale_betas_zero_snr", false)?;
        let betas = if rescale {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        Ok(Self {
            alphas_cumprod: cumprod(&alphas),
            zero_snr: rescale,
        })
    }

    /// Sigma-based classes replace the zero terminal alpha by 2^-24 to keep sigma finite.
    pub(crate) fn pin_terminal_alpha(&mut self) {
        if self.zero_snr {
            if let Some(last) = self.alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
    }

    /// sqrt((1 - a) / a) per training step, in float32 as torch computes it.
    pub(crate) fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// Python's `**` on floats goes through libm pow; squares are exact either way.
fn betas_for_alpha_bar(n: usize, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// torch.cumprod on CPU accumulates float32 input in float64.
pub(crate) fn cumprod(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sq: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let (s0, st) = (sq[0], sq[sq.len() - 1]);
    let scale = s0 / (s0 - st);
    for v in sq.iter_mut() {
        *v = (*v - st) * scale;
    }
    let bar: Vec<f32> = sq.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for w in bar.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

/// torch.linspace(start, end, steps, dtype=float32) on CPU: each element is a fused
/// multiply-add from whichever end is nearer.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((steps - i - 1) as f32, e)
            }
        })
        .collect()
}

/// numpy.linspace in float64.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let delta = stop - start;
    let step = if div > 0 {
        delta / div as f64
    } else {
        f64::NAN
    };
    let mut y: Vec<f64> = (0..num)
        .map(|i| {
            let i = i as f64;
            if div == 0 {
                i * delta + start
            } else if step == 0.0 {
                i / div as f64 * delta + start
            } else {
                i * step + start
            }
        })
        .collect();
    if endpoint && num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// numpy.arange with a float step: the length is ceil((stop - start) / step) and values
/// come from the rounded difference of the first two entries.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// numpy.interp(x, arange(len(fp)), fp) in float64.
pub(crate) fn np_interp(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    let last = (n - 1) as f64;
    if x < 0.0 {
        return fp[0] as f64;
    }
    if x >= last {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j] as f64;
    }
    let (y0, y1) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = y1 - y0;
    slope * (x - j as f64) + y0
}

/// numpy's float32 `np.log` on x86 (its AVX2-FMA3/AVX512F kernel: a [5/5] rational
/// approximation, up to ~4 ulp off `logf`). diffusers' log-sigma tables come from it, and
/// karras timesteps inherit its rounding.
pub(crate) fn np_log_f32(x: f32) -> f32 {
    // numpy's NPY_COEFF_{P,Q}{0..5}_LOGf, rounded to float32 as the C literals are.
    const P: [f32; 6] = [
        0.0,
        1.0,
        2.112_677_6,
        1.480_000_6,
        0.380_883_78,
        0.025_899_792,
    ];
    const Q: [f32; 6] = [
        1.0,
        2.612_677_6,
        2.453_006,
        0.986_494_3,
        0.154_647_63,
        0.005_875_095_3,
    ];
    if !(x.is_normal() && x > 0.0) {
        return x.ln();
    }
    // x = m * 2^e with m in [0.5, 1).
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as f32 - 126.0;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | (126 << 23));
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m = m + m;
        e -= 1.0;
    }
    let t = m - 1.0;
    let num = P[..5].iter().rev().fold(P[5], |acc, &c| acc.mul_add(t, c));
    let den = Q[..5].iter().rev().fold(Q[5], |acc, &c| acc.mul_add(t, c));
    e.mul_add(std::f32::consts::LN_2, num / den)
}

/// torch.clamp(x, lo, hi): NaN stays NaN, and it never panics on odd bounds.
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    if x.is_nan() {
        x
    } else {
        x.max(lo).min(hi)
    }
}

/// x = a * x + b * noise: every forward (noising) process and noise injection here has
/// this form. Mismatched shapes leave `x` unchanged.
pub(crate) fn mix_noise(mut x: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, a: f32, b: f32) {
    if x.shape() == noise.shape() {
        Zip::from(&mut x)
            .and(&noise)
            .for_each(|x, &n| *x = a * *x + b * n);
    }
}

/// diffusers' `clip_sample`: x0 estimates clamped to +-`clip_sample_range` when on.
#[derive(Clone, Copy)]
pub(crate) struct ClipSample(Option<f32>);

impl ClipSample {
    /// `default` is the class's `clip_sample` default.
    pub(crate) fn read(cfg: &Config, default: bool) -> Result<Self, SchedulerError> {
        let clip = cfg.bool("clip_sample", default)?;
        let range = cfg.f64("clip_sample_range", 1.0)? as f32;
        Ok(Self(clip.then_some(range)))
    }

    pub(crate) fn apply(self, x0: f32) -> f32 {
        match self.0 {
            Some(r) => clamp(x0, -r, r),
            None => x0,
        }
    }
}

/// Rejects 0 and more steps than the model was trained with.
pub(crate) fn check_steps(
    scheduler: &'static str,
    steps: usize,
    max: usize,
) -> Result<(), SchedulerError> {
    if steps == 0 || steps > max {
        Err(SchedulerError::InvalidSteps {
            scheduler,
            steps,
            max,
        })
    } else {
        Ok(())
    }
}

/// The argument checks that open every `step`: `set_timesteps` ran, `step_index` is in
/// range (so `step_index + 1` is in the sigma table), and the shapes agree.
pub(crate) fn check_step_args(
    scheduler: &'static str,
    step_index: usize,
    len: usize,
    model_output: &ArrayViewD<f32>,
    sample: &ArrayViewMutD<f32>,
) -> Result<(), SchedulerError> {
    if len == 0 {
        Err(SchedulerError::NotInitialized { scheduler })
    } else if step_index >= len {
        Err(SchedulerError::StepIndexOutOfRange {
            scheduler,
            step_index,
            len,
        })
    } else if model_output.shape() != sample.shape() {
        Err(SchedulerError::ShapeMismatch {
            scheduler,
            model_output: model_output.shape().to_vec(),
            sample: sample.shape().to_vec(),
        })
    } else {
        Ok(())
    }
}
