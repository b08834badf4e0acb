//! What a model name says about sizes, image counts and edits, and the size sent for a request:
//! the listed sizes of gpt-image-1 and dall-e, gpt-image-2's free sizes, and the nearest size
//! `best_effort` sends instead of one the model does not make (see the notes in mod.rs).
use crate::error::{Error, Result};
use crate::generators::Sizes;
use crate::image::MAX_IMAGE_SIDE;
use crate::request::Request;

const GPT_IMAGE_SIZES: &[(u32, u32)] = &[(1024, 1024), (1536, 1024), (1024, 1536)];
const DALL_E_3_SIZES: &[(u32, u32)] = &[(1024, 1024), (1792, 1024), (1024, 1792)];
const DALL_E_2_SIZES: &[(u32, u32)] = &[(256, 256), (512, 512), (1024, 1024)];

/// gpt-image-2's free sizes: sides a multiple of 16, ratio up to 3:1, at most 3840x2160.
const GPT_IMAGE_2_MULTIPLE: u32 = 16;
const GPT_IMAGE_2_LONG: u32 = 3840;
const GPT_IMAGE_2_SHORT: u32 = 2160;
const GPT_IMAGE_2_RATIO: u32 = 3;

/// What the model name says about sizes, image counts and edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// gpt-image-1, -1-mini, -1.5, chatgpt-image-latest.
    GptImage,
    GptImage2,
    DallE3,
    DallE2,
    /// An OpenAI-compatible server's model: nothing is assumed.
    Other,
}

impl Family {
    pub(super) fn of(model: &str) -> Family {
        // The model itself or a dated snapshot of it (`gpt-image-1-2025-04-15`).
        let is = |name: &str| {
            model
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        };
        if is("gpt-image-2") {
            Family::GptImage2
        } else if is("gpt-image-1") || is("gpt-image-1.5") || is("chatgpt-image-latest") {
            Family::GptImage
        } else if is("dall-e-3") {
            Family::DallE3
        } else if is("dall-e-2") {
            Family::DallE2
        } else {
            Family::Other
        }
    }

    fn listed(self) -> Option<&'static [(u32, u32)]> {
        match self {
            Family::GptImage => Some(GPT_IMAGE_SIZES),
            Family::DallE3 => Some(DALL_E_3_SIZES),
            Family::DallE2 => Some(DALL_E_2_SIZES),
            Family::GptImage2 | Family::Other => None,
        }
    }

    pub(super) fn sizes(self) -> Sizes {
        match (self, self.listed()) {
            (_, Some(list)) => Sizes::Listed(list.to_vec()),
            // Closest of the three kinds; the ratio and the short-side limit are checked on use.
            (Family::GptImage2, None) => Sizes::Multiple {
                multiple: GPT_IMAGE_2_MULTIPLE,
                max: GPT_IMAGE_2_LONG,
                default: None,
            },
            _ => Sizes::Any,
        }
    }

    /// The most images one call makes (`n`), where known.
    pub(super) fn max_images(self) -> Option<usize> {
        match self {
            Family::DallE3 => Some(1),
            Family::Other => None,
            _ => Some(10),
        }
    }

    pub(super) fn edits(self) -> bool {
        self != Family::DallE3
    }

    /// GPT image models choose the size themselves on `auto`; dall-e and unknown servers may
    /// not know the word, so they get no `size` at all.
    pub(super) fn knows_auto(self) -> bool {
        matches!(self, Family::GptImage | Family::GptImage2)
    }

    pub(super) fn always_base64(self) -> bool {
        matches!(self, Family::GptImage | Family::GptImage2)
    }
}

/// The size a request asks for, `None` when it leaves it to the service.
pub(super) fn requested_size(request: &Request) -> Result<Option<(u32, u32)>> {
    match (request.width, request.height) {
        (None, None) => Ok(None),
        (Some(w), Some(h)) => {
            for (name, v) in [("width", w), ("height", h)] {
                if v == 0 || v > MAX_IMAGE_SIDE {
                    return Err(Error::InvalidArg(format!(
                        "{name} {v} must be between 1 and {MAX_IMAGE_SIDE}"
                    )));
                }
            }
            Ok(Some((w, h)))
        }
        _ => Err(Error::InvalidArg(
            "width and height go together: set both, or neither for the service's default size"
                .into(),
        )),
    }
}

/// Why a size does not fit a model: what it makes, and the nearest size it does make.
#[derive(Debug, PartialEq)]
pub(super) struct Misfit {
    pub accepted: String,
    pub nearest: (u32, u32),
}

/// The size to send for `asked`, or why it does not fit the model.
pub(super) fn fit_size(family: Family, asked: (u32, u32)) -> Result<(u32, u32), Misfit> {
    if let Some(list) = family.listed() {
        if list.contains(&asked) {
            return Ok(asked);
        }
        let names: Vec<String> = list.iter().map(|(w, h)| format!("{w}x{h}")).collect();
        return Err(Misfit {
            accepted: format!("only {}", names.join(", ")),
            nearest: nearest_listed(list, asked),
        });
    }
    if family != Family::GptImage2 {
        return Ok(asked);
    }
    let (w, h) = asked;
    let (long, short) = (w.max(h), w.min(h));
    let fits = w % GPT_IMAGE_2_MULTIPLE == 0
        && h % GPT_IMAGE_2_MULTIPLE == 0
        && long <= GPT_IMAGE_2_RATIO * short
        && long <= GPT_IMAGE_2_LONG
        && short <= GPT_IMAGE_2_SHORT;
    if fits {
        return Ok(asked);
    }
    Err(Misfit {
        accepted: format!(
            "sides that are multiples of {GPT_IMAGE_2_MULTIPLE}, at most \
             {GPT_IMAGE_2_RATIO}:1, up to {GPT_IMAGE_2_LONG}x{GPT_IMAGE_2_SHORT}"
        ),
        nearest: nearest_free(asked),
    })
}

/// The listed size closest in aspect ratio (log scale, so 2:1 and 1:2 are equally far from 1:1),
/// then in area.
fn nearest_listed(list: &[(u32, u32)], (w, h): (u32, u32)) -> (u32, u32) {
    let ratio = (f64::from(w) / f64::from(h)).ln();
    let area = f64::from(w) * f64::from(h);
    let distance = |&(lw, lh): &(u32, u32)| {
        let r = ((f64::from(lw) / f64::from(lh)).ln() - ratio).abs();
        let a = (f64::from(lw) * f64::from(lh) - area).abs();
        (r, a)
    };
    list.iter()
        .copied()
        .min_by(|a, b| {
            distance(a)
                .partial_cmp(&distance(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or((1024, 1024))
}

/// gpt-image-2: the ratio clamped to 3:1, scaled down into 3840x2160, sides rounded down to 16.
fn nearest_free((w, h): (u32, u32)) -> (u32, u32) {
    let m = GPT_IMAGE_2_MULTIPLE;
    let (long, short) = (f64::from(w.max(h)), f64::from(w.min(h)));
    let long = long.min(short * f64::from(GPT_IMAGE_2_RATIO));
    let scale = 1f64
        .min(f64::from(GPT_IMAGE_2_LONG) / long)
        .min(f64::from(GPT_IMAGE_2_SHORT) / short);
    let round = |v: f64| ((v / f64::from(m)).floor() as u32).max(1) * m;
    let short = round(short * scale);
    // Rounding the short side down may break the ratio; the long side follows it.
    let long = round(long * scale).min(short * GPT_IMAGE_2_RATIO);
    if w >= h {
        (long, short)
    } else {
        (short, long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_say_which_sizes_they_make() {
        assert_eq!(Family::of("gpt-image-1"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-1-mini"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-1.5"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-1-2025-04-15"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-2-2026-04-21"), Family::GptImage2);
        assert_eq!(Family::of("gpt-image-10"), Family::Other);
        assert_eq!(Family::of("dall-e-3"), Family::DallE3);
        assert_eq!(Family::of("sd-turbo"), Family::Other);

        let gpt = Family::GptImage;
        assert_eq!(fit_size(gpt, (1536, 1024)), Ok((1536, 1024)));
        let misfit = fit_size(gpt, (512, 512)).unwrap_err();
        assert_eq!(misfit.nearest, (1024, 1024));
        assert!(misfit.accepted.contains("1024x1536"), "{}", misfit.accepted);
        assert_eq!(
            fit_size(gpt, (1920, 1080)).unwrap_err().nearest,
            (1536, 1024)
        );
        assert_eq!(
            fit_size(gpt, (600, 1000)).unwrap_err().nearest,
            (1024, 1536)
        );
        assert_eq!(
            fit_size(Family::DallE3, (1000, 2000)).unwrap_err().nearest,
            (1024, 1792)
        );
        assert_eq!(
            fit_size(Family::DallE2, (300, 300)).unwrap_err().nearest,
            (256, 256)
        );
        assert_eq!(fit_size(Family::Other, (77, 33)), Ok((77, 33)));

        let free = Family::GptImage2;
        assert_eq!(fit_size(free, (1536, 864)), Ok((1536, 864)));
        assert_eq!(fit_size(free, (2160, 3840)), Ok((2160, 3840)));
        for (asked, nearest) in [
            ((1000, 1000), (992, 992)),
            ((4000, 1000), (2976, 992)),
            ((3840, 3840), (2160, 2160)),
            ((100, 7000), (96, 288)),
        ] {
            let misfit = fit_size(free, asked).unwrap_err();
            assert_eq!(misfit.nearest, nearest, "{asked:?}");
            assert_eq!(
                fit_size(free, nearest),
                Ok(nearest),
                "{asked:?} -> {nearest:?}"
            );
        }
    }
}
