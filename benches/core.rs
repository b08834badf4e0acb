//! Criterion benches for the work diffgentor does around ONNX Runtime: scheduler steps, noise,
//! tokenization, image post-processing and the tensor handoff between UNet and scheduler.
//! Run: `cargo bench --bench core` (ONNX Runtime is not needed).
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use diffgentor::model::Tokenizer;
use diffgentor::pipelines::apply_guidance;
use diffgentor::rng::{self, RngMode};
use diffgentor::{schedulers, Image};
use ndarray::{Array3, ArrayD};
use serde_json::json;

/// SD 1.5 latents at 512x512.
const LATENT_SHAPE: [usize; 4] = [1, 4, 64, 64];

fn sd15_scheduler_config() -> serde_json::Value {
    json!({"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false,
           "skip_prk_steps": true, "steps_offset": 1})
}

/// One full 20-step denoising loop's scheduler work (model output fixed), per scheduler.
fn scheduler_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_20_steps_512px");
    let model_output = rng::generator(RngMode::Fast, 1).randn(&LATENT_SHAPE);
    for &name in schedulers::names() {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut s = schedulers::create(Some(name), &sd15_scheduler_config())
                        .expect("scheduler");
                    s.set_timesteps(20).expect("timesteps");
                    (
                        s,
                        rng::generator(RngMode::Torch, 0).randn(&LATENT_SHAPE),
                        rng::generator(RngMode::Fast, 2),
                    )
                },
                |(mut s, mut sample, mut noise)| {
                    for i in 0..s.timesteps().len() {
                        s.scale_model_input(sample.view_mut(), i);
                        s.step(model_output.view(), i, sample.view_mut(), noise.as_mut())
                            .expect("step");
                    }
                    sample
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn noise(c: &mut Criterion) {
    let mut group = c.benchmark_group("rng_fill");
    for len in [4 * 64 * 64, 1 << 20] {
        group.throughput(Throughput::Elements(len as u64));
        for mode in [RngMode::Torch, RngMode::Fast] {
            let mut generator = rng::generator(mode, 42);
            let mut buffer = vec![0.0f32; len];
            group.bench_with_input(BenchmarkId::new(mode.as_str(), len), &len, |b, _| {
                b.iter(|| generator.fill_randn(&mut buffer))
            });
        }
    }
    group.finish();
}

fn tokenization(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tokenizer");
    let tokenizer = Tokenizer::from_dir(&dir).expect("tokenizer");
    let mut group = c.benchmark_group("tokenize_clip");
    let long = "a highly detailed photograph of an astronaut riding a horse on mars, ".repeat(8);
    for (name, prompt) in [("short", "a photo of a cat"), ("truncated", long.as_str())] {
        group.bench_function(name, |b| {
            b.iter(|| tokenizer.encode(prompt).expect("encode"))
        });
    }
    group.finish();
}

/// VAE output [3, 512, 512] -> RGB8 -> PNG bytes.
fn postprocess(c: &mut Criterion) {
    let mut noise = rng::generator(RngMode::Fast, 3);
    let decoded = noise
        .randn(&[3, 512, 512])
        .into_dimensionality::<ndarray::Ix3>()
        .expect("3-d");
    let decoded: Array3<f32> = decoded.mapv(|v| (v * 0.5).tanh());
    let mut group = c.benchmark_group("postprocess_512px");
    group.bench_function("to_rgb8", |b| {
        b.iter(|| Image::from_vae_output(decoded.view()))
    });
    let image = Image::from_vae_output(decoded.view());
    group.bench_function("encode_png", |b| {
        b.iter(|| image.encode_png(&[("parameters", "x")]).expect("png"))
    });
    group.finish();
}

/// The per-step handoff from the UNet output (batched [uncond; text]) to the scheduler: in-place
/// classifier-free guidance on SD 1.5's 512x512 latents.
fn handoff(c: &mut Criterion) {
    let prediction: ArrayD<f32> = rng::generator(RngMode::Fast, 4).randn(&[2, 4, 64, 64]);
    c.bench_function("cfg_combine_512px", |b| {
        b.iter_batched(
            || prediction.clone(),
            |mut p| apply_guidance(&mut p, 7.5).sum(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    scheduler_steps,
    noise,
    tokenization,
    postprocess,
    handoff
);
criterion_main!(benches);
