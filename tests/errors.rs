//! Every bad input gets the error a user can act on, with the right stable code.
mod common;

use std::fs;

use diffgentor::request::{prompt_from_bytes, CancelToken};
use diffgentor::{Error, ErrorCode, ExecutionProvider, Pipeline, Request, Runtime, RuntimeOptions};

fn load_err(dir: &std::path::Path) -> Error {
    Pipeline::load(common::runtime(), dir).expect_err("loading must fail")
}

fn small_request() -> Request {
    let mut request = Request::new("a red square");
    request.steps = 2;
    request.seed = Some(1);
    request
}

fn generate_err(request: &Request) -> Error {
    common::pipeline("tiny-sd")
        .generate(request)
        .expect_err("request must fail")
}

#[test]
fn missing_model_directory() {
    let err = load_err(&common::model_dir("no-such-model"));
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string().contains("no-such-model") && err.to_string().contains("not a directory"),
        "{err}"
    );
}

#[test]
fn missing_component_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::remove_dir_all(dir.join("vae_decoder")).unwrap();
    let err = load_err(&dir);
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string()
            .contains("missing component folder(s): vae_decoder"),
        "{err}"
    );
}

#[test]
fn missing_graph_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::remove_file(dir.join("unet/model.onnx")).unwrap();
    let err = load_err(&dir);
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(err.to_string().contains("unet graph is missing"), "{err}");
}

#[test]
fn directory_without_model_index() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_err(tmp.path());
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string().contains("model_index.json: is missing"),
        "{err}"
    );
}

#[test]
fn model_index_that_is_not_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::write(dir.join("model_index.json"), "{ not json").unwrap();
    let err = load_err(&dir);
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string().contains("model_index.json") && err.to_string().contains("not valid JSON"),
        "{err}"
    );
}

#[test]
fn corrupt_onnx_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::write(dir.join("unet/model.onnx"), b"this is not a protobuf").unwrap();
    let err = load_err(&dir);
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string().contains("cannot load the unet graph"),
        "{err}"
    );
}

#[test]
fn graph_with_unknown_inputs_names_what_it_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_model("tiny-sd", tmp.path());
    fs::copy(
        dir.join("vae_decoder/model.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    let err = load_err(&dir);
    assert_eq!(err.code(), ErrorCode::Model);
    let msg = err.to_string();
    assert!(
        msg.contains("does not match any known variant") && msg.contains("latent_sample"),
        "{msg}"
    );
}

#[test]
fn unknown_scheduler_lists_known_names() {
    let mut request = small_request();
    request.scheduler = Some("warp_drive".into());
    let err = generate_err(&request);
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(
        err.to_string().contains("warp_drive") && err.to_string().contains("euler_a"),
        "{err}"
    );
}

#[test]
fn unsupported_scheduler_config_value() {
    let mut request = small_request();
    request
        .scheduler_overrides
        .insert("beta_schedule".into(), "cosmic".into());
    let err = generate_err(&request);
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err:?}");
    assert!(
        err.to_string().contains("beta_schedule") && err.to_string().contains("cosmic"),
        "{err}"
    );
}

#[test]
fn size_must_be_a_positive_multiple_of_the_vae_factor() {
    for (w, h) in [(60, 64), (64, 0), (0, 64)] {
        let mut request = small_request();
        request.width = Some(w);
        request.height = Some(h);
        let err = generate_err(&request);
        assert_eq!(err.code(), ErrorCode::InvalidArg, "{w}x{h}");
        assert!(
            err.to_string().contains("multiple of 16 (the VAE factor 8"),
            "{err}"
        );
    }
}

#[test]
fn zero_steps_and_zero_images() {
    let mut request = small_request();
    request.steps = 0;
    let err = generate_err(&request);
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("steps must be between 1"), "{err}");

    let mut request = small_request();
    request.num_images = 0;
    assert_eq!(generate_err(&request).code(), ErrorCode::InvalidArg);
}

#[test]
fn latents_of_the_wrong_shape() {
    let mut request = small_request();
    request.latents = Some(ndarray::ArrayD::zeros(vec![1, 4, 4, 4]));
    let err = generate_err(&request);
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("[1, 4, 8, 8]"), "{err}");
}

#[test]
fn invalid_utf8_prompt() {
    let err = prompt_from_bytes(b"a cat \xff\xfe on a mat").expect_err("invalid UTF-8");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("offset 6"), "{err}");
    assert_eq!(
        prompt_from_bytes("a caf\u{e9}".as_bytes()).unwrap(),
        "a caf\u{e9}"
    );
}

#[test]
fn cuda_is_an_error_on_a_cpu_build_unless_fallback_is_asked_for() {
    common::runtime();
    let options = RuntimeOptions {
        ort_library: common::ort_library(),
        execution_provider: ExecutionProvider::Cuda { device_id: 0 },
        ..RuntimeOptions::default()
    };
    let err = Runtime::new(options.clone()).expect_err("CUDA is not in the CPU wheel");
    assert_eq!(err.code(), ErrorCode::EpUnavailable);
    let msg = err.to_string();
    assert!(
        msg.contains("cuda:0") && msg.contains("CUDAExecutionProvider"),
        "{msg}"
    );

    let runtime = Runtime::new(RuntimeOptions {
        allow_cpu_fallback: true,
        ..options
    })
    .expect("fallback was asked for");
    assert!(runtime
        .fallback()
        .is_some_and(|r| r.contains("CUDAExecutionProvider")));
    assert_eq!(runtime.effective_provider(), ExecutionProvider::Cpu);
}

#[test]
fn missing_onnx_runtime_library_is_named() {
    common::runtime();
    let err = Runtime::new(RuntimeOptions {
        ort_library: Some("/nonexistent/libonnxruntime.so".into()),
        ..RuntimeOptions::default()
    })
    .expect_err("no such library");
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(
        err.to_string().contains("/nonexistent/libonnxruntime.so"),
        "{err}"
    );
}

#[test]
fn progress_reports_every_step_and_can_cancel() {
    let pipeline = common::pipeline("tiny-sd");
    let mut request = small_request();
    request.steps = 4;
    request.scheduler = Some("euler".into());
    let mut seen = Vec::new();
    pipeline
        .generate_with_progress(&request, &mut |p| {
            seen.push((p.step, p.total));
            true
        })
        .expect("runs");
    assert_eq!(seen, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);

    let mut calls = 0;
    let err = pipeline
        .generate_with_progress(&request, &mut |p| {
            calls += 1;
            p.step < 2
        })
        .expect_err("cancelled");
    assert_eq!(err.code(), ErrorCode::Cancelled);
    assert_eq!(calls, 2, "no callback after cancelling");
}

#[test]
fn cancel_token_stops_a_request_from_another_thread() {
    let pipeline = common::pipeline("tiny-sd");
    let mut request = small_request();
    request.steps = 50;
    let token = CancelToken::new();
    request.cancel = Some(token.clone());
    let (reached_tx, reached_rx) = std::sync::mpsc::channel();
    let (cancelled_tx, cancelled_rx) = std::sync::mpsc::channel();
    let canceller = std::thread::spawn(move || {
        reached_rx.recv().unwrap();
        token.cancel();
        cancelled_tx.send(()).unwrap();
    });
    let mut last_step = 0;
    let err = pipeline
        .generate_with_progress(&request, &mut |p| {
            last_step = p.step;
            if p.step == 3 {
                // Hand over to the other thread and wait until it has cancelled.
                reached_tx.send(()).unwrap();
                cancelled_rx.recv().unwrap();
            }
            true
        })
        .expect_err("cancelled from another thread");
    canceller.join().unwrap();
    assert_eq!(err.code(), ErrorCode::Cancelled);
    assert_eq!(last_step, 3, "no step runs after the token is triggered");

    let token = CancelToken::new();
    token.cancel();
    request.cancel = Some(token);
    assert_eq!(
        pipeline.generate(&request).unwrap_err().code(),
        ErrorCode::Cancelled
    );
}
