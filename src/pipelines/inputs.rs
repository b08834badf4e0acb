//! Image and mask inputs turned into tensors the way diffusers' VaeImageProcessor prepares them.
use ndarray::Array4;

use crate::error::{Error, Result};
use crate::image::Image;

/// [1, 3, H, W] in [-1, 1]: `x / 255` then `2x - 1`, both in float32 as diffusers computes them.
pub(crate) fn image_tensor(image: &Image) -> Array4<f32> {
    let (w, h) = (image.width as usize, image.height as usize);
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
        let v = f32::from(image.pixels[(y * w + x) * 3 + c]) / 255.0;
        2.0 * v - 1.0
    })
}

/// [1, 1, H, W] of 0/1: grayscale as PIL's `convert("L")` (ITU-R 601-2 luma in 16.16 fixed point),
/// then binarised at 0.5 like diffusers' mask processor. 1 marks the pixels to repaint.
pub(crate) fn mask_tensor(mask: &Image) -> Array4<f32> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    Array4::from_shape_fn((1, 1, h, w), |(_, _, y, x)| {
        let p = &mask.pixels[(y * w + x) * 3..][..3];
        let luma =
            (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000)
                >> 16;
        if luma as f32 / 255.0 >= 0.5 {
            1.0
        } else {
            0.0
        }
    })
}

/// Checks that an input image has the size the request produces. diffusers would resample a
/// mismatched image with Lanczos; diffgentor refuses instead, so no pixel is invented silently.
pub(crate) fn check_input_size(what: &str, image: &Image, width: u32, height: u32) -> Result<()> {
    if (image.width, image.height) == (width, height) {
        return Ok(());
    }
    Err(Error::InvalidArg(format!(
        "{what} is {}x{} but the request is {width}x{height}; resize it to the output size first \
         (diffgentor does not resample input images)",
        image.width, image.height
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_map_to_minus_one_one() {
        let image = Image {
            width: 2,
            height: 1,
            pixels: vec![0, 255, 128, 255, 0, 51],
        };
        let t = image_tensor(&image);
        assert_eq!(t.shape(), &[1, 3, 1, 2]);
        assert_eq!(t[[0, 0, 0, 0]], -1.0);
        assert_eq!(t[[0, 1, 0, 0]], 1.0);
        assert_eq!(t[[0, 2, 0, 0]], 2.0 * (128.0f32 / 255.0) - 1.0);
        assert_eq!(t[[0, 2, 0, 1]], 2.0 * (51.0f32 / 255.0) - 1.0);
    }

    #[test]
    fn mask_binarises_pil_luma_at_half() {
        // luma 127 stays, 128 is repainted; pure red has luma 76, pure green 150.
        let mask = Image {
            width: 4,
            height: 1,
            pixels: vec![127, 127, 127, 128, 128, 128, 255, 0, 0, 0, 255, 0],
        };
        let m = mask_tensor(&mask);
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), [0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn size_mismatch_is_an_error_naming_both_sizes() {
        let image = Image {
            width: 3,
            height: 2,
            pixels: vec![0; 18],
        };
        assert!(check_input_size("image", &image, 3, 2).is_ok());
        let err = check_input_size("mask", &image, 64, 64).unwrap_err();
        assert!(
            err.to_string()
                .contains("mask is 3x2 but the request is 64x64"),
            "{err}"
        );
    }
}
