//! Gemini takes an aspect ratio and a size tier, not pixels: a request's width and height become
//! `imageConfig.aspectRatio` and `imageConfig.imageSize` (see the notes in mod.rs).
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::request::Request;

/// The ratios the SDK documents, as (width, height) terms; 21:9 is not reduced on purpose, so the
/// text sent is the one the API knows.
const ASPECT_RATIOS: &[(u32, u32)] = &[
    (1, 1),
    (2, 3),
    (3, 2),
    (3, 4),
    (4, 3),
    (9, 16),
    (16, 9),
    (21, 9),
];

/// The aspect ratio and size tier a request's width and height ask for (see the notes in mod.rs);
/// `size` is pushed to `ignored` where best effort had to bend them.
pub(super) fn request_image_config(
    request: &Request,
    ignored: &mut Vec<String>,
) -> Result<(Option<String>, Option<String>)> {
    let supported = || {
        ASPECT_RATIOS
            .iter()
            .map(|(a, b)| format!("{a}:{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (request.width, request.height) {
        (None, None) => Ok((None, None)),
        (Some(0), _) | (_, Some(0)) => Err(Error::InvalidArg(
            "width and height must be positive".into(),
        )),
        (Some(w), Some(h)) => {
            let exact = ASPECT_RATIOS
                .iter()
                .find(|(a, b)| u64::from(w) * u64::from(*b) == u64::from(h) * u64::from(*a));
            let (a, b) = match exact {
                Some(ratio) => *ratio,
                None if request.best_effort => {
                    ignored.push("size".into());
                    nearest_ratio(w, h)
                }
                None => {
                    let (a, b) = nearest_ratio(w, h);
                    return Err(Error::Unsupported(format!(
                        "`size` {w}x{h}: gemini takes an aspect ratio ({}), and {w}:{h} is none \
                         of them (the nearest is {a}:{b}; set best_effort to use it)",
                        supported()
                    )));
                }
            };
            Ok((Some(format!("{a}:{b}")), size_tier(w.max(h))))
        }
        (Some(side), None) | (None, Some(side)) => {
            if !request.best_effort {
                return Err(Error::Unsupported(
                    "`size`: gemini takes an aspect ratio, so give both width and height, or \
                     neither"
                        .into(),
                ));
            }
            ignored.push("size".into());
            Ok((None, size_tier(side)))
        }
    }
}

/// `generationConfig.imageConfig` for the ratio and tier chosen; `None` when neither is set.
pub(super) fn image_config(aspect_ratio: Option<&str>, image_size: Option<&str>) -> Option<Value> {
    let mut config = Map::new();
    if let Some(ratio) = aspect_ratio {
        config.insert("aspectRatio".into(), Value::from(ratio));
    }
    if let Some(size) = image_size {
        config.insert("imageSize".into(), Value::from(size));
    }
    (!config.is_empty()).then_some(Value::Object(config))
}

/// The supported ratio closest to w:h on a log scale (so 2:1 and 1:2 are equally far from 1:1).
fn nearest_ratio(w: u32, h: u32) -> (u32, u32) {
    let target = (f64::from(w) / f64::from(h)).ln();
    let distance = |(a, b): &(u32, u32)| (target - (f64::from(*a) / f64::from(*b)).ln()).abs();
    ASPECT_RATIOS
        .iter()
        .copied()
        .min_by(|x, y| distance(x).total_cmp(&distance(y)))
        .unwrap_or((1, 1))
}

/// The `imageSize` tier for the larger side; 1K is not sent (see the notes in mod.rs).
fn size_tier(side: u32) -> Option<String> {
    match side {
        0..=1024 => None,
        1025..=2048 => Some("2K".into()),
        _ => Some("4K".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn sizes_map_to_exact_ratios_and_tiers() {
        for (w, h, ratio, tier) in [
            (1024, 1024, "1:1", None),
            (1024, 576, "16:9", None),
            (576, 1024, "9:16", None),
            (1008, 432, "21:9", None),
            (512, 768, "2:3", None),
            (2048, 1536, "4:3", Some("2K")),
            (4096, 3072, "4:3", Some("4K")),
        ] {
            let request = Request {
                width: Some(w),
                height: Some(h),
                ..Request::default()
            };
            let mut ignored = Vec::new();
            let (r, t) = request_image_config(&request, &mut ignored).unwrap();
            assert_eq!(r.as_deref(), Some(ratio), "{w}x{h}");
            assert_eq!(t.as_deref(), tier, "{w}x{h}");
            assert!(ignored.is_empty());
        }
        let mut request = Request {
            width: Some(1000),
            height: Some(700),
            ..Request::default()
        };
        let err = request_image_config(&request, &mut Vec::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert!(err.to_string().contains("`size` 1000x700"), "{err}");
        assert!(err.to_string().contains("nearest is 3:2"), "{err}");
        request.best_effort = true;
        let mut ignored = Vec::new();
        let (r, _) = request_image_config(&request, &mut ignored).unwrap();
        assert_eq!(r.as_deref(), Some("3:2"));
        assert_eq!(ignored, vec!["size".to_string()]);
    }
}
