//! Multimodal rotary position ids (M-RoPE) of Qwen2-VL / Qwen2.5-VL, as transformers'
//! `Qwen2_5_VLModel.get_rope_index` computes them for images (one sequence, no padding).
//!
//! Every token gets three positions (temporal, height, width). Text tokens get (p, p, p) with p
//! counting up. The `<|image_pad|>` run of an image whose merged grid is t x h x w gets
//! (s + ti, s + row, s + col) with s the position after the preceding text; text then resumes at
//! s + max(h, w). Because an image spans fewer positions than tokens, the last position is smaller
//! than the sequence length: the difference (`delta`) shifts every decode-step position.
use ndarray::Array2;

use crate::error::{Error, Result};

/// A run of consecutive image-pad tokens: its first index and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PadRun {
    start: usize,
    len: usize,
}

/// Positions `[3, seq]` for a prompt and its rope delta (`max position + 1 - seq`).
///
/// `grids` holds one `[t, h, w]` (in patches, as `image_grid_thw`) per image, in prompt order; each
/// run of `image_token_id` must directly follow `vision_start_token_id` and hold exactly
/// `t * h * w / spatial_merge_size^2` tokens. A prompt without images gets 0..seq on all rows.
pub fn rope_index(
    input_ids: &[i64],
    grids: &[[i64; 3]],
    spatial_merge_size: usize,
    image_token_id: i64,
    vision_start_token_id: i64,
) -> Result<(Array2<i64>, i64)> {
    if spatial_merge_size == 0 {
        return Err(Error::InvalidArg(
            "spatial_merge_size must be at least 1".into(),
        ));
    }
    let runs = pad_runs(input_ids, image_token_id);
    if runs.len() != grids.len() {
        return Err(Error::InvalidArg(format!(
            "the prompt has {} image-pad runs but {} images were given",
            runs.len(),
            grids.len()
        )));
    }
    let merged = grids
        .iter()
        .enumerate()
        .map(|(i, g)| merged_grid(i, g, spatial_merge_size))
        .collect::<Result<Vec<_>>>()?;
    check_runs(input_ids, &runs, &merged, vision_start_token_id)?;
    let mut positions = Array2::<i64>::zeros((3, input_ids.len()));
    let mut next = 0i64; // the position of the next text token
    let mut cursor = 0usize; // the next token index to place
    for (run, &[t, h, w]) in runs.iter().zip(&merged) {
        next = place_text(&mut positions, cursor, run.start, next);
        place_image(&mut positions, run.start, next, [t, h, w]);
        next += h.max(w);
        cursor = run.start + run.len;
    }
    place_text(&mut positions, cursor, input_ids.len(), next);
    let max = positions.iter().copied().max().unwrap_or(-1);
    Ok((positions, max + 1 - input_ids.len() as i64))
}

/// Positions of `new_tokens` tokens appended after `past_len` cached ones: every row is
/// `past_len + i + delta` (transformers' `compute_3d_position_ids` with a cache).
pub fn decode_positions(past_len: usize, delta: i64, new_tokens: usize) -> Array2<i64> {
    let first = past_len as i64 + delta;
    Array2::from_shape_fn((3, new_tokens), |(_, i)| first + i as i64)
}

/// Maximal runs of `token` in `ids`, in order.
fn pad_runs(ids: &[i64], token: i64) -> Vec<PadRun> {
    let mut runs: Vec<PadRun> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if id != token {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.start + run.len == i => run.len += 1,
            _ => runs.push(PadRun { start: i, len: 1 }),
        }
    }
    runs
}

/// An image's grid in LLM tokens: (t, h / merge, w / merge), refusing grids that do not merge.
fn merged_grid(index: usize, grid: &[i64; 3], merge: usize) -> Result<[i64; 3]> {
    let m = merge as i64;
    let [t, h, w] = *grid;
    let valid = t >= 1 && h >= 1 && w >= 1 && h % m == 0 && w % m == 0;
    // Bounded so the products below cannot overflow.
    if !valid || t > 1 << 16 || h > 1 << 20 || w > 1 << 20 {
        return Err(Error::InvalidArg(format!(
            "image {index}: grid [{t}, {h}, {w}] is not a positive grid divisible by the merge size {merge}"
        )));
    }
    Ok([t, h / m, w / m])
}

/// Each run must follow a vision-start token and hold exactly its image's merged token count.
fn check_runs(ids: &[i64], runs: &[PadRun], merged: &[[i64; 3]], vision_start: i64) -> Result<()> {
    for (i, (run, [t, h, w])) in runs.iter().zip(merged).enumerate() {
        let expected = t * h * w;
        if run.len as i64 != expected {
            return Err(Error::InvalidArg(format!(
                "image {i}: the prompt has {} image-pad tokens but its grid needs {expected}",
                run.len
            )));
        }
        let before = run.start.checked_sub(1).and_then(|j| ids.get(j));
        if before != Some(&vision_start) {
            return Err(Error::InvalidArg(format!(
                "image {i}: its image-pad tokens at {} do not follow the vision-start token {vision_start}",
                run.start
            )));
        }
    }
    Ok(())
}

/// Text tokens `from..to` get `next, next + 1, ...` on all rows; returns the position after them.
fn place_text(positions: &mut Array2<i64>, from: usize, to: usize, next: i64) -> i64 {
    for (k, i) in (from..to).enumerate() {
        for row in 0..3 {
            positions[[row, i]] = next + k as i64;
        }
    }
    next + to.saturating_sub(from) as i64
}

/// An image's tokens from `start`, in (t, row, col) order, offset by `base` on every row.
fn place_image(positions: &mut Array2<i64>, start: usize, base: i64, [t, h, w]: [i64; 3]) {
    let mut i = start;
    for ti in 0..t {
        for row in 0..h {
            for col in 0..w {
                positions[[0, i]] = base + ti;
                positions[[1, i]] = base + row;
                positions[[2, i]] = base + col;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;

    use super::*;
    use crate::error::ErrorCode;

    const PAD: i64 = 151655;
    const START: i64 = 151652;

    fn goldens() -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/vlm-processor-goldens/rope.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn rows(v: &Value) -> Vec<Vec<i64>> {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn to_rows(a: &Array2<i64>) -> Vec<Vec<i64>> {
        a.rows().into_iter().map(|r| r.to_vec()).collect()
    }

    /// get_rope_index and compute_3d_position_ids of transformers' Qwen2.5-VL: text only, one
    /// image, two images, an image first and an image last.
    #[test]
    fn matches_transformers() {
        let g = goldens();
        assert_eq!(g["image_token_id"], PAD);
        let cases = g["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 5);
        for case in cases {
            let ids: Vec<i64> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            let grids: Vec<[i64; 3]> = serde_json::from_value(case["grids"].clone()).unwrap();
            let (pos, delta) = rope_index(&ids, &grids, 2, PAD, START).unwrap();
            assert_eq!(
                to_rows(&pos),
                rows(&case["position_ids"]),
                "{}",
                case["name"]
            );
            assert_eq!(delta, case["delta"].as_i64().unwrap(), "{}", case["name"]);
            for step in case["decode"].as_array().unwrap() {
                let past = step["past_len"].as_u64().unwrap() as usize;
                let new = step["new_tokens"].as_u64().unwrap() as usize;
                let got = decode_positions(past, delta, new);
                assert_eq!(
                    to_rows(&got),
                    rows(&step["position_ids"]),
                    "{} {step}",
                    case["name"]
                );
            }
        }
    }

    fn prompt(pads: usize) -> Vec<i64> {
        let mut ids = vec![1, 2, START];
        ids.extend(std::iter::repeat_n(PAD, pads));
        ids.extend([3, 4]);
        ids
    }

    #[test]
    fn mismatched_images_are_invalid_arg() {
        let check = |ids: &[i64], grids: &[[i64; 3]], words: &str| {
            let err = rope_index(ids, grids, 2, PAD, START).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArg);
            assert!(err.to_string().contains(words), "{err}");
        };
        check(&prompt(6), &[], "1 image-pad runs but 0 images");
        check(
            &prompt(6),
            &[[1, 4, 6], [1, 4, 6]],
            "1 image-pad runs but 2 images",
        );
        check(
            &prompt(5),
            &[[1, 4, 6]],
            "5 image-pad tokens but its grid needs 6",
        );
        check(&prompt(6), &[[1, 4, 5]], "not a positive grid");
        check(&prompt(6), &[[0, 4, 6]], "not a positive grid");
        check(&prompt(6), &[[1, -4, 6]], "not a positive grid");
        let mut no_start = prompt(6);
        no_start[2] = 9;
        check(
            &no_start,
            &[[1, 4, 6]],
            "do not follow the vision-start token",
        );
        let mut first = vec![PAD; 6];
        first.push(1);
        check(&first, &[[1, 4, 6]], "do not follow the vision-start token");
        assert_eq!(
            rope_index(&prompt(6), &[[1, 4, 6]], 0, PAD, START)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidArg
        );
    }

    #[test]
    fn text_only_and_empty() {
        let (pos, delta) = rope_index(&[5, 6, 7], &[], 2, PAD, START).unwrap();
        assert_eq!(to_rows(&pos), vec![vec![0, 1, 2]; 3]);
        assert_eq!(delta, 0);
        let (pos, delta) = rope_index(&[], &[], 2, PAD, START).unwrap();
        assert_eq!((pos.dim(), delta), ((3, 0), 0));
        assert_eq!(decode_positions(4, -3, 0).dim(), (3, 0));
    }
}
