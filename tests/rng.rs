//! Bit-exactness of `TorchGenerator` against torch 2.15 goldens (models/make_rng_goldens.py),
//! and sanity of `FastGenerator`.
use diffgentor::rng::{
    generator, FastGenerator, NoiseSource, RngMode, TorchGenerator, TorchKernel,
};
use serde_json::Value;

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/rng");

struct Case {
    name: String,
    seed: u64,
    kernel: TorchKernel,
    draws: Vec<Vec<usize>>,
    total: usize,
    full: bool,
    offset: usize,
    fnv1a64: String,
}

fn load() -> (Vec<Case>, Vec<f32>, usize) {
    let manifest = std::fs::read_to_string(format!("{GOLDEN_DIR}/manifest.json")).unwrap();
    let bytes = std::fs::read(format!("{GOLDEN_DIR}/values.bin")).unwrap();
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let meta: Value = serde_json::from_str(&manifest).unwrap();
    let headtail = meta["headtail"].as_u64().unwrap() as usize;
    let usize_of = |v: &Value| v.as_u64().unwrap() as usize;
    let cases = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            seed: c["seed"].as_str().unwrap().parse().unwrap(),
            kernel: match c["kernel"].as_str().unwrap() {
                "avx2" => TorchKernel::Avx2,
                "generic" => TorchKernel::Generic,
                other => panic!("unknown kernel {other}"),
            },
            draws: c["draws"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_array().unwrap().iter().map(usize_of).collect())
                .collect(),
            total: usize_of(&c["total"]),
            full: c["stored"].as_str().unwrap() == "full",
            offset: usize_of(&c["offset"]),
            fnv1a64: c["fnv1a64"].as_str().unwrap().to_string(),
        })
        .collect();
    (cases, values, headtail)
}

fn fnv1a64(values: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Draws every case of `kernel` and returns "name: identical/compared" lines for mismatches.
fn check_kernel(kernel: TorchKernel) -> (usize, usize, Vec<String>) {
    let (cases, golden, headtail) = load();
    let (mut same, mut compared, mut failures) = (0, 0, Vec::new());
    for case in cases.iter().filter(|c| c.kernel == kernel) {
        let mut g = TorchGenerator::with_kernel(case.seed, case.kernel);
        let mut ours = Vec::with_capacity(case.total);
        for shape in &case.draws {
            ours.extend(g.randn(shape).iter().copied());
        }
        assert_eq!(ours.len(), case.total, "{}", case.name);
        let (expected, got): (Vec<f32>, Vec<f32>) = if case.full {
            let exp = golden[case.offset..case.offset + case.total].to_vec();
            (exp, ours.clone())
        } else {
            let exp = golden[case.offset..case.offset + 2 * headtail].to_vec();
            let mut got = ours[..headtail].to_vec();
            got.extend_from_slice(&ours[case.total - headtail..]);
            (exp, got)
        };
        let n_same = expected
            .iter()
            .zip(&got)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        same += n_same;
        compared += expected.len();
        let hash_ok = fnv1a64(&ours) == case.fnv1a64;
        if n_same != expected.len() || !hash_ok {
            failures.push(format!(
                "{}: {n_same}/{} bit-identical, hash {}",
                case.name,
                expected.len(),
                if hash_ok { "ok" } else { "differs" }
            ));
        }
    }
    (same, compared, failures)
}

#[test]
fn torch_avx2_kernel_matches_goldens_bit_for_bit() {
    let (same, compared, failures) = check_kernel(TorchKernel::Avx2);
    assert!(compared > 30_000, "goldens missing? compared {compared}");
    assert!(
        failures.is_empty(),
        "{same}/{compared} identical; {failures:#?}"
    );
}

/// The generic kernel calls the platform libm, so exactness is only claimed where torch's
/// goldens were made: x86-64 Linux with glibc.
#[test]
fn torch_generic_kernel_matches_goldens_with_glibc() {
    let (same, compared, failures) = check_kernel(TorchKernel::Generic);
    assert!(compared > 1_000, "goldens missing? compared {compared}");
    if cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        assert!(
            failures.is_empty(),
            "{same}/{compared} identical; {failures:#?}"
        );
    } else {
        assert!(
            same * 100 >= compared * 95,
            "{same}/{compared} identical; {failures:#?}"
        );
    }
}

#[test]
fn torch_seed_uses_low_32_bits_like_manual_seed() {
    let draw = |seed: u64| {
        TorchGenerator::new(seed)
            .randn(&[2, 17])
            .into_raw_vec_and_offset()
            .0
    };
    assert_eq!(draw((1 << 32) + 5), draw(5));
    // Python's manual_seed(-1) is u64::MAX: the same stream as 2**32 - 1.
    assert_eq!(draw(u64::MAX), draw(u64::from(u32::MAX)));
    assert_ne!(draw(5), draw(6));
    assert_eq!(TorchGenerator::new(u64::MAX).initial_seed(), u64::MAX);
}

#[test]
fn torch_manual_seed_restarts_stream_and_drops_cached_normal() {
    let mut g = TorchGenerator::new(3);
    let first: Vec<f32> = g.randn(&[3]).iter().copied().collect();
    // An odd small draw leaves a cached value; reseeding must forget it.
    g.manual_seed(3);
    let again: Vec<f32> = g.randn(&[3]).iter().copied().collect();
    assert_eq!(first, again);
    let mut empty: [f32; 0] = [];
    g.fill_randn(&mut empty);
}

#[test]
fn fast_generator_is_deterministic_and_standard_normal() {
    let n = 100_000;
    let mut a = vec![0.0f32; n];
    FastGenerator::new(42).fill_randn(&mut a);
    // Splitting a draw does not change the stream.
    let mut b = vec![0.0f32; n];
    let mut g = FastGenerator::new(42);
    let (b1, b2) = b.split_at_mut(12_345);
    g.fill_randn(b1);
    g.fill_randn(b2);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let mut c = vec![0.0f32; 64];
    FastGenerator::new(43).fill_randn(&mut c);
    assert_ne!(&a[..64], &c[..]);

    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = a
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let kurt = a
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(4))
        .sum::<f64>()
        / n as f64
        / var.powi(2);
    let beyond_3 = a.iter().filter(|v| v.abs() > 3.0).count() as f64 / n as f64;
    assert!(mean.abs() < 0.02, "mean {mean}");
    assert!((var - 1.0).abs() < 0.03, "var {var}");
    assert!((kurt - 3.0).abs() < 0.15, "kurtosis {kurt}");
    assert!((beyond_3 - 0.0027).abs() < 0.001, "P(|x|>3) {beyond_3}");
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn rng_mode_parses_and_builds_generators() {
    assert_eq!("torch".parse::<RngMode>(), Ok(RngMode::Torch));
    assert_eq!("Fast".parse::<RngMode>(), Ok(RngMode::Fast));
    assert!("philox".parse::<RngMode>().is_err());
    assert_eq!(RngMode::Fast.to_string(), "fast");
    for mode in [RngMode::Torch, RngMode::Fast] {
        let boxed = generator(mode, 9).randn(&[1, 4, 5, 5]);
        let direct = match mode {
            RngMode::Torch => TorchGenerator::new(9).randn(&[1, 4, 5, 5]),
            RngMode::Fast => FastGenerator::new(9).randn(&[1, 4, 5, 5]),
        };
        assert_eq!(boxed, direct);
    }
}
