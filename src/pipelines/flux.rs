//! FLUX's latent layout: 2x2 patches packed into tokens, their position ids, and the
//! resolution-dependent shift of the sigma schedule.
use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayView4};
use serde_json::Value;

/// [n, c, h, w] -> [n, (h/2)(w/2), 4c]: diffusers' `_pack_latents` (view, permute(0,2,4,1,3,5),
/// reshape), so token (i, j) holds channel-major 2x2 patches.
pub fn pack(latents: ArrayView4<'_, f32>) -> Array3<f32> {
    let (n, c, h, w) = latents.dim();
    let (h2, w2) = (h / 2, w / 2);
    Array3::from_shape_fn((n, h2 * w2, c * 4), |(b, token, k)| {
        let (i, j) = (token / w2, token % w2);
        let (ch, dy, dx) = (k / 4, (k / 2) % 2, k % 2);
        latents[[b, ch, 2 * i + dy, 2 * j + dx]]
    })
}

/// The inverse of [`pack`] for latents of `height` x `width` (latent pixels).
pub fn unpack(packed: ArrayView3<'_, f32>, height: usize, width: usize) -> Array4<f32> {
    let (n, _, k) = packed.dim();
    let w2 = width / 2;
    Array4::from_shape_fn((n, k / 4, height, width), |(b, ch, y, x)| {
        packed[[b, (y / 2) * w2 + x / 2, ch * 4 + (y % 2) * 2 + x % 2]]
    })
}

/// `img_ids` [(h/2)(w/2), 3]: (0, row, column) of every token, as `_prepare_latent_image_ids`.
pub(crate) fn image_ids(height: usize, width: usize) -> Array2<f32> {
    let w2 = width / 2;
    Array2::from_shape_fn(((height / 2) * w2, 3), |(token, k)| match k {
        1 => (token / w2) as f32,
        2 => (token % w2) as f32,
        _ => 0.0,
    })
}

/// numpy's `linspace(start, stop, n)`: `start + i * step`, the last value exactly `stop`.
pub(crate) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// diffusers' `calculate_shift`: mu grows linearly with the image's token count between the
/// scheduler config's (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift).
pub(crate) fn shift_mu(scheduler_config: &Value, image_seq_len: usize) -> f64 {
    let get = |key: &str, default: f64| {
        scheduler_config
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or(default)
    };
    let (base_len, max_len) = (
        get("base_image_seq_len", 256.0),
        get("max_image_seq_len", 4096.0),
    );
    let (base_shift, max_shift) = (get("base_shift", 0.5), get("max_shift", 1.15));
    let m = (max_shift - base_shift) / (max_len - base_len);
    let b = base_shift - m * base_len;
    image_seq_len as f64 * m + b
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn pack_and_unpack_are_inverse_and_match_diffusers_order() {
        let latents =
            Array::from_shape_fn((1, 2, 4, 6), |(_, c, y, x)| (c * 100 + y * 10 + x) as f32);
        let packed = pack(latents.view());
        assert_eq!(packed.shape(), &[1, 6, 8]);
        // token (0, 1) = rows 0-1, columns 2-3; channel 0 first: (0,2) (0,3) (1,2) (1,3).
        assert_eq!(
            packed.slice(ndarray::s![0, 1, ..4]).to_vec(),
            [2.0, 3.0, 12.0, 13.0]
        );
        assert_eq!(unpack(packed.view(), 4, 6), latents);
    }

    #[test]
    fn image_ids_count_rows_and_columns() {
        let ids = image_ids(4, 6);
        assert_eq!(ids.shape(), &[6, 3]);
        assert_eq!(ids.row(4).to_vec(), [0.0, 1.0, 1.0]);
    }

    #[test]
    fn mu_is_linear_in_the_token_count() {
        let config = serde_json::json!({});
        assert!((shift_mu(&config, 256) - 0.5).abs() < 1e-12);
        assert!((shift_mu(&config, 4096) - 1.15).abs() < 1e-12);
    }
}
