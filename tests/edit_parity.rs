//! Parity of image editing with diffusers' PyTorch pipelines: img2img, inpainting with a 9-channel
//! UNet and by latent blending, InstructPix2Pix, LCM-distilled text-to-image, SDXL (base and
//! refiner), SD3 and FLUX, and a 3-stage progressive plan. Goldens come from
//! models/make_edit.py (tests/golden/edit/manifest.json describes each case and its RNG draws).
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use diffgentor::pipelines::{flux, resize};
use diffgentor::request::{Plan, Resample};
use diffgentor::{npy, Image, Pipeline, Request};
use ndarray::{ArrayD, Ix4};
use serde_json::Value;

fn golden(file: &str) -> PathBuf {
    common::repo().join("tests/golden/edit").join(file)
}

fn manifest_cases() -> Vec<Value> {
    common::manifest_cases(&golden("manifest.json"))
}

fn request_for(case: &Value) -> Request {
    let mut request = common::golden_request(case);
    // The class name: diffgentor accepts diffusers' names for every scheduler it runs.
    request.scheduler = case["scheduler_class"].as_str().map(str::to_string);
    request.max_sequence_length = case["max_sequence_length"].as_u64().map(|v| v as usize);
    request.strength = case["strength"].as_f64();
    if let Some(score) = case["aesthetic_score"].as_f64() {
        request.aesthetic_score = score as f32;
    }
    if let Some(score) = case["negative_aesthetic_score"].as_f64() {
        request.negative_aesthetic_score = score as f32;
    }
    if let Some(scale) = case["image_guidance_scale"].as_f64() {
        request.image_guidance_scale = scale as f32;
    }
    let load = |key: &str| {
        case[key]
            .as_str()
            .map(|f| Image::load_png(&golden(f)).unwrap())
    };
    request.init_image = load("image");
    request.mask = load("mask_image");
    request
}

/// The case's package; SD3 cases without T5 get a copy without text_encoder_3 and tokenizer_3.
fn load_case_model(case: &Value, scratch: &tempfile::TempDir) -> Pipeline {
    let name = case["model"].as_str().unwrap();
    if case["text_encoder_3"] != Value::Bool(false) {
        return common::pipeline(name);
    }
    let dir = common::copy_model(name, scratch.path());
    for folder in ["text_encoder_3", "tokenizer_3"] {
        std::fs::remove_dir_all(dir.join(folder)).unwrap();
    }
    Pipeline::load(common::runtime(), &dir).unwrap()
}

fn pngs(case: &Value) -> Vec<PathBuf> {
    case["png"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| golden(f.as_str().unwrap()))
        .collect()
}

fn expected_latents(case: &Value) -> ArrayD<f32> {
    npy::read_f32(&golden(case["latents"].as_str().unwrap())).unwrap()
}

#[test]
fn every_edit_case_matches_diffusers() {
    let cases: Vec<Value> = manifest_cases()
        .into_iter()
        .filter(|c| c["progressive"].is_null())
        .collect();
    assert!(
        cases.len() >= 30,
        "img2img, inpaint, ip2p, LCM and SDXL cases"
    );
    let mut pipelines: HashMap<String, Pipeline> = HashMap::new();
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let mut model = case["model"].as_str().unwrap().to_string();
        if case["text_encoder_3"] == Value::Bool(false) {
            // SD3 without T5, as diffusers runs it with text_encoder_3=None.
            model.push_str(" without T5");
        }
        let pipeline = pipelines
            .entry(model.clone())
            .or_insert_with(|| load_case_model(case, &scratch));
        let output = match pipeline.generate(&request_for(case)) {
            Ok(output) => output,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let unet_calls = case["unet_calls"].as_u64().unwrap() as usize;
        assert_eq!(
            output.timings.denoise_steps.len(),
            unet_calls,
            "{name}: UNet calls"
        );
        let mut latents = output.latents.clone();
        if case["kind"].as_str().unwrap().starts_with("flux") {
            // FLUX goldens hold the packed latents FluxPipeline returns.
            latents = flux::pack(latents.into_dimensionality::<Ix4>().unwrap().view()).into_dyn();
        }
        let parity = common::Parity::of(
            &latents,
            &expected_latents(case),
            &output.images,
            &pngs(case),
        );
        println!("{name}: {parity}");
        if !parity.passes() {
            failures.push(format!("{name}: {parity}"));
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// The 3-stage recipe (176x224 start, two 2x latent upscales with denoise 0.7 and 0.6) as one plan.
const PLAN: &str = r#"{"stages": [
    {"width": 176, "height": 224, "steps": 6, "scheduler": "euler_a", "guidance_scale": 7.5, "seed": 800},
    {"width": 352, "height": 448, "steps": 8, "scheduler": "euler", "guidance_scale": 3,
     "strength": 0.7, "seed": 801, "upscale": "nearest-exact"},
    {"width": 704, "height": 896, "steps": 8, "scheduler": "dpmpp_2m", "guidance_scale": 3,
     "strength": 0.6, "seed": 802, "upscale": "bilinear"}
]}"#;

#[test]
fn progressive_plan_matches_diffusers_and_the_stages_run_by_hand() {
    let cases: HashMap<String, Value> = manifest_cases()
        .into_iter()
        .filter(|c| !c["progressive"].is_null())
        .map(|c| (c["name"].as_str().unwrap().to_string(), c))
        .collect();
    let pipeline = common::pipeline("tiny-sd");
    let stage1 = &cases["prog_stage1"];
    let mut base = request_for(stage1);
    (base.width, base.height, base.seed, base.scheduler) = (None, None, None, None);

    let mut planned = base.clone();
    planned.plan = Some(Plan::from_json(PLAN).unwrap());
    let mut steps_seen = Vec::new();
    let output = pipeline
        .generate_with_progress(&planned, &mut |p| {
            steps_seen.push((p.step, p.total));
            true
        })
        .unwrap();
    let last = &cases["prog_stage3"];
    let parity = common::Parity::of(
        &output.latents,
        &expected_latents(last),
        &output.images,
        &pngs(last),
    );
    println!("plan vs diffusers: {parity}");
    assert!(parity.passes(), "plan vs diffusers: {parity}");
    assert_eq!((output.width, output.height), (704, 896));
    let calls: usize = ["prog_stage1", "prog_stage2", "prog_stage3"]
        .iter()
        .map(|n| cases[*n]["unet_calls"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(
        steps_seen,
        (1..=calls).map(|s| (s, calls)).collect::<Vec<_>>()
    );

    // By hand: each stage its own request over the resized latents of the one before.
    let plan = Plan::from_json(PLAN).unwrap();
    let mut latents: Option<ArrayD<f32>> = None;
    for (stage, name) in plan
        .stages
        .iter()
        .zip(["prog_stage1", "prog_stage2", "prog_stage3"])
    {
        let mut request = base.clone();
        request.width = Some(stage.width);
        request.height = Some(stage.height);
        request.steps = stage.steps.unwrap();
        request.scheduler = stage.scheduler.clone();
        request.guidance_scale = stage.guidance_scale.unwrap();
        request.strength = stage.strength;
        request.seed = stage.seed;
        request.init_latents = latents.take().map(|l| {
            let l = l.into_dimensionality::<Ix4>().unwrap();
            resize(
                l.view(),
                (stage.height / 8) as usize,
                (stage.width / 8) as usize,
                stage.upscale,
            )
            .into_dyn()
        });
        let out = pipeline.generate(&request).unwrap();
        let parity = common::Parity::of(&out.latents, &expected_latents(&cases[name]), &[], &[]);
        assert!(parity.passes(), "{name} by hand vs diffusers: {parity}");
        latents = Some(out.latents);
    }
    assert_eq!(
        latents.as_ref(),
        Some(&output.latents),
        "plan == stages by hand, bit for bit"
    );
    assert_eq!(plan.stages[2].upscale, Resample::Bilinear);
}
