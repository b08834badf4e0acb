//! Graph I/O variants that other exporters produce run exactly like the optimum export.
//! The variant graphs are made by `models/make_variants.py` from models/tiny-sd2-v.
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use diffgentor::model::{TimestepKind, TimestepShape};
use diffgentor::runtime::ElementType;
use diffgentor::{ErrorCode, Output, Pipeline, Request};

const MODEL: &str = "tiny-sd2-v";

fn variant(name: &str) -> PathBuf {
    common::repo().join("tests/data/variants").join(name)
}

/// A copy of tiny-sd2-v in `tmp` whose `component` graph is the variant file `name`.
fn package_with(tmp: &Path, component: &str, name: &str) -> PathBuf {
    let dir = common::copy_model(MODEL, tmp);
    std::fs::copy(variant(name), dir.join(component).join("model.onnx"))
        .unwrap_or_else(|e| panic!("{name} (run models/make_variants.py): {e}"));
    dir
}

fn load(dir: &Path) -> Pipeline {
    Pipeline::load(common::runtime(), dir)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// With guidance (UNet batch 2) and without (batch 1).
fn requests() -> Vec<Request> {
    [7.5, 1.0]
        .into_iter()
        .map(|guidance_scale| {
            let mut request = Request::new("a red square on a blue field");
            request.guidance_scale = guidance_scale;
            request.scheduler = Some("ddim".into());
            request.steps = 3;
            request.width = Some(96);
            request.height = Some(64);
            request.seed = Some(1234);
            request
        })
        .collect()
}

fn generate_all(pipeline: &Pipeline) -> Vec<Output> {
    requests()
        .iter()
        .map(|r| pipeline.generate(r).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// The unmodified package's outputs for [`requests`].
fn reference() -> &'static [Output] {
    static REFERENCE: OnceLock<Vec<Output>> = OnceLock::new();
    REFERENCE.get_or_init(|| generate_all(&common::pipeline(MODEL)))
}

fn assert_same(what: &str, want: &[Output], got: &[Output]) {
    assert_eq!(want.len(), got.len());
    for (i, (want, got)) in want.iter().zip(got).enumerate() {
        assert_eq!(got.latents.shape(), &[1, 4, 8, 12], "{what} request {i}");
        assert!(
            want.latents == got.latents,
            "{what} request {i}: latents differ"
        );
        assert_eq!(want.images.len(), 1);
        assert!(
            want.images == got.images,
            "{what} request {i}: image pixels differ"
        );
        assert_eq!((got.width, got.height, got.seed), (96, 64, 1234));
    }
}

#[test]
fn text_encoder_with_int32_input_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package_with(tmp.path(), "text_encoder", "text_encoder_ids_int32.onnx");
    let pipeline = load(&dir);
    assert_eq!(
        pipeline.model().text_encoder.as_ref().unwrap().1.ids_dtype,
        ElementType::I32
    );
    assert_eq!(
        pipeline.model().denoiser.unet().unwrap().timestep,
        TimestepKind {
            dtype: ElementType::F32,
            shape: TimestepShape::Scalar
        }
    );
    assert_same("int32 input_ids", reference(), &generate_all(&pipeline));
}

#[test]
fn unet_with_int64_batch_timestep() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package_with(tmp.path(), "unet", "unet_timestep_int64_batch.onnx");
    let pipeline = load(&dir);
    assert_eq!(
        pipeline.model().denoiser.unet().unwrap().timestep,
        TimestepKind {
            dtype: ElementType::I64,
            shape: TimestepShape::Batch
        }
    );
    assert_eq!(
        pipeline.model().text_encoder.as_ref().unwrap().1.ids_dtype,
        ElementType::I64
    );
    assert_same(
        "int64[batch] timestep",
        reference(),
        &generate_all(&pipeline),
    );
}

#[test]
fn unet_with_float_batch_timestep() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package_with(tmp.path(), "unet", "unet_timestep_float_batch.onnx");
    let pipeline = load(&dir);
    assert_eq!(
        pipeline.model().denoiser.unet().unwrap().timestep,
        TimestepKind {
            dtype: ElementType::F32,
            shape: TimestepShape::Batch
        }
    );
    assert_same(
        "float[batch] timestep",
        reference(),
        &generate_all(&pipeline),
    );
}

/// 0-d int64 and fixed-[1] timesteps: toy denoisers with the same math reading a float32 [], an
/// int64 [] and a float32 [1] timestep give identical results (a full UNet copy would not fit the data budget).
#[test]
fn unet_with_scalar_and_single_timesteps() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (name, kind) in [
        (
            "toy_unet_timestep_float_scalar.onnx",
            TimestepKind {
                dtype: ElementType::F32,
                shape: TimestepShape::Scalar,
            },
        ),
        (
            "toy_unet_timestep_int64_scalar.onnx",
            TimestepKind {
                dtype: ElementType::I64,
                shape: TimestepShape::Scalar,
            },
        ),
        (
            "toy_unet_timestep_float_single.onnx",
            TimestepKind {
                dtype: ElementType::F32,
                shape: TimestepShape::Single,
            },
        ),
    ] {
        let dir = package_with(&tmp.path().join(&name[..name.len() - 5]), "unet", name);
        let pipeline = load(&dir);
        assert_eq!(
            pipeline.model().denoiser.unet().unwrap().timestep,
            kind,
            "{name}"
        );
        outputs.push(generate_all(&pipeline));
    }
    for out in &outputs[0] {
        assert!(out.latents.iter().all(|v| v.is_finite()));
    }
    // The toy's output depends on the timestep and the prompt, so equal runs mean equal inputs.
    assert!(outputs[0][0].latents != reference()[0].latents);
    assert_same("int64[] timestep", &outputs[0], &outputs[1]);
    assert_same("float32[1] timestep", &outputs[0], &outputs[2]);
}

#[test]
fn unet_with_sdxl_inputs_is_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package_with(tmp.path(), "unet", "unet_extra_input.onnx");
    let err = Pipeline::load(common::runtime(), &dir).expect_err("loading must fail");
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("has SDXL's text_embeds/time_ids inputs"),
        "{msg}"
    );
    // Only the extra input is named as the problem, not the inputs the pipeline knows.
    assert!(!msg.contains("does not match any known variant"), "{msg}");
}
