//! Next-token selection, applying what transformers' `generate` applies to the last logits, in its
//! order: repetition penalty, then (when sampling) temperature, top-k, top-p, softmax and a draw.
//! Greedy decoding (temperature 0) is the penalised argmax, ties to the lowest id as `torch.argmax`.
//!
//! The draw uses our own seeded generator (xoshiro256** seeded through SplitMix64), so a seed gives
//! the same tokens on every platform and thread, but not the tokens `torch.multinomial` would draw.
//! Probabilities are computed in f64 (transformers uses the logits' f32); only a token sitting
//! exactly on the top-p boundary could be kept by one and dropped by the other.
use crate::error::{Error, Result};

/// How the next token is chosen. The default is greedy decoding without penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (ties at the k-th value kept); 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p; 1 = off.
    pub top_p: f32,
    /// Divide positive and multiply negative logits of every id already in the sequence; 1 = off.
    pub repetition_penalty: f32,
    /// Seed of the draw; the same seed and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// The largest temperature accepted: beyond it sampling is uniform noise in all but name.
const MAX_TEMPERATURE: f32 = 100.0;
/// The largest repetition penalty accepted.
const MAX_PENALTY: f32 = 100.0;

impl SamplingParams {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&t) {
            return Err(Error::InvalidArg(format!(
                "temperature must be between 0 and {MAX_TEMPERATURE} (0 = greedy), got {t}"
            )));
        }
        let p = self.top_p;
        if !p.is_finite() || p <= 0.0 || p > 1.0 {
            return Err(Error::InvalidArg(format!(
                "top_p must be greater than 0 and at most 1 (1 = off), got {p}"
            )));
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 || r > MAX_PENALTY {
            return Err(Error::InvalidArg(format!(
                "repetition_penalty must be greater than 0 and at most {MAX_PENALTY} (1 = off), got {r}"
            )));
        }
        Ok(())
    }

    /// Whether tokens are drawn at random (otherwise greedy).
    pub fn is_sampling(&self) -> bool {
        self.temperature > 0.0
    }
}

/// Chooses tokens for one sequence. Owns its generator state and scratch buffers (reused between
/// tokens); one per request, not shared between threads.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256,
    /// Marks ids already penalised in this step (cleared after use).
    seen: Vec<bool>,
    /// Candidate ids for top-k and top-p.
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            params: *params,
            rng: Xoshiro256::seed_from(params.seed),
            seen: Vec::new(),
            order: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token id from the last position's `logits` (modified in place), given every id of
    /// the sequence so far (prompt and generated) for the repetition penalty. NaN logits count as
    /// -inf; when no logit is above -inf the lowest id is returned; an empty slice returns -1.
    pub fn next(&mut self, logits: &mut [f32], previous: &[i64]) -> i64 {
        self.process(logits, previous);
        if !self.params.is_sampling() {
            return argmax(logits);
        }
        let u = self.rng.next_f64();
        draw(logits, u).unwrap_or_else(|| argmax(logits))
    }

    /// The logits processors of `generate`, in its order: repetition penalty, then (only when
    /// sampling) temperature, top-k and top-p. Removed tokens become -inf.
    fn process(&mut self, logits: &mut [f32], previous: &[i64]) {
        for v in logits.iter_mut().filter(|v| v.is_nan()) {
            *v = f32::NEG_INFINITY;
        }
        if self.params.repetition_penalty != 1.0 {
            self.penalize(logits, previous);
        }
        if !self.params.is_sampling() {
            return;
        }
        if self.params.temperature != 1.0 {
            let t = self.params.temperature;
            logits.iter_mut().for_each(|v| *v /= t);
        }
        if self.params.top_k > 0 && self.params.top_k < logits.len() {
            top_k(logits, self.params.top_k, &mut self.order);
        }
        if self.params.top_p < 1.0 {
            top_p(logits, f64::from(self.params.top_p), &mut self.order);
        }
    }

    /// transformers' `RepetitionPenaltyLogitsProcessor`: every distinct id seen is penalised once.
    fn penalize(&mut self, logits: &mut [f32], previous: &[i64]) {
        let penalty = self.params.repetition_penalty;
        self.seen.resize(logits.len(), false);
        for &id in previous {
            let Some(i) = usize::try_from(id).ok().filter(|&i| i < logits.len()) else {
                continue; // ids outside the vocabulary have no logit to penalise
            };
            if std::mem::replace(&mut self.seen[i], true) {
                continue;
            }
            let v = logits[i];
            logits[i] = if v < 0.0 { v * penalty } else { v / penalty };
        }
        for &id in previous {
            if let Some(flag) = usize::try_from(id).ok().and_then(|i| self.seen.get_mut(i)) {
                *flag = false;
            }
        }
    }
}

/// The index of the largest logit, the lowest on ties; -1 for an empty slice.
fn argmax(logits: &[f32]) -> i64 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(-1, |(i, _)| i as i64)
}

/// transformers' `TopKLogitsWarper`: logits below the k-th largest become -inf (ties kept).
fn top_k(logits: &mut [f32], k: usize, scratch: &mut Vec<u32>) {
    scratch.clear();
    scratch.extend(0..logits.len() as u32);
    let by_value_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, by_value_desc);
    let threshold = logits[*kth as usize];
    for v in logits.iter_mut().filter(|v| **v < threshold) {
        *v = f32::NEG_INFINITY;
    }
}

/// transformers' `TopPLogitsWarper`: sorted ascending, a token is dropped when the cumulative
/// probability up to and including it is at most 1 - top_p; the most likely token always stays.
/// Equivalently a token stays when the probability of the tokens ranked above it is below top_p,
/// which only needs the head of the ranking: the m most likely tokens are selected and sorted
/// (m doubling until they hold top_p of the mass), not the whole vocabulary. Equal logits rank
/// the higher id first (torch's order for ties is unspecified).
fn top_p(logits: &mut [f32], top_p: f64, order: &mut Vec<u32>) {
    order.clear();
    // Tokens already at -inf have probability 0 and cannot change the cumulative sums.
    order.extend((0..logits.len() as u32).filter(|&i| logits[i as usize] > f32::NEG_INFINITY));
    let max = order
        .iter()
        .map(|&i| logits[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = order.iter().map(|&i| weight(logits[i as usize], max)).sum();
    if order.is_empty() || !(total > 0.0 && total.is_finite()) {
        return;
    }
    let descending = |a: &u32, b: &u32| {
        let (va, vb) = (logits[*a as usize], logits[*b as usize]);
        vb.total_cmp(&va).then(b.cmp(a))
    };
    let mut head = 64.min(order.len());
    let kept = loop {
        if head < order.len() {
            order.select_nth_unstable_by(head - 1, descending);
        }
        order[..head].sort_unstable_by(descending);
        if let Some(kept) = kept_prefix(&order[..head], logits, max, total, top_p) {
            break kept;
        }
        if head == order.len() {
            break head;
        }
        head = (head * 2).min(order.len());
    };
    for &i in &order[kept..] {
        logits[i as usize] = f32::NEG_INFINITY;
    }
}

/// How many of the most likely tokens (`ranked`, best first) stay under top-p: a token stays while
/// the mass ranked above it is below top_p. None when all of `ranked` stay (more may follow).
fn kept_prefix(ranked: &[u32], logits: &[f32], max: f32, total: f64, top_p: f64) -> Option<usize> {
    let mut above = 0.0;
    for (k, &i) in ranked.iter().enumerate() {
        if above >= top_p {
            return Some(k);
        }
        above += weight(logits[i as usize], max) / total;
    }
    None
}

/// exp(v - max) in f64; with an infinite max, the infinite logits share all the mass.
fn weight(v: f32, max: f32) -> f64 {
    if max == f32::INFINITY {
        return if v == f32::INFINITY { 1.0 } else { 0.0 };
    }
    (f64::from(v) - f64::from(max)).exp()
}

/// Draws an id with probability softmax(logits) using `u` in [0, 1): the first id whose
/// cumulative weight exceeds u * total. None when every logit is -inf.
fn draw(logits: &[f32], u: f64) -> Option<i64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    let total: f64 = logits.iter().map(|&v| weight(v, max)).sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last = None;
    for (i, &v) in logits.iter().enumerate() {
        let w = weight(v, max);
        if w > 0.0 {
            cumulative += w;
            last = Some(i as i64);
            if cumulative > target {
                return last;
            }
        }
    }
    // Rounding can leave target a hair above the final sum: take the last possible id.
    last
}

/// xoshiro256** 1.0 (Blackman and Vigna, public domain reference at prng.di.unimi.it), its state
/// filled by SplitMix64 from the 64-bit seed as the authors recommend. Pure integer arithmetic,
/// so the stream is identical on every platform.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn seed_from(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = splitmix64(&mut sm);
        }
        Xoshiro256 { s }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A double in [0, 1) from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64 (Steele, Lea and Flood): one step of the seeding generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;

    use super::*;
    use crate::error::ErrorCode;

    fn sampling(
        temperature: f32,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
        seed: u64,
    ) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
        }
    }

    /// The processed logits of transformers' penalty and warpers, on 50-token vocabularies.
    #[test]
    fn processors_match_transformers() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/vlm-processor-goldens/sampling.json");
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in cases.as_array().unwrap() {
            let p = &case["params"];
            let params = sampling(
                p["temperature"].as_f64().unwrap() as f32,
                p["top_k"].as_u64().unwrap() as usize,
                p["top_p"].as_f64().unwrap() as f32,
                p["repetition_penalty"].as_f64().unwrap() as f32,
                0,
            );
            let mut logits: Vec<f32> = serde_json::from_value(case["logits"].clone()).unwrap();
            let previous: Vec<i64> = serde_json::from_value(case["previous"].clone()).unwrap();
            let want: Vec<Option<f32>> = serde_json::from_value(case["processed"].clone()).unwrap();
            Sampler::new(&params)
                .unwrap()
                .process(&mut logits, &previous);
            for (i, (got, want)) in logits.iter().zip(&want).enumerate() {
                match want {
                    Some(w) => assert_eq!(got, w, "{p} token {i}"),
                    None => assert_eq!(*got, f32::NEG_INFINITY, "{p} token {i}"),
                }
            }
        }
    }

    #[test]
    fn validate_names_the_field() {
        let bad = [
            (sampling(-0.1, 0, 1.0, 1.0, 0), "temperature"),
            (sampling(f32::NAN, 0, 1.0, 1.0, 0), "temperature"),
            (sampling(101.0, 0, 1.0, 1.0, 0), "temperature"),
            (sampling(1.0, 0, 0.0, 1.0, 0), "top_p"),
            (sampling(1.0, 0, 1.5, 1.0, 0), "top_p"),
            (sampling(1.0, 0, f32::INFINITY, 1.0, 0), "top_p"),
            (sampling(1.0, 0, 1.0, 0.0, 0), "repetition_penalty"),
            (sampling(1.0, 0, 1.0, 101.0, 0), "repetition_penalty"),
            (sampling(1.0, 0, 1.0, f32::NAN, 0), "repetition_penalty"),
        ];
        for (params, field) in bad {
            let err = Sampler::new(&params).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArg);
            assert!(err.to_string().contains(field), "{err}");
        }
        assert!(SamplingParams::default().validate().is_ok());
        assert!(sampling(100.0, 5, 1.0, 100.0, 0).validate().is_ok());
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        let mut s = Sampler::new(&SamplingParams::default()).unwrap();
        assert_eq!(s.next(&mut [1.0, 3.0, 3.0, 2.0], &[]), 1);
        assert_eq!(s.next(&mut [f32::NAN, 0.5, f32::NAN], &[]), 1);
        assert_eq!(s.next(&mut [f32::NAN, f32::NAN], &[]), 0);
        assert_eq!(s.next(&mut [f32::NEG_INFINITY; 3], &[]), 0);
        assert_eq!(s.next(&mut [], &[]), -1);
        // The penalty applies before the argmax, as in transformers' greedy search.
        let mut s = Sampler::new(&sampling(0.0, 0, 1.0, 2.0, 0)).unwrap();
        assert_eq!(s.next(&mut [1.0, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn penalty_once_per_distinct_id_and_out_of_range_ids_ignored() {
        let mut s = Sampler::new(&sampling(0.0, 0, 1.0, 2.0, 0)).unwrap();
        let mut logits = [4.0, -4.0, 0.0, 1.0];
        s.process(&mut logits, &[0, 0, 1, 1, 2, -5, 99, 0]);
        assert_eq!(logits, [2.0, -8.0, 0.0, 1.0]);
        // The scratch marks are cleared: the next step penalises again from scratch.
        let mut logits = [4.0, -4.0, 0.0, 1.0];
        s.process(&mut logits, &[0]);
        assert_eq!(logits, [2.0, -4.0, 0.0, 1.0]);
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = sampling(1.0, 0, 1.0, 1.0, 1234);
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 / 4.0).collect();
        let run = |params: &SamplingParams| {
            let mut s = Sampler::new(params).unwrap();
            (0..50)
                .map(|_| s.next(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        assert_ne!(
            run(&params),
            run(&SamplingParams {
                seed: 1235,
                ..params
            })
        );
    }

    /// Draws follow softmax(logits): frequencies within a few standard errors.
    #[test]
    fn draws_follow_the_distribution() {
        let ln = |p: f64| p.ln() as f32;
        let logits = [ln(0.5), ln(0.3), ln(0.2), f32::NEG_INFINITY];
        let mut s = Sampler::new(&sampling(1.0, 0, 1.0, 1.0, 7)).unwrap();
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[s.next(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (count, p) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let freq = *count as f64 / n as f64;
            assert!((freq - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn top_k_one_and_top_p_tiny_are_greedy() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        for params in [
            sampling(1.0, 1, 1.0, 1.0, 3),
            sampling(1.0, 0, 1e-6, 1.0, 3),
        ] {
            let mut s = Sampler::new(&params).unwrap();
            for _ in 0..20 {
                assert_eq!(s.next(&mut logits.clone(), &[]), 1);
            }
        }
    }

    /// The head-only top-p keeps the same tokens as transformers' full ascending sort, on random
    /// vocabularies large enough to need several doublings.
    #[test]
    fn top_p_matches_a_full_sort() {
        let mut rng = Xoshiro256::seed_from(9);
        let mut order = Vec::new();
        for case in 0..200 {
            let n = 1 + (rng.next_u64() % 3000) as usize;
            let spread = 1.0 + (case % 7) as f64;
            let logits: Vec<f32> = (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                .collect();
            let p = [0.05, 0.3, 0.9, 0.99, 0.999][case % 5];
            let mut fast = logits.clone();
            top_p(&mut fast, p, &mut order);
            let mut reference = logits.clone();
            top_p_full_sort(&mut reference, p);
            assert_eq!(fast, reference, "case {case}, n {n}, top_p {p}");
        }
    }

    /// transformers' algorithm literally: ascending sort, cumulative softmax, drop <= 1 - top_p.
    fn top_p_full_sort(logits: &mut [f32], top_p: f64) {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(a.cmp(&b)));
        let max = logits[*order.last().unwrap()];
        let total: f64 = logits.iter().map(|&v| weight(v, max)).sum();
        let mut cumulative = 0.0;
        for &i in &order[..order.len() - 1] {
            cumulative += weight(logits[i], max) / total;
            if cumulative > 1.0 - top_p {
                break;
            }
            logits[i] = f32::NEG_INFINITY;
        }
    }

    /// Infinite and NaN logits do not panic: +inf tokens share the mass, NaN is never drawn.
    #[test]
    fn non_finite_logits() {
        let mut s = Sampler::new(&sampling(0.5, 2, 0.9, 1.2, 5)).unwrap();
        for _ in 0..20 {
            let t = s.next(&mut [f32::NAN, f32::INFINITY, 1.0, f32::INFINITY], &[1, 2]);
            assert!(t == 1 || t == 3, "{t}");
        }
        assert_eq!(s.next(&mut [f32::NAN; 4], &[]), 0);
        // A tiny temperature overflows to +inf without panicking.
        let mut s = Sampler::new(&sampling(1e-30, 0, 1.0, 1.0, 5)).unwrap();
        assert_eq!(s.next(&mut [1.0, 2.0, -3.0], &[]), 1);
    }

    /// SplitMix64's published first outputs for seed 0, and pinned xoshiro256** outputs: the
    /// stream must never change, or seeds stop reproducing.
    #[test]
    fn generator_stream_is_pinned() {
        let mut state = 0;
        let first: Vec<u64> = (0..3).map(|_| splitmix64(&mut state)).collect();
        assert_eq!(
            first,
            vec![0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
        let mut rng = Xoshiro256::seed_from(42);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(got, PINNED_SEED_42);
        let u = Xoshiro256::seed_from(42).next_f64();
        assert!((0.0..1.0).contains(&u));
    }

    // Checked against an independent Python transcription of the reference C code.
    const PINNED_SEED_42: [u64; 3] = [
        1546998764402558742,
        6990951692964543102,
        12544586762248559009,
    ];
}
