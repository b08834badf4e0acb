//! The `Generator` trait over a local pipeline: the same request gives the same bytes as the
//! pipeline itself, and `describe()` says what the package can do.
mod common;

use std::sync::Arc;

use diffgentor::generators::{self, Generator, GeneratorOptions, Sizes, Task};
use diffgentor::{ErrorCode, Request};

#[test]
fn local_generation_through_the_trait_is_byte_identical() {
    let pipeline = common::pipeline("tiny-sd");
    let mut request = Request::new("a red fox");
    (request.seed, request.steps, request.num_images) = (Some(42), 3, 2);
    request.scheduler = Some("euler".into());
    let direct = pipeline.generate(&request).unwrap();
    let generator: Arc<dyn Generator> = Arc::new(common::pipeline("tiny-sd"));
    let mut steps = Vec::new();
    let through = generator
        .generate(&request, &mut |p| {
            steps.push((p.step, p.total, p.stage, p.stages));
            true
        })
        .unwrap();
    assert_eq!(through.images, direct.images);
    assert_eq!(through.latents, direct.latents);
    assert_eq!(steps, vec![(1, 3, 1, 1), (2, 3, 1, 1), (3, 3, 1, 1)]);
    assert!(through.metadata.is_empty());
}

#[test]
fn describe_reports_tasks_sizes_and_seeds() {
    let sd = common::pipeline("tiny-sd").describe();
    assert_eq!((sd.name.as_str(), sd.kind), ("tiny-sd", "local"));
    assert_eq!(
        sd.tasks,
        vec![Task::TextToImage, Task::ImageToImage, Task::Inpaint]
    );
    assert_eq!(
        sd.sizes,
        Sizes::Multiple {
            multiple: 16,
            max: 16384,
            default: Some((64, 64))
        }
    );
    assert!(sd.honours_seed && sd.negative_prompt);
    assert_eq!(
        common::pipeline("tiny-ip2p").describe().tasks,
        vec![Task::Edit]
    );
    let flux = common::pipeline("tiny-flux").describe();
    assert_eq!(flux.tasks, vec![Task::TextToImage, Task::ImageToImage]);
    assert!(!flux.negative_prompt);
}

#[test]
fn a_request_names_its_task() {
    let mut request = Request::new("x");
    assert_eq!(Task::of(&request), Task::TextToImage);
    request.init_image = Some(diffgentor::Image::from_raw(&[0; 3], 1, 1, 3, 3).unwrap());
    assert_eq!(Task::of(&request), Task::ImageToImage);
    request.mask = request.init_image.clone();
    assert_eq!(Task::of(&request), Task::Inpaint);
    assert_eq!(Task::Inpaint.to_string(), "inpaint");
}

#[test]
fn unknown_backends_are_invalid() {
    let err = generators::remote("midjourney", &GeneratorOptions::new()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("openai or gemini"), "{err}");
}
