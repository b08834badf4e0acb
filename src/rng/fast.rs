//! A fast normal generator with no torch equivalent: xoshiro256++ and a 256-layer ziggurat.
use super::NoiseSource;
use std::sync::OnceLock;

/// Standard-normal noise from xoshiro256++ (seeded through splitmix64) and the
/// Marsaglia-Tsang ziggurat with 256 layers.
///
/// Each 64-bit output feeds two samples: per sample 8 bits pick the layer, 1 bit the sign and
/// 23 bits the position, so the common case is one multiply and one compare in f32. Wedge and
/// tail samples (about 1%) are decided in f64.
///
/// Deterministic per seed. The common path uses no libm; wedge/tail samples call `exp`/`ln`,
/// so a different libm could in principle flip a rare accept/reject decision. The stream does
/// not depend on how a draw is split into calls: `fill_randn` of 10 then 6 values equals one
/// of 16. Not comparable to torch's stream.
#[derive(Debug, Clone)]
pub struct FastGenerator {
    state: [u64; 4],
    /// Upper half of the last 64-bit output, not yet used.
    spare: Option<u32>,
    seed: u64,
}

impl FastGenerator {
    /// A generator whose stream is fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut state = [0u64; 4];
        for s in state.iter_mut() {
            *s = splitmix64(&mut sm);
        }
        // splitmix64 is a bijection applied to distinct inputs, so the state is never all zero.
        Self {
            state,
            spare: None,
            seed,
        }
    }

    /// The seed given to [`FastGenerator::new`].
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    #[inline]
    fn next_u32(&mut self) -> u32 {
        if let Some(half) = self.spare.take() {
            return half;
        }
        let bits = self.next_u64();
        self.spare = Some((bits >> 32) as u32);
        bits as u32
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as i64 as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    #[inline]
    fn next_normal(&mut self, zig: &Ziggurat) -> f32 {
        loop {
            let bits = self.next_u32();
            let layer = (bits & 0xff) as usize;
            // Bit 8 becomes the sign bit; or-ing it in avoids a 50/50 unpredictable branch.
            let sign_bit = (bits & 0x100) << 23;
            let sign = |v: f32| f32::from_bits(v.to_bits() | sign_bit);
            // 23 random bits as a mantissa in [1, 2), minus 1: no int-to-float conversion.
            let u = f32::from_bits(0x3f80_0000 | (bits >> 9)) - 1.0;
            let x = u * zig.x32[layer];
            // Inside the rectangle fully under the curve: ~99% of draws end here.
            if x < zig.x32[layer + 1] {
                return sign(x);
            }
            if layer == 0 {
                // Base layer beyond R: sample the tail (Marsaglia 1964).
                loop {
                    let a = -(1.0 - self.next_f64()).ln() / ZIG_R;
                    let b = -(1.0 - self.next_f64()).ln();
                    if 2.0 * b > a * a {
                        return sign((ZIG_R + a) as f32);
                    }
                }
            }
            // Wedge between the rectangle and the curve: accept under the density.
            let x64 = f64::from(x);
            let f_hi = zig.f[layer + 1];
            let y = f_hi + self.next_f64() * (zig.f[layer] - f_hi);
            if y < (-0.5 * x64 * x64).exp() {
                return sign(x);
            }
        }
    }
}

impl NoiseSource for FastGenerator {
    fn fill_randn(&mut self, out: &mut [f32]) {
        let zig = ziggurat();
        // Work on a local copy so the state stays in registers instead of memory.
        let mut local = self.clone();
        for v in out.iter_mut() {
            *v = local.next_normal(zig);
        }
        *self = local;
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Start of the tail for 256 layers of equal area (Marsaglia & Tsang 2000).
const ZIG_R: f64 = 3.654_152_885_361_009;
/// Area of each layer, including the base strip with its tail.
const ZIG_V: f64 = 0.004_928_673_233_974_658;

/// Layer edges `x[i]` (decreasing, `x[256] = 0`), as f32 for the fast path, and
/// `f[i] = exp(-x[i]^2 / 2)`.
struct Ziggurat {
    x32: [f32; 257],
    f: [f64; 257],
}

fn ziggurat() -> &'static Ziggurat {
    static TABLES: OnceLock<Ziggurat> = OnceLock::new();
    TABLES.get_or_init(|| {
        let density = |x: f64| (-0.5 * x * x).exp();
        let mut x = [0.0f64; 257];
        // The base strip is as wide as a rectangle with the layers' area would be.
        x[0] = ZIG_V / density(ZIG_R);
        x[1] = ZIG_R;
        for i in 2..256 {
            x[i] = (-2.0 * (ZIG_V / x[i - 1] + density(x[i - 1])).ln()).sqrt();
        }
        x[256] = 0.0;
        let mut f = [0.0f64; 257];
        for (fi, xi) in f.iter_mut().zip(x.iter()) {
            *fi = density(*xi);
        }
        let x32 = x.map(|v| v as f32);
        Ziggurat { x32, f }
    })
}
