//! Resizing of [n, c, h, w] tensors with PyTorch's `interpolate` index rules (float32 arithmetic).
use ndarray::{Array4, ArrayView4};

use crate::request::Resample;

/// Resizes the two spatial axes of `input` to `height` x `width`.
pub fn resize(
    input: ArrayView4<'_, f32>,
    height: usize,
    width: usize,
    mode: Resample,
) -> Array4<f32> {
    let (n, c, in_h, in_w) = input.dim();
    let (scale_h, scale_w) = (in_h as f32 / height as f32, in_w as f32 / width as f32);
    match mode {
        Resample::Nearest | Resample::NearestExact => {
            let offset = if mode == Resample::Nearest { 0.0 } else { 0.5 };
            let index = |dst: usize, scale: f32, len: usize| {
                (((dst as f32 + offset) * scale).floor() as usize).min(len - 1)
            };
            let rows: Vec<usize> = (0..height).map(|y| index(y, scale_h, in_h)).collect();
            let cols: Vec<usize> = (0..width).map(|x| index(x, scale_w, in_w)).collect();
            Array4::from_shape_fn((n, c, height, width), |(b, ch, y, x)| {
                input[[b, ch, rows[y], cols[x]]]
            })
        }
        Resample::Bilinear => {
            let rows: Vec<Tap> = (0..height).map(|y| Tap::new(y, scale_h, in_h)).collect();
            let cols: Vec<Tap> = (0..width).map(|x| Tap::new(x, scale_w, in_w)).collect();
            Array4::from_shape_fn((n, c, height, width), |(b, ch, y, x)| {
                let (r, q) = (&rows[y], &cols[x]);
                let at = |i: usize, j: usize| input[[b, ch, i, j]];
                r.w0 * (q.w0 * at(r.i0, q.i0) + q.w1 * at(r.i0, q.i1))
                    + r.w1 * (q.w0 * at(r.i1, q.i0) + q.w1 * at(r.i1, q.i1))
            })
        }
    }
}

/// The two source indices and weights of one output coordinate (align_corners=False).
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

impl Tap {
    fn new(dst: usize, scale: f32, len: usize) -> Tap {
        let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(len - 1);
        let i1 = if i0 < len - 1 { i0 + 1 } else { i0 };
        let w1 = src - i0 as f32;
        Tap {
            i0,
            i1,
            w0: 1.0 - w1,
            w1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn ramp(h: usize, w: usize) -> Array4<f32> {
        Array::from_shape_fn((1, 1, h, w), |(_, _, y, x)| (y * w + x) as f32)
    }

    #[test]
    fn nearest_exact_doubles_every_pixel() {
        let out = resize(ramp(2, 3).view(), 4, 6, Resample::NearestExact);
        let row0: Vec<f32> = out.slice(ndarray::s![0, 0, 0, ..]).to_vec();
        assert_eq!(row0, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(out[[0, 0, 3, 5]], 5.0);
    }

    #[test]
    fn nearest_and_nearest_exact_differ_on_downscale() {
        // torch: interpolate(arange(3), size=2, mode="nearest") = [0, 1]; "nearest-exact" = [0, 2].
        let input = ramp(1, 3);
        let nearest = resize(input.view(), 1, 2, Resample::Nearest);
        let exact = resize(input.view(), 1, 2, Resample::NearestExact);
        assert_eq!(nearest.iter().copied().collect::<Vec<_>>(), [0.0, 1.0]);
        assert_eq!(exact.iter().copied().collect::<Vec<_>>(), [0.0, 2.0]);
    }

    #[test]
    fn bilinear_matches_torch() {
        // torch.nn.functional.interpolate(arange(3.).view(1,1,1,3), size=(1,6), mode="bilinear")
        // -> [0, 0.25, 0.75, 1.25, 1.75, 2]
        let out = resize(ramp(1, 3).view(), 1, 6, Resample::Bilinear);
        let got: Vec<f32> = out.iter().copied().collect();
        assert_eq!(got, [0.0, 0.25, 0.75, 1.25, 1.75, 2.0]);
    }

    #[test]
    fn modes_parse_by_torch_name() {
        assert_eq!("bilinear".parse::<Resample>().unwrap(), Resample::Bilinear);
        assert!("bicubic".parse::<Resample>().is_err());
    }
}
