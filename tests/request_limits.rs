//! Requests and packages the runtime must refuse up front, with the error a user can act on,
//! instead of failing inside ONNX Runtime, writing a black image or running the wrong family.
mod common;

use std::fs;
use std::path::Path;

use diffgentor::model::tokenizer::Tokenizer;
use diffgentor::model::{Family, ModelPackage};
use diffgentor::request::{MAX_PROMPT_BYTES, MAX_SEQUENCE_LENGTH};
use diffgentor::runtime::{MAX_INTRA_THREADS, MAX_SESSIONS_PER_GRAPH};
use diffgentor::{Error, ErrorCode, Pipeline, Request, Runtime, RuntimeOptions};

fn request() -> Request {
    let mut request = Request::new("a red square");
    request.steps = 2;
    request.seed = Some(1);
    request
}

fn generate_err(model: &str, request: &Request) -> Error {
    common::pipeline(model)
        .generate(request)
        .expect_err("the request must be refused")
}

fn assert_err(err: &Error, code: ErrorCode, parts: &[&str]) {
    assert_eq!(err.code(), code, "{err}");
    for part in parts {
        assert!(err.to_string().contains(part), "missing `{part}` in: {err}");
    }
}

#[test]
fn sizes_the_denoiser_cannot_run_are_refused_with_the_multiple() {
    let unet = "multiple of 16 (the VAE factor 8 x 2^1 for the UNet's 2 down blocks)";
    for (w, h) in [(8, 64), (24, 64), (64, 40)] {
        let mut r = request();
        (r.width, r.height) = (Some(w), Some(h));
        let err = generate_err("tiny-sd", &r);
        assert_err(&err, ErrorCode::InvalidArg, &[unet]);
    }
    let mut r = request();
    (r.width, r.height) = (Some(48), Some(64));
    common::pipeline("tiny-sd")
        .generate(&r)
        .expect("48 is a multiple of 16");

    let package = |name: &str| ModelPackage::open(&common::model_dir(name)).unwrap();
    assert_eq!(package("tiny-sd").size_multiple().0, 16);
    assert_eq!(package("digits").size_multiple().0, 4);
    let (sd3, why) = package("tiny-sd3").size_multiple();
    assert_eq!(sd3, 16);
    assert!(why.contains("patch size 2"), "{why}");
    let (flux, why) = package("tiny-flux").size_multiple();
    assert_eq!(flux, 16);
    assert!(why.contains("2x2 latent packing"), "{why}");
}

#[test]
fn non_finite_latents_are_an_error_not_a_black_image() {
    for scale in [3e38, -1001.0, f32::NAN] {
        let mut r = request();
        r.guidance_scale = scale;
        let err = generate_err("tiny-sd", &r);
        assert_err(
            &err,
            ErrorCode::InvalidArg,
            &["guidance_scale must be between"],
        );
    }
    // Finite but huge input latents overflow inside the UNet: caught after the stage.
    let mut r = request();
    r.latents = Some(ndarray::ArrayD::from_elem(vec![1, 4, 8, 8], 3e38));
    let err = generate_err("tiny-sd", &r);
    assert_err(&err, ErrorCode::InvalidArg, &["not finite", "stage 1 of 1"]);
    // Latents the UNet survives but the VAE decoder overflows on: its output is checked too.
    let mut latents = ndarray::ArrayD::from_elem(vec![1, 4, 8, 8], 1e36_f32);
    latents.iter_mut().step_by(3).for_each(|v| *v = -*v);
    let mut r = request();
    r.latents = Some(latents);
    let err = generate_err("tiny-sd", &r);
    assert_err(&err, ErrorCode::Backend, &["vae_decoder", "not finite"]);

    for value in [f32::NAN, f32::INFINITY] {
        let mut r = request();
        let mut latents = ndarray::ArrayD::zeros(vec![1, 4, 8, 8]);
        latents[[0, 1, 2, 3]] = value;
        r.latents = Some(latents.clone());
        let err = generate_err("tiny-sd", &r);
        assert_err(&err, ErrorCode::InvalidArg, &["latents hold non-finite"]);
        let mut r = request();
        r.init_latents = Some(latents);
        let err = generate_err("tiny-sd", &r);
        assert_err(
            &err,
            ErrorCode::InvalidArg,
            &["init_latents hold non-finite"],
        );
    }
}

#[test]
fn schedulers_are_refused_on_families_they_do_not_fit() {
    let cases = [
        ("tiny-sd", "flow_match_euler", "flow-matching packages"),
        (
            "tiny-sdxl",
            "FlowMatchEulerDiscreteScheduler",
            "flow-matching",
        ),
        ("tiny-sd3", "euler", "use flow_match_euler"),
        ("tiny-flux", "ddim", "use flow_match_euler"),
    ];
    for (model, scheduler, hint) in cases {
        let mut r = request();
        r.scheduler = Some(scheduler.into());
        let err = generate_err(model, &r);
        assert_err(&err, ErrorCode::Unsupported, &["works with", hint]);
        assert!(!err.to_string().contains("custom sigma"), "{err}");
    }
}

/// A copy of package `model` whose model_index.json names only `class`.
fn with_class(model: &str, class: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model(model, tmp.path());
    let index = serde_json::json!({ "_class_name": class });
    fs::write(dir.join("model_index.json"), index.to_string()).unwrap();
    (tmp, dir)
}

fn load_err(dir: &Path) -> Error {
    Pipeline::load(common::runtime(), dir).expect_err("loading must fail")
}

#[test]
fn model_index_that_is_not_utf8_is_a_model_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::write(
        dir.join("model_index.json"),
        b"{\"_class_name\": \"\xff\xfe\"}",
    )
    .unwrap();
    let err = load_err(&dir);
    assert_err(
        &err,
        ErrorCode::Model,
        &["model_index.json", "not UTF-8", "offset 17"],
    );
}

#[test]
fn unknown_pipeline_class_runs_only_when_the_denoiser_names_the_family() {
    let (_tmp, dir) = with_class("tiny-sd", "FooPipeline");
    let package = ModelPackage::open(&dir).unwrap();
    assert_eq!(package.family, Family::StableDiffusion);
    let note = package
        .family_note
        .as_deref()
        .expect("the guess is reported");
    assert!(
        note.contains("FooPipeline") && note.contains("stable-diffusion"),
        "{note}"
    );
    assert!(ModelPackage::open(&common::model_dir("tiny-sd"))
        .unwrap()
        .family_note
        .is_none());

    // Without the denoiser's class the components say nothing for sure.
    let config_path = dir.join("unet/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("_class_name");
    fs::write(&config_path, config.to_string()).unwrap();
    let err = load_err(&dir);
    assert_err(
        &err,
        ErrorCode::Unsupported,
        &[
            "unknown pipeline class FooPipeline",
            "StableDiffusionXLPipeline",
            "FluxPipeline",
        ],
    );
}

#[test]
fn unknown_pipeline_class_over_a_transformer_package() {
    let (_tmp, dir) = with_class("tiny-sd3", "MyOwnSD3Pipeline");
    let package = ModelPackage::open(&dir).unwrap();
    assert_eq!(package.family, Family::Sd3);
    assert!(package
        .family_note
        .unwrap()
        .contains("transformer/config.json"));
}

#[test]
fn prompts_are_bounded() {
    let pipeline = common::pipeline("tiny-sd");
    let huge = "a fox ".repeat(10 * 1024 * 1024 / 6);
    for negative in [false, true] {
        let mut r = request();
        if negative {
            r.negative_prompt = Some(huge.clone());
        } else {
            r.prompt = huge.clone();
        }
        let err = pipeline.generate(&r).expect_err("10 MB prompt");
        let name = if negative {
            "negative_prompt"
        } else {
            "prompt"
        };
        assert_err(
            &err,
            ErrorCode::InvalidArg,
            &[name, &MAX_PROMPT_BYTES.to_string()],
        );
    }
    let mut r = request();
    r.prompt = "x".repeat(MAX_PROMPT_BYTES);
    pipeline.generate(&r).expect("a prompt at the limit runs");
}

#[test]
fn t5_sequence_lengths_are_bounded() {
    assert_eq!(MAX_SEQUENCE_LENGTH, 512, "diffusers refuses more than 512");
    let pipeline = common::pipeline("tiny-flux");
    // Set as the C ABI does (`dg_params_set`): 2^40 tokens used to abort allocating the
    // conditioning.
    for value in ["1099511627776", "0", "513"] {
        let mut r = request();
        r.set("max_sequence_length", value).unwrap();
        let err = pipeline.generate(&r).expect_err(value);
        assert_err(
            &err,
            ErrorCode::InvalidArg,
            &[
                "max_sequence_length must be between 1 and 512",
                &format!("got {value}"),
            ],
        );
    }
    let mut r = request();
    r.steps = 1;
    r.max_sequence_length = Some(8);
    pipeline.generate(&r).expect("a short T5 length runs");
}

#[test]
fn clip_encoding_stops_at_max_length_with_the_same_ids() {
    let tokenizer = Tokenizer::from_dir(&common::model_dir("tiny-sd").join("tokenizer")).unwrap();
    let words: Vec<String> = (0..5000).map(|i| format!("w{i}rd")).collect();
    let long = words.join(" ");
    let short = words[..100].join(" ");
    let ids = tokenizer.encode(&long).unwrap();
    assert_eq!(ids.len(), tokenizer.max_length());
    assert_eq!(ids, tokenizer.encode(&short).unwrap());
}

#[test]
fn thread_counts_are_bounded() {
    common::runtime();
    for (threads, sessions, what) in [
        (Some(100_000), 1, "intra_threads"),
        (Some(MAX_INTRA_THREADS + 1), 1, "intra_threads"),
        (None, MAX_SESSIONS_PER_GRAPH + 1, "sessions_per_graph"),
    ] {
        let err = Runtime::new(RuntimeOptions {
            ort_library: common::ort_library(),
            intra_threads: threads,
            sessions_per_graph: sessions,
            ..RuntimeOptions::default()
        })
        .expect_err("over the limit");
        assert_err(&err, ErrorCode::InvalidArg, &[what, "between 1 and"]);
    }
    let output = common::dg(&["doctor", "--threads", "100000"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("intra_threads must be between 1 and 1024, got 100000"),
        "{stderr}"
    );
}

#[test]
fn cli_writes_nothing_when_the_latents_are_not_finite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let latents = tmp.path().join("nan.npy");
    let mut values = ndarray::ArrayD::<f32>::zeros(vec![1, 4, 8, 8]);
    values[[0, 0, 0, 0]] = f32::NAN;
    diffgentor::npy::write_f32(&latents, &values).unwrap();
    let model = common::model_dir("tiny-sd").display().to_string();
    let (out_s, latents_s) = (out.display().to_string(), latents.display().to_string());
    for extra in [["--guidance", "3e38"], ["--latents", latents_s.as_str()]] {
        let mut args = vec![
            "generate", "--model", &model, "--prompt", "x", "--steps", "2",
        ];
        args.extend(extra);
        args.extend(["--output", &out_s]);
        let output = common::dg(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("error: invalid argument: "), "{stderr}");
        assert!(!out.exists(), "no image is written");
    }
}

#[test]
fn cli_refuses_odd_sizes_before_onnx_runtime_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let model = common::model_dir("tiny-sd").display().to_string();
    let out_s = out.display().to_string();
    for width in ["8", "24"] {
        let output = common::dg(&[
            "generate", "--model", &model, "--prompt", "x", "--steps", "1", "--width", width,
            "--output", &out_s,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        // Exactly one line: ours, with no ONNX Runtime log before it.
        assert_eq!(
            stderr.trim_end(),
            format!(
                "error: invalid argument: width {width} must be a positive multiple of 16 \
                 (the VAE factor 8 x 2^1 for the UNet's 2 down blocks)"
            )
        );
        assert!(!out.exists());
    }
}

#[test]
fn doctor_prints_the_size_multiple_and_a_guessed_family() {
    let (_tmp, dir) = with_class("tiny-sd", "FooPipeline");
    let output = common::dg(&["doctor", "--model", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("size multiple 16 (the VAE factor 8 x 2^1 for the UNet's 2 down blocks)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("note: unknown pipeline class FooPipeline: run as stable-diffusion"),
        "{stdout}"
    );
}

#[test]
fn cli_runtime_options_use_the_library_parser() {
    let output = common::dg(&["doctor", "--runtime-option", "intra_threads=100000"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("intra_threads must be between 1 and 1024"),
        "{stderr}"
    );
    for (bad, needle) in [
        (
            "sessions_per_graf=2",
            "unknown runtime option `sessions_per_graf`",
        ),
        ("no_spinning", "is not KEY=VALUE"),
    ] {
        let output = common::dg(&["doctor", "--runtime-option", bad]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{bad}: {stderr}");
    }
    let output = common::dg(&["doctor", "--runtime-option", "sessions_per_graph=2"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
