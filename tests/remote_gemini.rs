//! The Gemini generator against a local server speaking the generateContent contract
//! (contracts §2): request shape, answers, refusals, retries and quotas, refused fields.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::http::{Recorded, Reply, TestServer};
use common::remote::{generator, run, sized, test_image as image};
use diffgentor::generators::{remote, Generator, GeneratorOptions, Sizes, Task};
use diffgentor::{CancelToken, ErrorCode, Image, Request};
use serde_json::{json, Value};

const KEY: &str = "g-test-key";
const MODEL: &str = "gemini-test-image";

fn png_b64(width: u32, height: u32) -> String {
    common::remote::png_b64(&image(width, height))
}

/// A successful answer: a text part and a `width`x`height` PNG.
fn image_answer(width: u32, height: u32) -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Here is your fox."},
                {"inlineData": {"mimeType": "image/png", "data": png_b64(width, height)}}
            ]},
            "finishReason": "STOP"
        }],
        "modelVersion": MODEL
    })
}

fn api_error(code: u16, status: &str, message: &str, details: Value) -> Reply {
    Reply::json(
        code,
        &json!({"error": {"code": code, "message": message, "status": status, "details": details}}),
    )
}

/// A generator for `server` with short limits; `extra` adds or overrides options.
fn gemini(server: &TestServer, extra: &[(&str, &str)]) -> Arc<dyn Generator> {
    let mut options = vec![("model", MODEL)];
    options.extend_from_slice(extra);
    generator("gemini", &server.url(""), KEY, &options)
}

fn only_request(server: &TestServer) -> Recorded {
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one call expected");
    requests.into_iter().next().unwrap()
}

#[test]
fn text_to_image_posts_generate_content_and_reads_the_inline_image() {
    let server = TestServer::start(|_, _| Reply::json(200, &image_answer(32, 18)));
    let generator = gemini(&server, &[]);
    let description = generator.describe();
    assert_eq!(description.name, MODEL);
    assert_eq!(description.kind, "gemini");
    assert_eq!(description.tasks, vec![Task::TextToImage, Task::Edit]);
    assert_eq!(description.sizes, Sizes::Any);
    assert!(!description.honours_seed && !description.negative_prompt);

    let mut reports = Vec::new();
    let output = generator
        .generate(&sized("a red fox", 1024, 576), &mut |p| {
            reports.push((p.step, p.total));
            true
        })
        .unwrap();
    assert_eq!(reports, vec![(1, 1)]);
    assert_eq!(output.images, vec![image(32, 18)]);
    assert_eq!((output.width, output.height), (32, 18));
    assert_eq!(output.latents.shape(), &[0]);
    assert_eq!(output.metadata["model"], MODEL);
    assert_eq!(output.metadata["text"], json!(["Here is your fox."]));
    assert_eq!(output.metadata["aspect_ratio"], "16:9");
    assert!(!output.metadata.contains_key("ignored"));

    let call = only_request(&server);
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(call.header("x-goog-api-key"), Some(KEY));
    assert_eq!(call.header("authorization"), None);
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(
        call.json(),
        json!({
            "contents": [{"role": "user", "parts": [{"text": "a red fox"}]}],
            // 1K is every model's default, so a size up to 1024 sends no imageSize.
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "imageConfig": {"aspectRatio": "16:9"}
            }
        })
    );
}

#[test]
fn api_version_v1_and_snake_case_answers() {
    let server = TestServer::start(|_, _| {
        Reply::json(
            200,
            &json!({"candidates": [{"finish_reason": "STOP", "content": {"parts": [
                {"inline_data": {"mime_type": "image/png", "data": png_b64(8, 8)}}
            ]}}]}),
        )
    });
    let generator = gemini(&server, &[("api_version", "v1")]);
    let output = run(&*generator, &sized("a square", 2048, 2048)).unwrap();
    assert_eq!(output.images, vec![image(8, 8)]);
    assert!(!output.metadata.contains_key("text"));
    let call = only_request(&server);
    assert_eq!(call.path, format!("/v1/models/{MODEL}:generateContent"));
    assert_eq!(
        call.json()["generationConfig"]["imageConfig"],
        json!({"aspectRatio": "1:1", "imageSize": "2K"})
    );
}

#[test]
fn explicit_image_options_win_over_the_request_size() {
    let server = TestServer::start(|_, _| Reply::json(200, &image_answer(4, 3)));
    let generator = gemini(
        &server,
        &[
            ("aspect_ratio", "4:3"),
            ("image_size", "4K"),
            ("response_modalities", "IMAGE"),
        ],
    );
    let output = run(&*generator, &sized("a wide field", 1024, 576)).unwrap();
    assert_eq!(output.metadata["aspect_ratio"], "4:3");
    assert_eq!(output.metadata["image_size"], "4K");
    let body = only_request(&server).json();
    assert_eq!(
        body["generationConfig"],
        json!({"responseModalities": ["IMAGE"],
               "imageConfig": {"aspectRatio": "4:3", "imageSize": "4K"}})
    );
}

#[test]
fn edits_send_the_init_image_as_inline_png() {
    let server = TestServer::start(|_, _| Reply::json(200, &image_answer(16, 16)));
    let generator = gemini(&server, &[]);
    let source = image(12, 10);
    let request = Request {
        init_image: Some(source.clone()),
        ..Request::new("make it night")
    };
    let output = run(&*generator, &request).unwrap();
    assert_eq!(output.images.len(), 1);

    let body = only_request(&server).json();
    let parts = body["contents"][0]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0], json!({"text": "make it night"}));
    assert_eq!(parts[1]["inlineData"]["mimeType"], "image/png");
    let sent = STANDARD
        .decode(parts[1]["inlineData"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(Image::decode(&sent).unwrap(), source);
    // No size asked: the service keeps the input's shape, so no imageConfig is sent.
    assert!(
        body["generationConfig"].get("imageConfig").is_none(),
        "{body}"
    );
}

#[test]
fn a_blocked_prompt_is_refused_with_its_reason() {
    let server = TestServer::start(|_, _| {
        Reply::json(
            200,
            &json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT",
                    "blockReasonMessage": "The prompt violates policy."}}),
        )
    });
    let err = run(
        &*gemini(&server, &[("max_retries", "3")]),
        &Request::new("x"),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Refused, "{err}");
    let remote = err.remote().unwrap();
    assert_eq!(remote.error_type.as_deref(), Some("PROHIBITED_CONTENT"));
    assert_eq!(remote.attempts, 1);
    let text = err.to_string();
    assert!(text.contains("blockReason PROHIBITED_CONTENT"), "{text}");
    assert!(text.contains("The prompt violates policy."), "{text}");
    assert_eq!(server.requests().len(), 1, "a refusal is not retried");
}

#[test]
fn a_safety_finish_is_refused_and_no_image_is_an_error() {
    for (finish, code) in [
        ("SAFETY", ErrorCode::Refused),
        ("IMAGE_SAFETY", ErrorCode::Refused),
        ("NO_IMAGE", ErrorCode::Remote),
    ] {
        let server = TestServer::start(move |_, _| {
            Reply::json(
                200,
                &json!({"candidates": [{"finishReason": finish,
                    "content": {"parts": [{"text": "I can't make that image."}]},
                    "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                        "probability": "HIGH", "blocked": finish == "SAFETY"}]}]}),
            )
        });
        let err = run(&*gemini(&server, &[]), &Request::new("x")).unwrap_err();
        assert_eq!(err.code(), code, "{finish}: {err}");
        let text = err.to_string();
        assert!(text.contains(&format!("finishReason {finish}")), "{text}");
        assert!(text.contains("I can't make that image."), "{text}");
        assert_eq!(
            text.contains("HARM_CATEGORY_DANGEROUS_CONTENT"),
            finish == "SAFETY",
            "{text}"
        );
        assert_eq!(server.requests().len(), 1, "{finish} is not retried");
    }
}

#[test]
fn resource_exhausted_waits_for_retry_info_then_succeeds() {
    let server = TestServer::start(|_, index| {
        if index == 0 {
            // 0.8 s is longer than the pool's first backoff (at most 0.5 s), so only honouring
            // retryDelay passes.
            api_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.8s"}]),
            )
        } else {
            Reply::json(200, &image_answer(4, 4))
        }
    });
    let started = Instant::now();
    let output = run(&*gemini(&server, &[]), &Request::new("x")).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(output.images.len(), 1);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(790), "waited only {gap:?}");
    assert!(elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(4));
}

#[test]
fn a_daily_quota_is_rate_limited_without_retrying() {
    let server = TestServer::start(|_, _| {
        api_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota.",
            json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.1s"}
            ]),
        )
    });
    let started = Instant::now();
    let err = run(
        &*gemini(&server, &[("max_retries", "3")]),
        &Request::new("x"),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RateLimited, "{err}");
    let remote = err.remote().unwrap();
    assert_eq!(remote.attempts, 1);
    assert_eq!(remote.status, Some(429));
    assert_eq!(remote.error_type.as_deref(), Some("RESOURCE_EXHAUSTED"));
    assert!(
        remote
            .message
            .contains("GenerateRequestsPerDayPerProjectPerModel"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn server_errors_are_retried_then_reported_with_the_attempts() {
    let server = TestServer::start(|_, _| {
        api_error(
            500,
            "INTERNAL",
            "An internal error has occurred.",
            json!([]),
        )
    });
    let err = run(
        &*gemini(&server, &[("max_retries", "1")]),
        &Request::new("x"),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote, "{err}");
    let remote = err.remote().unwrap();
    assert_eq!(remote.attempts, 2);
    assert_eq!(remote.status, Some(500));
    assert_eq!(remote.error_type.as_deref(), Some("INTERNAL"));
    assert_eq!(remote.service, "gemini");
    assert!(err.to_string().contains("(after 2 attempts)"), "{err}");
    assert_eq!(server.requests().len(), 2);
}

/// Gemini's answer to a wrong key: 400 INVALID_ARGUMENT with `ErrorInfo` reason API_KEY_INVALID.
fn invalid_key() -> Reply {
    api_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}}]),
    )
}

#[test]
fn a_refused_key_leaves_the_rotation_and_another_serves() {
    let refused = TestServer::start(|_, _| invalid_key());
    let denied = TestServer::start(|_, _| {
        api_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers.",
            json!([]),
        )
    });
    let live = TestServer::start(|_, _| Reply::json(200, &image_answer(4, 4)));
    let dir = tempfile::tempdir().unwrap();
    let endpoints: Vec<Value> = [&refused, &denied, &live]
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"base_url": s.url(""), "api_key": format!("g-pool-key-{i}")}))
        .collect();
    let file = dir.path().join("pool.json");
    std::fs::write(&file, json!({"endpoints": endpoints}).to_string()).unwrap();
    let mut options = GeneratorOptions::new();
    options
        .set("pool_file", file.to_str().unwrap())
        .set("model", MODEL)
        .set("timeout_s", "5")
        .set("max_retries", "0");
    let generator = remote("gemini", &options).unwrap();
    for _ in 0..4 {
        run(&*generator, &Request::new("x")).expect("the live key serves every call");
    }
    assert_eq!(refused.requests().len(), 1, "the invalid key is tried once");
    assert_eq!(denied.requests().len(), 1, "the denied key is tried once");
    assert_eq!(live.requests().len(), 4);

    // Alone, the service's own error is reported, after one attempt.
    let err = run(
        &*gemini(&refused, &[("max_retries", "3")]),
        &Request::new("x"),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote, "{err}");
    let remote = err.remote().unwrap();
    assert_eq!(
        (remote.status, remote.error_type.as_deref(), remote.attempts),
        (Some(400), Some("INVALID_ARGUMENT"), 1)
    );
    assert!(err.to_string().contains("API key not valid"), "{err}");
    assert_eq!(refused.requests().len(), 2);
}

#[test]
fn client_errors_are_final_and_bodies_that_are_not_json_are_quoted() {
    let server = TestServer::start(|_, _| {
        api_error(
            400,
            "INVALID_ARGUMENT",
            "Unsupported aspect ratio: 5:4",
            json!([]),
        )
    });
    let err = run(
        &*gemini(&server, &[("max_retries", "3")]),
        &Request::new("x"),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote);
    let remote = err.remote().unwrap();
    assert_eq!(
        (remote.status, remote.error_type.as_deref(), remote.attempts),
        (Some(400), Some("INVALID_ARGUMENT"), 1)
    );
    assert!(remote.message.contains("Unsupported aspect ratio"), "{err}");
    assert_eq!(server.requests().len(), 1);

    let server = TestServer::start(|_, _| {
        Reply::raw(502, "text/html", "<html>Bad Gateway from proxy</html>")
    });
    let err = run(
        &*gemini(&server, &[("max_retries", "0")]),
        &Request::new("x"),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote);
    assert_eq!(err.remote().unwrap().status, Some(502));
    assert!(err.to_string().contains("Bad Gateway from proxy"), "{err}");
}

#[test]
fn unusable_answers_are_remote_errors_naming_the_problem() {
    let corrupt_png = {
        let mut png = image(8, 8).encode_png(&[]).unwrap();
        png.truncate(40);
        STANDARD.encode(png)
    };
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::raw(200, "application/json", "{\"candidates\": [ {"),
            "not JSON",
        ),
        (
            Reply::json(
                200,
                &json!({"candidates": [{"finishReason": "STOP", "content": {"parts": [
                    {"inlineData": {"mimeType": "text/plain",
                        "data": STANDARD.encode("just words, no pixels")}}]}}]}),
            ),
            "not a usable image",
        ),
        (
            Reply::json(
                200,
                &json!({"candidates": [{"content": {"parts": [
                    {"inlineData": {"mimeType": "image/png", "data": corrupt_png}}]}}]}),
            ),
            "not a usable image",
        ),
        (
            Reply::json(
                200,
                &json!({"candidates": [{"content": {"parts": [
                    {"inlineData": {"mimeType": "image/png", "data": "%%% not base64"}}]}}]}),
            ),
            "not valid base64",
        ),
        (
            Reply::json(200, &json!({"candidates": []})),
            "neither candidates",
        ),
    ];
    for (reply, needle) in cases {
        let server = TestServer::start(move |_, _| reply.clone());
        let err = run(&*gemini(&server, &[]), &Request::new("x")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Remote, "{needle}: {err}");
        assert_eq!(err.remote().unwrap().attempts, 1, "{needle}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert_eq!(server.requests().len(), 1, "{needle}: not retried");
    }
}

#[test]
fn fields_gemini_cannot_use_are_refused_or_listed_with_best_effort() {
    let server = TestServer::start(|_, _| Reply::json(200, &image_answer(4, 4)));
    let generator = gemini(&server, &[]);
    let request = Request {
        negative_prompt: Some("blurry".into()),
        seed: Some(42),
        init_image: Some(image(4, 4)),
        mask: Some(image(4, 4)),
        ..Request::new("a cat")
    };
    let err = run(&*generator, &request).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err}");
    let text = err.to_string();
    for name in ["`negative_prompt`", "`seed`", "`mask`", "best_effort"] {
        assert!(text.contains(name), "{name}: {text}");
    }
    assert!(!text.contains("`steps`"), "{text}");

    let err = run(&*generator, &sized("a cat", 1000, 700)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(err.to_string().contains("`size` 1000x700"), "{err}");
    let err = run(
        &*generator,
        &Request {
            width: Some(512),
            ..Request::new("a cat")
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(err.to_string().contains("`size`"), "{err}");
    assert!(server.requests().is_empty(), "refused before any call");

    let best_effort = Request {
        best_effort: true,
        steps: 20,
        width: Some(1000),
        height: Some(700),
        ..request
    };
    let output = run(&*generator, &best_effort).unwrap();
    assert_eq!(
        output.metadata["ignored"],
        json!(["negative_prompt", "seed", "steps", "mask", "size"])
    );
    assert_eq!(output.metadata["aspect_ratio"], "3:2");
    let body = only_request(&server).json();
    assert_eq!(
        body["generationConfig"]["imageConfig"]["aspectRatio"],
        "3:2"
    );
    assert!(!body.to_string().contains("blurry"), "{body}");
}

#[test]
fn the_key_never_shows_in_debug_or_errors() {
    // A misbehaving proxy echoing the header back must not leak it into error text either.
    let server = TestServer::start(|recorded, _| {
        let key = recorded
            .header("x-goog-api-key")
            .unwrap_or("none")
            .to_string();
        api_error(
            403,
            "PERMISSION_DENIED",
            &format!("API key {key} has no access"),
            json!([]),
        )
    });
    let generator = gemini(&server, &[]);
    let err = run(&*generator, &Request::new("x")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote);
    for text in [
        format!("{generator:?}"),
        err.to_string(),
        format!("{err:?}"),
    ] {
        assert!(!text.contains(KEY), "{text}");
    }
    assert!(
        err.to_string().contains("API key <redacted> has no access"),
        "{err}"
    );
    assert_eq!(only_request(&server).header("x-goog-api-key"), Some(KEY));
}

#[test]
fn several_images_make_one_call_each() {
    let server = TestServer::start(|_, index| Reply::json(200, &image_answer(4 + index as u32, 4)));
    let generator = gemini(&server, &[]);
    let mut reports = Vec::new();
    let request = Request {
        num_images: 2,
        ..Request::new("two foxes")
    };
    let output = generator
        .generate(&request, &mut |p| {
            reports.push((p.step, p.total));
            true
        })
        .unwrap();
    assert_eq!(output.images, vec![image(4, 4), image(5, 4)]);
    assert_eq!(reports, vec![(1, 2), (2, 2)]);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(
        output.metadata["text"],
        json!(["Here is your fox.", "Here is your fox."])
    );
}

#[test]
fn a_failure_after_the_first_image_says_which_call_failed() {
    let server = TestServer::start(|_, index| {
        if index == 0 {
            Reply::json(200, &image_answer(4, 4))
        } else {
            api_error(400, "INVALID_ARGUMENT", "bad request", json!([]))
        }
    });
    let request = Request {
        num_images: 3,
        ..Request::new("x")
    };
    let err = run(&*gemini(&server, &[]), &request).unwrap_err();
    assert!(
        err.to_string().contains("image 2 of 3: bad request"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn cancellation_stops_before_the_next_call() {
    let server = TestServer::start(|_, _| Reply::json(200, &image_answer(4, 4)));
    let generator = gemini(&server, &[]);
    let token = CancelToken::new();
    token.cancel();
    let request = Request {
        cancel: Some(token),
        ..Request::new("x")
    };
    assert_eq!(
        run(&*generator, &request).unwrap_err().code(),
        ErrorCode::Cancelled
    );
    assert!(server.requests().is_empty());

    // A progress callback answering false stops the remaining calls.
    let calls = AtomicUsize::new(0);
    let request = Request {
        num_images: 3,
        ..Request::new("x")
    };
    let err = generator
        .generate(&request, &mut |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            false
        })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Cancelled);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn bad_options_are_invalid_arguments() {
    let server = TestServer::start(|_, _| Reply::json(200, &image_answer(4, 4)));
    for (key, value, needle) in [
        ("api_version", "v2", "api_version `v2`"),
        ("response_modalities", "TEXT", "must include IMAGE"),
        ("quality", "high", "unknown gemini option `quality`"),
    ] {
        let mut options = GeneratorOptions::new();
        options
            .set("base_url", &server.url(""))
            .set("api_key", KEY)
            .set(key, value);
        let err = remote("gemini", &options).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg, "{key}");
        assert!(err.to_string().contains(needle), "{key}: {err}");
    }
}
