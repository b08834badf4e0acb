//! How a batch of UNet predictions becomes one guided prediction per image.
use ndarray::{Array2, ArrayD, ArrayViewD, ArrayViewMutD, Axis, Zip};

/// Which prompt fills one group of the UNet batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    Prompt,
    Negative,
}

/// The guidance a request runs with, decided as diffusers decides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Guidance {
    /// One pass per image (guidance scale <= 1).
    None,
    /// Classifier-free guidance: batch [uncond; text].
    Cfg { scale: f32 },
    /// InstructPix2Pix: batch [text + image; uncond text + image; uncond text + no image].
    Pix2Pix { text: f32, image: f32 },
}

impl Guidance {
    /// The prompt of each batch group, in the order diffusers concatenates the embeddings.
    pub(crate) fn texts(self) -> &'static [Text] {
        match self {
            Guidance::None => &[Text::Prompt],
            Guidance::Cfg { .. } => &[Text::Negative, Text::Prompt],
            Guidance::Pix2Pix { .. } => &[Text::Prompt, Text::Negative, Text::Negative],
        }
    }

    /// Number of copies of the latents in one UNet batch.
    pub(crate) fn groups(self) -> usize {
        self.texts().len()
    }

    /// Combines `prediction` ([groups * n, ...]) in place: its first n rows become the guided
    /// prediction.
    pub(crate) fn combine(self, mut prediction: ArrayViewMutD<'_, f32>) {
        let n = prediction.shape()[0] / self.groups();
        match self {
            Guidance::None => {}
            Guidance::Cfg { scale } => {
                let (mut uncond, text) = prediction.view_mut().split_at(Axis(0), n);
                Zip::from(&mut uncond)
                    .and(&text)
                    .for_each(|u, &t| *u += scale * (t - *u));
            }
            Guidance::Pix2Pix { text, image } => {
                let (mut cond, rest) = prediction.view_mut().split_at(Axis(0), n);
                let (with_image, uncond) = rest.split_at(Axis(0), n);
                // diffusers: uncond + text * (cond - image) + image * (image - uncond), in float32.
                Zip::from(&mut cond)
                    .and(&with_image)
                    .and(&uncond)
                    .for_each(|c, &i, &u| *c = u + text * (*c - i) + image * (i - u));
            }
        }
    }
}

/// The guidance-scale embedding LCM-distilled UNets take as `timestep_cond` ([batch, dim]),
/// computed in float32 as diffusers' `get_guidance_scale_embedding`: w * 1000 against the
/// frequencies exp(-i * ln(10000) / (dim/2 - 1)), as [sin | cos], zero-padded to an odd `dim`.
pub(crate) fn scale_embedding(w: f32, dim: usize, batch: usize) -> Array2<f32> {
    let half = dim / 2;
    let step = 10000f32.ln() / (half.saturating_sub(1).max(1)) as f32;
    let w = w * 1000.0;
    let mut row = vec![0.0f32; dim];
    for i in 0..half {
        let angle = w * (i as f32 * -step).exp();
        row[i] = angle.sin();
        row[half + i] = angle.cos();
    }
    Array2::from_shape_fn((batch, dim), |(_, j)| row[j])
}

/// Classifier-free guidance in place, without allocating: `prediction` holds [uncond; text] along
/// axis 0, and its first half becomes `uncond + scale * (text - uncond)` (diffusers' float32 order).
pub fn apply_guidance(prediction: &mut ArrayD<f32>, scale: f32) -> ArrayViewD<'_, f32> {
    Guidance::Cfg { scale }.combine(prediction.view_mut());
    let n = prediction.shape()[0] / 2;
    prediction.slice_axis(Axis(0), (0..n).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn pix2pix_combines_three_groups_like_diffusers() {
        // groups of one image: cond 3, image 2, uncond 1.
        let mut p = arr1(&[3.0f32, 2.0, 1.0]).into_dyn();
        let g = Guidance::Pix2Pix {
            text: 7.5,
            image: 1.5,
        };
        g.combine(p.view_mut());
        assert_eq!(p[0], 1.0 + 7.5 * 1.0 + 1.5 * 1.0);
    }

    #[test]
    fn cfg_and_none() {
        let mut p = arr1(&[1.0f32, 3.0]).into_dyn();
        assert_eq!(apply_guidance(&mut p, 2.0).as_slice().unwrap(), &[5.0]);
        let mut p = arr1(&[4.0f32]).into_dyn();
        Guidance::None.combine(p.view_mut());
        assert_eq!(p[0], 4.0);
        assert_eq!(
            Guidance::Pix2Pix {
                text: 1.0,
                image: 1.0
            }
            .groups(),
            3
        );
    }
}
