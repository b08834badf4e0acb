//! A reimplementation of torch's CPU generator and of `torch.randn` for float32 tensors.
//!
//! What torch 2.15 does (read from ATen's `CPUGeneratorImpl`, `DistributionTemplates.h`,
//! `DistributionsHelper.h`, `avx_mathfun.h`, and checked against the compiled kernel):
//! - The engine is mt19937 initialised with `init_genrand(seed as u32)`: only the low 32 bits
//!   of the 64-bit seed reach the state.
//! - A float uniform takes one 32-bit word: `(w & 0xffffff) * 2^-24`. A double uniform takes
//!   two words `hi, lo`: `(((hi << 32) | lo) & (2^53 - 1)) * 2^-53`.
//! - `randn` of 16 or more contiguous float32 values first fills the whole buffer with float
//!   uniforms, then applies Box-Muller in place to each block of 16, pairing `j` with `j + 8`.
//!   If the length is not a multiple of 16, the last 16 slots are refilled with fresh uniforms
//!   and transformed again (this overwrites part of the last full block).
//! - Fewer than 16 values take a scalar double-precision Box-Muller that caches its second
//!   output in the generator; the cache survives into later small draws, is ignored by large
//!   draws and is cleared by `manual_seed`.
//!
//! Portability: the default 16-value kernel ([`TorchKernel::Avx2`]) is pure IEEE
//! arithmetic and gives the same bits on any platform. The scalar path for fewer than 16 values
//! calls the platform's double `log1p`/`sin`/`cos` like torch does; with glibc it is exact, and
//! elsewhere a last-bit difference in double would only rarely survive the cast to float.
use super::NoiseSource;
use std::fmt;

const MT_N: usize = 624;
const MT_M: usize = 397;
const MT_MATRIX_A: u32 = 0x9908_b0df;
const MT_UPPER: u32 = 0x8000_0000;
const MT_LOWER: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister, seeded like torch's `at::mt19937` (`init_genrand`).
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        // Torch regenerates the block lazily on the first draw; index == N does the same.
        Self { state, index: MT_N }
    }

    fn twist(&mut self) {
        let mix = |u: u32, v: u32| {
            let y = (u & MT_UPPER) | (v & MT_LOWER);
            (y >> 1) ^ if v & 1 != 0 { MT_MATRIX_A } else { 0 }
        };
        for i in 0..MT_N - MT_M {
            self.state[i] = self.state[i + MT_M] ^ mix(self.state[i], self.state[i + 1]);
        }
        for i in MT_N - MT_M..MT_N - 1 {
            self.state[i] = self.state[i + MT_M - MT_N] ^ mix(self.state[i], self.state[i + 1]);
        }
        self.state[MT_N - 1] = self.state[MT_M - 1] ^ mix(self.state[MT_N - 1], self.state[0]);
        self.index = 0;
    }

    #[inline]
    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits, exact in f32.
    #[inline]
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 bits of `random64()`.
    #[inline]
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// Which of torch's two 16-value Box-Muller kernels to reproduce for draws of >= 16 values.
///
/// The two differ in the last bit of roughly 40% of the values. Draws of fewer than 16
/// values use the same scalar double-precision path with either kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TorchKernel {
    /// `normal_fill_16_AVX2`: what torch runs on any x86-64 CPU with AVX2+FMA (AVX-512 CPUs
    /// too, since torch does not dispatch `normal` to AVX-512). Its `log256_ps`/`sincos256_ps`
    /// Cephes polynomials are emulated here in portable scalar code with the same fused
    /// multiply-adds GCC emitted, so the output is identical on every platform diffgentor runs
    /// on. This is the default: it matches the reference outputs people make on x86 machines.
    #[default]
    Avx2,
    /// The scalar `normal_fill_16` torch uses without AVX2 (x86-64 `ATEN_CPU_CAPABILITY=default`,
    /// and, unverified, aarch64 builds). It calls the platform's `logf`/`sincosf`, so it matches
    /// torch only where this process links the same libm as torch (checked with glibc on x86-64).
    Generic,
}

/// `torch.Generator("cpu")` with `manual_seed`, producing `torch.randn(..., dtype=float32)`.
///
/// Each [`NoiseSource::fill_randn`] call is one `torch.randn` call, so a sequence of calls
/// (initial latents, then per-step scheduler noise) follows the torch stream exactly.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    seed: u64,
    /// Second Box-Muller output of the scalar path, as torch's `next_double_normal_sample`.
    cached_normal: Option<f64>,
    kernel: TorchKernel,
}

impl TorchGenerator {
    /// Equivalent to `torch.Generator("cpu").manual_seed(seed)` with the default
    /// [`TorchKernel::Avx2`] kernel.
    ///
    /// Torch keeps the full 64-bit seed (`initial_seed()` returns it) but seeds mt19937 with
    /// its low 32 bits only, so `2**32 + 5` draws the same numbers as `5`. Python accepts
    /// seeds in `[-2**63, 2**64)`; a negative one is its two's complement, so pass
    /// `seed as u64` for an `i64` (e.g. `-1` is `u64::MAX`, same stream as `2**32 - 1`).
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, TorchKernel::default())
    }

    /// Like [`TorchGenerator::new`] with an explicit Box-Muller kernel.
    pub fn with_kernel(seed: u64, kernel: TorchKernel) -> Self {
        Self {
            // Truncation is the point: torch's init_genrand takes `seed & 0xffffffff`.
            engine: Mt19937::new(seed as u32),
            seed,
            cached_normal: None,
            kernel,
        }
    }

    /// Re-seeds in place, like `Generator.manual_seed` (also drops the cached normal).
    pub fn manual_seed(&mut self, seed: u64) {
        *self = Self::with_kernel(seed, self.kernel);
    }

    /// The seed as given, like `Generator.initial_seed()`.
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// The Box-Muller kernel used for draws of 16 or more values.
    pub fn kernel(&self) -> TorchKernel {
        self.kernel
    }

    /// One value of the scalar path: `at::normal_distribution<double>` with mean 0, std 1.
    fn scalar_normal(&mut self) -> f64 {
        // Torch applies `x * std + mean` as one FMA; with (1, 0) that only turns -0 into +0.
        if let Some(cached) = self.cached_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.engine.uniform_f64();
        let u2 = self.engine.uniform_f64();
        let radius = ((-u2).ln_1p() * -2.0).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        let (sin, cos) = theta.sin_cos();
        self.cached_normal = Some(radius * sin);
        radius * cos + 0.0
    }
}

impl NoiseSource for TorchGenerator {
    fn fill_randn(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < 16 {
            for v in out.iter_mut() {
                *v = self.scalar_normal() as f32;
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.engine.uniform_f32();
        }
        transform_blocks(self.kernel, &mut out[..n - n % 16]);
        if n % 16 != 0 {
            // Torch redraws the last 16 slots rather than handling a short block.
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.engine.uniform_f32();
            }
            transform_blocks(self.kernel, tail);
        }
    }
}

impl fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("kernel", &self.kernel)
            .field("cached_normal", &self.cached_normal)
            .finish_non_exhaustive()
    }
}

/// Applies Box-Muller to each block of 16 uniforms in `data` (`data.len() % 16 == 0`).
fn transform_blocks(kernel: TorchKernel, data: &mut [f32]) {
    match kernel {
        TorchKernel::Generic => data.chunks_exact_mut(16).for_each(fill16_generic),
        TorchKernel::Avx2 => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports FMA, checked just above.
                unsafe { fill_avx2_with_fma(data) };
                return;
            }
            data.chunks_exact_mut(16).for_each(fill16_avx2);
        }
    }
}

/// The same arithmetic compiled with hardware FMA, so `mul_add` is one instruction instead
/// of a libm call (about 20x faster); results are identical either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fill_avx2_with_fma(data: &mut [f32]) {
    // A plain loop: an iterator adaptor would be a separate function compiled without FMA.
    let mut rest = data;
    while rest.len() >= 16 {
        let (block, tail) = rest.split_at_mut(16);
        fill16_avx2(block);
        rest = tail;
    }
}

/// Box-Muller over 16 uniforms with the scalar kernel: `u1 = 1 - x[j]`, `u2 = x[j + 8]`.
fn fill16_generic(block: &mut [f32]) {
    let (lo, hi) = block.split_at_mut(8);
    for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
        let u1 = 1.0 - *a;
        let radius = (u1.ln() * -2.0).sqrt();
        // `2.0f * pi<double> * u2` is evaluated in double and rounded once to float.
        let theta = (f64::from(*b) * (2.0 * std::f64::consts::PI)) as f32;
        let (sin, cos) = theta.sin_cos();
        // `+ 0.0` mirrors torch's final `fma(x, std=1, mean=0)` (-0 becomes +0).
        *a = radius * cos + 0.0;
        *b = radius * sin + 0.0;
    }
}

/// Box-Muller over 16 uniforms as `normal_fill_16_AVX2` computes it, one lane at a time.
#[inline(always)]
fn fill16_avx2(block: &mut [f32]) {
    let (lo, hi) = block.split_at_mut(8);
    for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
        let radius = (log_cephes(1.0 - *a) * -2.0).sqrt();
        let (sin, cos) = sincos_cephes(*b * TWO_PI);
        *a = radius * cos + 0.0;
        *b = radius * sin + 0.0;
    }
}

// Constants of avx_mathfun.h, as the exact float bit patterns found in torch's binary (the
// header spells them as double literals; taking the bits avoids any double-rounding doubt).
/// `(float)(2 * pi)` = 6.2831855.
const TWO_PI: f32 = f32::from_bits(0x40c9_0fdb);
/// sqrt(1/2).
const SQRTHF: f32 = f32::from_bits(0x3f35_04f3);
/// log(x) ~ x - x^2/2 + x^3 * P(x) on [sqrt(1/2) - 1, sqrt(2) - 1]; P0..P8.
const LOG_P: [f32; 9] = [
    f32::from_bits(0x3d90_21bb), // 7.0376836292e-2
    f32::from_bits(0xbdeb_d1b8), // -1.1514610310e-1
    f32::from_bits(0x3def_251a), // 1.1676998740e-1
    f32::from_bits(0xbdfe_5d4f), // -1.2420140846e-1
    f32::from_bits(0x3e11_e9bf), // 1.4249322787e-1
    f32::from_bits(0xbe2a_ae50), // -1.6668057665e-1
    f32::from_bits(0x3e4c_ceac), // 2.0000714765e-1
    f32::from_bits(0xbe7f_fffc), // -2.4999993993e-1
    f32::from_bits(0x3eaa_aaaa), // 3.3333331174e-1
];
/// log(2) split in a small and a large part for exact `e * log(2)`.
const LOG_Q1: f32 = f32::from_bits(0xb95e_8083); // -2.12194440e-4
const LOG_Q2: f32 = f32::from_bits(0x3f31_8000); // 0.693359375
/// 4 / pi.
const FOPI: f32 = f32::from_bits(0x3fa2_f983);
/// -pi/4 in three parts for Cody-Waite range reduction.
const DP1: f32 = f32::from_bits(0xbf49_0000); // -0.78515625
const DP2: f32 = f32::from_bits(0xb97d_a000); // -2.4187564849853515625e-4
const DP3: f32 = f32::from_bits(0xb322_2169); // -3.77489497744594108e-8
const COS_P: [f32; 3] = [
    f32::from_bits(0x37cc_f5ce), // 2.443315711809948e-5
    f32::from_bits(0xbab6_061a), // -1.388731625493765e-3
    f32::from_bits(0x3d2a_aaa5), // 4.166664568298827e-2
];
const SIN_P: [f32; 3] = [
    f32::from_bits(0xb94c_a1f9), // -1.9515295891e-4
    f32::from_bits(0x3c08_839e), // 8.3321608736e-3
    f32::from_bits(0xbe2a_aaa3), // -1.6666654611e-1
];

/// `log256_ps` for one lane. The `mul_add`s are exactly the FMAs in torch's compiled kernel
/// (GCC contracted `mul` + `add` intrinsics); every other step rounds separately.
#[inline(always)]
fn log_cephes(x: f32) -> f32 {
    // Non-positive input gives NaN (never happens for u1 in (0, 1]); a select, not a branch.
    let invalid = x.is_nan() || x <= 0.0;
    // Flush denormals to the smallest normal, then split into exponent and [0.5, 1) mantissa.
    let bits = x.max(f32::MIN_POSITIVE).to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32 + 1.0;
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let x = if m < SQRTHF {
        e -= 1.0;
        m + (m - 1.0)
    } else {
        m - 1.0
    };
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    let y = x * y;
    let y = y.mul_add(z, e * LOG_Q1);
    let y = (-z).mul_add(0.5, y);
    let log = e.mul_add(LOG_Q2, x + y);
    if invalid {
        f32::NAN
    } else {
        log
    }
}

/// `sincos256_ps` for one lane: returns `(sin, cos)`.
#[inline(always)]
fn sincos_cephes(theta: f32) -> (f32, f32) {
    let sign_sin = theta.to_bits() & 0x8000_0000;
    let x = theta.abs();
    // Octant index j, rounded up to even (as cephes does); float-to-int truncates like cvttps.
    let j = ((x * FOPI) as i32).wrapping_add(1) & !1;
    let jf = j as f32;
    let sign_sin = sign_sin ^ (((j & 4) as u32) << 29);
    let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
    let use_sin_poly_for_sin = j & 2 == 0;

    let x = jf.mul_add(DP1, x);
    let x = jf.mul_add(DP2, x);
    let x = jf.mul_add(DP3, x);
    let z = x * x;

    let y = COS_P[0].mul_add(z, COS_P[1]);
    let y = y.mul_add(z, COS_P[2]);
    let y = z * y;
    let y = z.mul_add(y, -(z * 0.5)) + 1.0;

    let y2 = SIN_P[0].mul_add(z, SIN_P[1]);
    let y2 = y2.mul_add(z, SIN_P[2]);
    let y2 = z * y2;
    let y2 = x.mul_add(y2, x);

    // The kernel selects with bit masks and add/sub; mirror it so signed zeros match too.
    let (ysin2, ysin1) = if use_sin_poly_for_sin {
        (y2, 0.0)
    } else {
        (0.0, y)
    };
    let sin = ysin2 + ysin1;
    let cos = (y2 - ysin2) + (y - ysin1);
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}
