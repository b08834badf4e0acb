//! Random number generation for initial latents and scheduler noise.
//!
//! Two generators implement [`NoiseSource`]:
//! - [`TorchGenerator`] reproduces `torch.randn(..., generator=torch.Generator("cpu").manual_seed(s))`
//!   bit for bit, so a seed gives the same image as diffusers on CPU-generated noise.
//! - [`FastGenerator`] is a cheaper, non-torch stream (xoshiro256++ and a ziggurat) for callers
//!   that only need reproducibility within diffgentor.
use ndarray::ArrayD;
use std::fmt;
use std::str::FromStr;

mod fast;
mod torch;

pub use fast::FastGenerator;
pub use torch::{TorchGenerator, TorchKernel};

/// A source of standard-normal float32 noise, drawn in the order the caller asks for it.
pub trait NoiseSource: Send {
    /// Fills `out` with N(0, 1) samples as one draw of `out.len()` values.
    fn fill_randn(&mut self, out: &mut [f32]);

    /// Draws a tensor of the given shape (one contiguous draw, like `torch.randn(shape)`).
    fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let mut data = vec![0.0f32; shape.iter().product()];
        self.fill_randn(&mut data);
        ArrayD::from_shape_vec(shape.to_vec(), data)
            .unwrap_or_else(|_| unreachable!("length matches shape"))
    }
}

/// Which noise stream a pipeline draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RngMode {
    /// Bit-identical to torch's CPU generator (the diffusers default for CPU noise).
    #[default]
    Torch,
    /// Faster stream with no torch equivalent; stable across diffgentor versions per seed.
    Fast,
}

impl RngMode {
    /// The name accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            RngMode::Torch => "torch",
            RngMode::Fast => "fast",
        }
    }
}

impl fmt::Display for RngMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an RNG mode name other than `torch` or `fast`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRngModeError(String);

impl fmt::Display for ParseRngModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown RNG mode {:?} (expected \"torch\" or \"fast\")",
            self.0
        )
    }
}

impl std::error::Error for ParseRngModeError {}

impl FromStr for RngMode {
    type Err = ParseRngModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "torch" => Ok(RngMode::Torch),
            "fast" => Ok(RngMode::Fast),
            _ => Err(ParseRngModeError(s.to_string())),
        }
    }
}

/// A boxed noise source for `mode`, seeded with `seed`.
///
/// For [`RngMode::Torch`] the seed has `torch.Generator.manual_seed` semantics; see
/// [`TorchGenerator::new`] for how seeds above 2^32 behave.
pub fn generator(mode: RngMode, seed: u64) -> Box<dyn NoiseSource> {
    match mode {
        RngMode::Torch => Box::new(TorchGenerator::new(seed)),
        RngMode::Fast => Box::new(FastGenerator::new(seed)),
    }
}
