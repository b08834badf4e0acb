//! Bad editing and plan requests get the error a user can act on, with the right stable code.
mod common;

use std::fs;

use diffgentor::request::Plan;
use diffgentor::{Error, ErrorCode, Image, Pipeline, Request};

fn image(width: u32, height: u32, value: u8) -> Image {
    Image {
        width,
        height,
        pixels: vec![value; (width * height * 3) as usize],
    }
}

fn edit_request() -> Request {
    let mut request = Request::new("a red square");
    request.steps = 4;
    request.seed = Some(1);
    request.init_image = Some(image(64, 64, 120));
    request
}

fn err_on(pipeline: &Pipeline, request: &Request) -> Error {
    pipeline.generate(request).expect_err("request must fail")
}

fn assert_invalid(err: &Error, needle: &str) {
    assert_eq!(err.code(), ErrorCode::InvalidArg, "{err}");
    assert!(
        err.to_string().contains(needle),
        "expected `{needle}` in: {err}"
    );
}

#[test]
fn wrong_sizes_and_strengths_on_img2img() {
    let sd = common::pipeline("tiny-sd");
    let mut r = edit_request();
    r.width = Some(128);
    assert_invalid(
        &err_on(&sd, &r),
        "init image is 64x64 but the request is 128x64",
    );
    let mut r = edit_request();
    r.init_image = Some(image(60, 60, 0));
    assert_invalid(&err_on(&sd, &r), "multiple of 16 (the VAE factor 8");
    for strength in [0.0, -0.5, 1.01, f64::NAN] {
        let mut r = edit_request();
        r.strength = Some(strength);
        assert_invalid(&err_on(&sd, &r), "strength must be in (0, 1]");
    }
    let mut r = edit_request();
    r.strength = Some(0.1); // int(4 * 0.1) = 0 steps
    assert_invalid(&err_on(&sd, &r), "leaves no denoising step");
    let mut r = Request::new("x");
    r.strength = Some(0.5);
    assert_invalid(&err_on(&sd, &r), "strength needs an init image");
}

#[test]
fn mask_errors() {
    let sd = common::pipeline("tiny-sd");
    let mut r = edit_request();
    r.mask = Some(image(64, 32, 255));
    assert_invalid(&err_on(&sd, &r), "mask is 64x32 but the request is 64x64");
    let mut r = Request::new("x");
    r.mask = Some(image(64, 64, 255));
    assert_invalid(&err_on(&sd, &r), "a mask needs the image");

    let inpaint = common::pipeline("tiny-sd-inpaint");
    let r = edit_request();
    assert_invalid(&err_on(&inpaint, &r), "needs an init image and a mask");

    let ip2p = common::pipeline("tiny-ip2p");
    let mut r = edit_request();
    r.mask = Some(image(64, 64, 255));
    assert_invalid(&err_on(&ip2p, &r), "takes no mask");
    let mut r = edit_request();
    r.strength = Some(0.5);
    assert_invalid(&err_on(&ip2p, &r), "strength does not apply");
    assert_invalid(
        &err_on(&ip2p, &Request::new("x")),
        "needs the image to edit",
    );
}

#[test]
fn package_without_vae_encoder_refuses_image_inputs_but_still_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::remove_dir_all(dir.join("vae_encoder")).unwrap();
    let pipeline = Pipeline::load(common::runtime(), &dir).unwrap();
    let err = err_on(&pipeline, &edit_request());
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err}");
    assert!(err.to_string().contains("has no vae_encoder"), "{err}");
    let mut r = Request::new("x");
    r.steps = 2;
    assert_eq!(pipeline.generate(&r).unwrap().images.len(), 1);
}

#[test]
fn init_latents_of_the_wrong_shape() {
    let sd = common::pipeline("tiny-sd");
    let mut r = Request::new("x");
    r.steps = 4;
    r.width = Some(64);
    r.height = Some(64);
    r.init_latents = Some(ndarray::ArrayD::zeros(vec![1, 3, 8, 8]));
    assert_invalid(&err_on(&sd, &r), "init latents have shape [1, 3, 8, 8]");
    r.init_latents = Some(ndarray::ArrayD::zeros(vec![3, 4, 8, 8]));
    r.num_images = 2;
    assert_invalid(&err_on(&sd, &r), "batch of 3 cannot be spread over 2");
}

#[test]
fn plan_errors() {
    let sd = common::pipeline("tiny-sd");
    let with_plan = |json: &str| {
        let mut r = Request::new("x");
        r.plan = Some(Plan::from_json(json).unwrap());
        r
    };
    let r = with_plan(r#"{"stages": [{"width": 60, "height": 64, "steps": 2}]}"#);
    assert_invalid(
        &err_on(&sd, &r),
        "width 60 must be a positive multiple of 16 (the VAE factor 8",
    );
    let r = with_plan(
        r#"{"stages": [{"width": 64, "height": 64, "steps": 2},
                       {"width": 100, "height": 128, "steps": 2, "strength": 0.5}]}"#,
    );
    assert_invalid(&err_on(&sd, &r), "width 100");
    let r = with_plan(
        r#"{"stages": [{"width": 64, "height": 64, "steps": 2},
                       {"width": 128, "height": 128, "steps": 2, "strength": 0.2}]}"#,
    );
    assert_invalid(&err_on(&sd, &r), "leaves no denoising step");
    let mut r = Request::new("x");
    r.plan = Some(Plan { stages: Vec::new() });
    assert_invalid(&err_on(&sd, &r), "between 1 and");
}

#[test]
fn families_not_run_yet_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    let index = dir.join("model_index.json");
    let text = fs::read_to_string(&index)
        .unwrap()
        .replace("StableDiffusionPipeline", "FluxControlPipeline");
    fs::write(&index, text).unwrap();
    let err = Pipeline::load(common::runtime(), &dir).expect_err("FLUX control is not run yet");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(
        err.to_string()
            .contains("FluxControlPipeline is not run yet"),
        "{err}"
    );
}

#[test]
fn sdxl_needs_its_second_encoder_and_refuses_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sdxl", tmp.path());
    fs::remove_dir_all(dir.join("tokenizer_2")).unwrap();
    let err = Pipeline::load(common::runtime(), &dir).expect_err("tokenizer_2 is required");
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string()
            .contains("missing component folder(s): tokenizer_2"),
        "{err}"
    );

    let sdxl = common::pipeline("tiny-sdxl");
    let mut r = edit_request();
    r.mask = Some(image(64, 64, 255));
    let err = err_on(&sdxl, &r);
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err}");
    assert!(
        err.to_string()
            .contains("inpainting with stable-diffusion-xl"),
        "{err}"
    );
}

#[test]
fn flux_packs_2x2_latents_so_sizes_are_multiples_of_16() {
    let flux = common::pipeline("tiny-flux");
    let mut r = Request::new("x");
    r.steps = 2;
    (r.width, r.height) = (Some(72), Some(64));
    assert_invalid(
        &err_on(&flux, &r),
        "width 72 must be a positive multiple of 16 (the VAE factor 8 x 2 for FLUX's 2x2 latent packing",
    );
    let mut r = edit_request();
    r.mask = Some(image(64, 64, 255));
    let err = err_on(&flux, &r);
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err}");

    // A plan upscales FLUX's unpacked latents between stages.
    let mut r = Request::new("a red fox");
    r.seed = Some(3);
    r.max_sequence_length = Some(32);
    r.plan = Some(
        Plan::from_json(
            r#"{"stages": [{"width": 64, "height": 64, "steps": 2},
                           {"width": 128, "height": 96, "steps": 4, "strength": 0.5}]}"#,
        )
        .unwrap(),
    );
    let out = flux.generate(&r).unwrap();
    assert_eq!((out.images[0].width, out.images[0].height), (128, 96));
    assert_eq!(out.latents.shape(), &[1, 16, 12, 16]);
}
