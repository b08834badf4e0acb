//! The OpenAI Images generator against local servers: a scripted one for request shapes, answers,
//! retries, timeouts and refusals (contracts §1, §5), and a stub that validates every request
//! against OpenAI's published spec (tests/contract/openai_proxy.py).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::http::{Recorded, Reply, TestServer};
use common::remote::{generator, png_b64, remote_failure, run, sized, test_image as image};
use diffgentor::generators::{remote, Generator, GeneratorOptions, Sizes, Task};
use diffgentor::{CancelToken, ErrorCode, Image, Request};
use serde_json::{json, Value};

const KEY: &str = "sk-test-key";

/// A successful answer holding `images`, the first with a revised prompt.
fn answer(images: &[Image]) -> Reply {
    let data: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let mut entry = json!({ "b64_json": png_b64(image) });
            if i == 0 {
                entry["revised_prompt"] = json!("a red fox, watercolour");
            }
            entry
        })
        .collect();
    Reply::json(200, &json!({ "created": 1767225600, "data": data }))
}

fn api_error(status: u16, kind: &str, code: Option<&str>, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

/// A generator for `server` with short limits; `extra` adds or overrides options.
fn openai(server: &TestServer, extra: &[(&str, &str)]) -> Arc<dyn Generator> {
    generator("openai", &server.url("/v1"), KEY, extra)
}

#[test]
fn generations_send_the_documented_body_and_decode_the_images() {
    let served = [image(6, 4), image(6, 4)];
    // As many images as asked for (more would be refused).
    let replies = [answer(&served[..1]), answer(&served)];
    let server = TestServer::start(move |recorded, _| {
        let n = recorded.json()["n"].as_u64().unwrap_or(1);
        replies[usize::from(n > 1)].clone()
    });
    let generator = openai(
        &server,
        &[
            ("quality", "high"),
            ("background", "opaque"),
            ("output_format", "png"),
            ("output_compression", "80"),
            ("moderation", "low"),
            ("user", "user-42"),
        ],
    );
    let request = Request {
        num_images: 2,
        ..sized("a red fox", 1536, 1024)
    };
    let mut reports = Vec::new();
    let output = generator
        .generate(&request, &mut |p| {
            reports.push((p.step, p.total, p.stage, p.stages));
            true
        })
        .unwrap();

    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str()),
        ("POST", "/v1/images/generations")
    );
    assert_eq!(sent[0].header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json(),
        json!({
            "model": "gpt-image-1",
            "prompt": "a red fox",
            "n": 2,
            "size": "1536x1024",
            "quality": "high",
            "background": "opaque",
            "output_format": "png",
            "output_compression": 80,
            "moderation": "low",
            "user": "user-42",
        })
    );
    assert_eq!(output.images, served);
    assert_eq!((output.width, output.height), (6, 4));
    assert_eq!((output.seed, output.scheduler.as_str()), (0, ""));
    assert_eq!(output.latents.shape(), &[0]);
    assert_eq!(reports, vec![(1, 1, 1, 1)]);
    assert_eq!(
        output.metadata["revised_prompts"],
        json!(["a red fox, watercolour", null])
    );
    assert_eq!(output.metadata["model"], json!("gpt-image-1"));
    assert_eq!(output.metadata["created"], json!(1767225600));
    assert!(!output.metadata.contains_key("ignored"));

    // No size asks the model for `auto`; unset options are not sent at all.
    let plain = openai(&server, &[]);
    run(&*plain, &Request::new("a fox")).unwrap();
    assert_eq!(
        server.requests()[1].json(),
        json!({"model": "gpt-image-1", "prompt": "a fox", "n": 1, "size": "auto"})
    );
}

/// One multipart part: name, filename, content type, bytes.
type Part = (String, Option<String>, Option<String>, Vec<u8>);

/// Splits a recorded multipart body into its parts.
fn multipart(recorded: &Recorded) -> Vec<Part> {
    let content_type = recorded.header("content-type").unwrap();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let body = &recorded.body;
    let find = |from: usize, needle: &[u8]| {
        body[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut parts = Vec::new();
    let mut at = find(0, delimiter.as_bytes()).expect("a first delimiter") + delimiter.len();
    while body[at..].starts_with(b"\r\n") {
        let head_end = find(at, b"\r\n\r\n").expect("part headers end");
        let head = String::from_utf8_lossy(&body[at + 2..head_end]).to_string();
        let next = find(head_end, format!("\r\n{delimiter}").as_bytes()).expect("a next delimiter");
        let param = |key: &str| {
            head.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_string)
        };
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .map(str::to_string);
        parts.push((
            param(" name").expect("a part name"),
            param("filename"),
            content_type,
            body[head_end + 4..next].to_vec(),
        ));
        at = next + 2 + delimiter.len();
    }
    assert!(
        body[at..].starts_with(b"--"),
        "the body ends with the closing delimiter"
    );
    parts
}

#[test]
fn edits_send_multipart_with_the_mask_as_alpha() {
    let served = image(8, 4);
    let reply = answer(std::slice::from_ref(&served));
    let server = TestServer::start(move |_, _| reply.clone());
    let generator = openai(
        &server,
        &[
            ("quality", "low"),
            ("moderation", "low"),
            ("output_compression", "7"),
        ],
    );
    let init = image(8, 4);
    // Our mask: white (repaint) on the left half, black (keep) on the right.
    let mask_pixels: Vec<u8> = (0..8 * 4)
        .flat_map(|i| if i % 8 < 4 { [255; 3] } else { [0; 3] })
        .collect();
    let mask = Image {
        width: 8,
        height: 4,
        pixels: mask_pixels,
    };
    let request = Request {
        init_image: Some(init.clone()),
        mask: Some(mask),
        ..sized("make it snow", 1024, 1024)
    };
    let output = run(&*generator, &request).unwrap();
    assert_eq!(output.images, vec![served]);

    let sent = server.requests();
    assert_eq!(sent[0].path, "/v1/images/edits");
    assert_eq!(sent[0].header("authorization"), Some("Bearer sk-test-key"));
    assert!(sent[0]
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    let parts = multipart(&sent[0]);
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "image",
            "mask",
            "prompt",
            "model",
            "n",
            "size",
            "quality",
            "output_compression"
        ],
        "one image is `image`; moderation is a generations field only"
    );
    let part = |name: &str| parts.iter().find(|p| p.0 == name).unwrap();
    let text = |name: &str| String::from_utf8(part(name).3.clone()).unwrap();
    assert_eq!(
        (text("prompt"), text("model"), text("n"), text("size")),
        (
            "make it snow".into(),
            "gpt-image-1".into(),
            "1".into(),
            "1024x1024".into()
        )
    );
    assert_eq!(
        (text("quality"), text("output_compression")),
        ("low".into(), "7".into())
    );

    let (_, filename, content_type, bytes) = part("image");
    assert!(filename.is_some());
    assert_eq!(content_type.as_deref(), Some("image/png"));
    assert_eq!(Image::decode(bytes).unwrap(), init);

    let (_, filename, content_type, bytes) = part("mask");
    assert!(filename.is_some());
    assert_eq!(content_type.as_deref(), Some("image/png"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes.clone()))
        .read_info()
        .unwrap();
    let mut rgba = vec![0; decoder.output_buffer_size().unwrap()];
    let info = decoder.next_frame(&mut rgba).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    assert_eq!((info.width, info.height), (8, 4));
    let alpha: Vec<u8> = rgba.chunks_exact(4).map(|p| p[3]).collect();
    let expected: Vec<u8> = (0..32).map(|i| if i % 8 < 4 { 0 } else { 255 }).collect();
    assert_eq!(alpha, expected, "OpenAI repaints where alpha is 0");

    let mismatched = Request {
        mask: Some(image(4, 4)),
        ..request
    };
    let err = run(&*generator, &mismatched).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(
        err.to_string()
            .contains("mask is 4x4 but the init image is 8x4"),
        "{err}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "a bad mask is refused before sending"
    );
}

#[test]
fn a_rate_limit_is_waited_out_as_the_server_asks() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, i| match i {
        0 => api_error(429, "requests", Some("rate_limit_exceeded"), "slow down")
            .header("retry-after-ms", "300")
            .header("retry-after", "30"),
        _ => ok.clone(),
    });
    let generator = openai(&server, &[]);
    let started = Instant::now();
    run(&*generator, &Request::new("a fox")).unwrap();
    let elapsed = started.elapsed();
    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    let gap = sent[1].at - sent[0].at;
    assert!(
        gap >= Duration::from_millis(300),
        "retry-after-ms wins: {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(3),
        "retry-after (30 s) is not used: {gap:?}"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
}

#[test]
fn server_errors_are_retried_with_doubling_backoff() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, i| match i {
        0 | 1 => Reply::raw(500, "text/plain", "upstream broke"),
        _ => ok.clone(),
    });
    let generator = openai(&server, &[("max_retries", "2")]);
    let started = Instant::now();
    run(&*generator, &Request::new("a fox")).unwrap();
    let elapsed = started.elapsed();
    let sent = server.requests();
    assert_eq!(sent.len(), 3, "two failures and a success");
    // The pool's default backoff: 0.5 s then 1 s, each less up to a quarter of jitter.
    let gaps = [sent[1].at - sent[0].at, sent[2].at - sent[1].at];
    let slack = Duration::from_millis(400);
    assert!(
        gaps[0] >= Duration::from_millis(375) && gaps[0] <= Duration::from_millis(500) + slack,
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(750) && gaps[1] <= Duration::from_millis(1000) + slack,
        "{gaps:?}"
    );
    assert!(elapsed >= Duration::from_millis(1125), "{elapsed:?}");
}

#[test]
fn server_errors_that_persist_fail_with_the_attempt_count() {
    let server = TestServer::start(|_, _| {
        Reply::raw(500, "text/html", "<h1>Internal Server Error</h1>").header("retry-after-ms", "5")
    });
    let generator = openai(&server, &[("max_retries", "2")]);
    let (text, remote) =
        remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
    assert_eq!(server.requests().len(), 3);
    assert_eq!((remote.status, remote.attempts), (Some(500), 3));
    assert!(text.contains("HTTP 500"), "{text}");
    assert!(text.contains("Internal Server Error"), "{text}");
    assert!(text.contains("(after 3 attempts)"), "{text}");
    assert!(
        text.contains(&server.url("/v1")),
        "the endpoint is named: {text}"
    );
}

#[test]
fn slow_answers_time_out() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, _| ok.clone().delayed(Duration::from_millis(1500)));
    let generator = openai(&server, &[("timeout_s", "0.3"), ("max_retries", "0")]);
    let started = Instant::now();
    let (text, remote) =
        remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Timeout);
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(remote.attempts, 1);
    assert!(text.contains("no answer within 0.3 s"), "{text}");
}

#[test]
fn truncated_bodies_are_remote_errors() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, _| ok.clone().truncated(20));
    let generator = openai(&server, &[("max_retries", "1")]);
    let (text, remote) =
        remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
    // A broken connection is worth another try, like any transport failure.
    assert_eq!((server.requests().len(), remote.attempts), (2, 2));
    assert!(text.contains("request failed"), "{text}");
}

#[test]
fn malformed_answers_are_remote_errors_and_not_retried() {
    let png = STANDARD.encode(b"hello, not an image");
    let bodies = [
        (
            Reply::raw(200, "application/json", "{\"created\": 1, \"data\": ["),
            "the answer is not JSON",
        ),
        (Reply::json(200, &json!({"data": []})), "no `created`"),
        (Reply::json(200, &json!({"created": 1})), "no `data`"),
        (
            Reply::json(200, &json!({"created": 1, "data": [{"b64_json": png}]})),
            "data[0].b64_json is not an image: not a PNG, JPEG or WebP image (19 bytes",
        ),
    ];
    for (reply, needle) in bodies {
        let server = TestServer::start(move |_, _| reply.clone());
        let generator = openai(&server, &[("max_retries", "2")]);
        let (text, remote) =
            remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
        assert!(text.contains(needle), "{needle}: {text}");
        assert!(text.contains("HTTP 200"), "{text}");
        assert_eq!(
            (server.requests().len(), remote.attempts),
            (1, 1),
            "{needle}"
        );
    }
}

/// An 8x8 JPEG whose frame header claims `width` x `height` (JPEG headers carry no checksum):
/// decoding it would allocate for the claimed size.
fn lying_jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = image(8, 8).encode_jpeg(90).unwrap();
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

#[test]
fn answers_with_more_images_than_asked_for_are_refused_before_decoding() {
    let three = answer(&[image(2, 2), image(2, 2), image(2, 2)]);
    let server = TestServer::start(move |_, _| three.clone());
    let generator = openai(&server, &[("max_retries", "2")]);
    let (text, remote) =
        remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
    assert!(
        text.contains(
            "HTTP 200: invalid_response: the answer's `data` holds 3 images but 1 was asked for"
        ),
        "{text}"
    );
    assert_eq!(
        (server.requests().len(), remote.attempts),
        (1, 1),
        "not retried"
    );
    assert_eq!(server.requests()[0].json()["n"], json!(1));
    // Asked for 3, the same answer is fine.
    let request = Request {
        num_images: 3,
        ..Request::new("a fox")
    };
    assert_eq!(run(&*generator, &request).unwrap().images.len(), 3);

    // URLs are counted too, before any is fetched.
    let server = TestServer::start(move |recorded, _| {
        let host = recorded.header("host").unwrap_or_default().to_string();
        let url = |name: &str| json!({"url": format!("http://{host}/files/{name}")});
        Reply::json(
            200,
            &json!({"created": 1, "data": [url("0.png"), url("1.png")]}),
        )
    });
    let generator = openai(
        &server,
        &[("model", "dall-e-2"), ("response_format", "url")],
    );
    let (text, _) = remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
    assert!(
        text.contains("holds 2 images but 1 was asked for"),
        "{text}"
    );
    assert_eq!(server.requests().len(), 1, "nothing was downloaded");
}

#[test]
fn answers_over_the_pixel_budget_are_refused_from_their_headers() {
    // 9000x9000 is 81 Mpx, over the 64 Mpx one image asked for may bring.
    let huge = STANDARD.encode(lying_jpeg(9000, 9000));
    let server = TestServer::start(move |_, _| {
        Reply::json(200, &json!({"created": 1, "data": [{"b64_json": huge}]}))
    });
    let generator = openai(&server, &[("max_retries", "2")]);
    let (text, remote) =
        remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
    assert!(
        text.contains(
            "data[0].b64_json is 9000x9000: the answer's images would hold more than 67108864 pixels"
        ),
        "{text}"
    );
    assert_eq!((server.requests().len(), remote.attempts), (1, 1));

    // A downloaded image is held to what is left of the budget too.
    let jpeg = lying_jpeg(9000, 9000);
    let server = TestServer::start(move |recorded, _| {
        let host = recorded.header("host").unwrap_or_default().to_string();
        match recorded.path.as_str() {
            "/v1/images/generations" => Reply::json(
                200,
                &json!({"created": 1, "data": [{"url": format!("http://{host}/files/0.jpg")}]}),
            ),
            _ => Reply::raw(200, "image/jpeg", jpeg.clone()),
        }
    });
    let generator = openai(
        &server,
        &[("model", "dall-e-2"), ("response_format", "url")],
    );
    let (text, _) = remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
    assert!(
        text.contains("downloading data[0].url") && text.contains("the image is 9000x9000"),
        "{text}"
    );
}

#[test]
fn a_refused_key_alone_reports_the_services_error_after_one_attempt() {
    for (status, kind, code) in [
        (401, "invalid_request_error", "invalid_api_key"),
        (
            403,
            "invalid_request_error",
            "unsupported_country_region_territory",
        ),
    ] {
        let server = TestServer::start(move |_, _| {
            api_error(status, kind, Some(code), "this key may not do that")
        });
        let generator = openai(&server, &[("max_retries", "3")]);
        let (text, remote) =
            remote_failure(run(&*generator, &Request::new("a fox")), ErrorCode::Remote);
        assert!(
            text.contains(&format!(
                "HTTP {status}: {kind}/{code}: this key may not do that"
            )),
            "{text}"
        );
        assert_eq!(remote.status, Some(status));
        assert_eq!(
            (server.requests().len(), remote.attempts),
            (1, 1),
            "{status} is not retried"
        );
    }
}

#[test]
fn error_objects_carry_type_code_and_message() {
    let server = TestServer::start(|_, _| {
        Reply::json(
            400,
            &json!({"error": {
                "message": "Invalid value: '512x512'. Supported values are: '1024x1024'.",
                "type": "invalid_request_error", "param": "size", "code": "invalid_value"
            }}),
        )
    });
    // An OpenAI-compatible model name, so our own size check lets 512x512 through.
    let generator = openai(&server, &[("model", "gpt-image-x"), ("max_retries", "2")]);
    let (text, remote) = remote_failure(
        run(&*generator, &sized("a fox", 512, 512)),
        ErrorCode::Remote,
    );
    assert_eq!(server.requests().len(), 1, "a 400 is final");
    assert_eq!(remote.status, Some(400));
    assert_eq!(
        remote.error_type.as_deref(),
        Some("invalid_request_error/invalid_value")
    );
    assert!(
        text.contains("HTTP 400: invalid_request_error/invalid_value: Invalid value"),
        "{text}"
    );
    assert!(text.contains("(param `size`)"), "{text}");

    // sd-server's `{"error": "..."}` and plain text are read too.
    let server = TestServer::start(|_, i| match i {
        0 => Reply::json(400, &json!({"error": "prompt is required"})),
        _ => Reply::raw(404, "text/plain", "no such route"),
    });
    let generator = openai(&server, &[("model", "sd-turbo")]);
    let (text, _) = remote_failure(run(&*generator, &Request::new("x")), ErrorCode::Remote);
    assert!(text.ends_with("HTTP 400: prompt is required"), "{text}");
    let (text, _) = remote_failure(run(&*generator, &Request::new("x")), ErrorCode::Remote);
    assert!(text.ends_with("HTTP 404: no such route"), "{text}");
}

#[test]
fn moderation_blocks_are_refusals() {
    let server = TestServer::start(|_, i| match i {
        0 => api_error(
            400,
            "image_generation_user_error",
            Some("moderation_blocked"),
            "Your request was rejected by the safety system.",
        ),
        _ => api_error(
            400,
            "invalid_request_error",
            Some("content_policy_violation"),
            "Your request was rejected as a result of our safety system.",
        ),
    });
    let generator = openai(&server, &[("max_retries", "2")]);
    for _ in 0..2 {
        let (text, remote) =
            remote_failure(run(&*generator, &Request::new("x")), ErrorCode::Refused);
        assert_eq!(remote.attempts, 1);
        assert!(text.contains("safety system"), "{text}");
    }
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn an_exhausted_quota_is_not_retried() {
    let server = TestServer::start(|_, _| {
        api_error(
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota, please check your plan and billing details.",
        )
        .header("retry-after-ms", "5")
    });
    let generator = openai(&server, &[("max_retries", "3")]);
    let (text, remote) =
        remote_failure(run(&*generator, &Request::new("x")), ErrorCode::RateLimited);
    assert_eq!((server.requests().len(), remote.attempts), (1, 1));
    assert_eq!(remote.error_type.as_deref(), Some("insufficient_quota"));
    assert!(text.contains("exceeded your current quota"), "{text}");
}

#[test]
fn url_answers_are_downloaded_without_the_key() {
    let served = image(4, 4);
    let png = served.encode_png(&[]).unwrap();
    let server = TestServer::start(move |recorded, i| {
        let host = recorded.header("host").unwrap_or_default().to_string();
        let url = |name: &str| json!({"url": format!("http://{host}/files/{name}?sig=SIGNATURE")});
        match recorded.path.as_str() {
            // The first answer names an image that is gone, the next only one that is there.
            "/v1/images/generations" if i == 0 => Reply::json(
                200,
                &json!({"created": 1, "data": [url("0.png"), url("gone.png")]}),
            ),
            "/v1/images/generations" => {
                Reply::json(200, &json!({"created": 1, "data": [url("0.png")]}))
            }
            p if p.starts_with("/files/0.png") => Reply::raw(200, "image/png", png.clone()),
            _ => Reply::raw(404, "text/plain", "expired"),
        }
    });
    let generator = openai(
        &server,
        &[("model", "dall-e-2"), ("response_format", "url")],
    );
    let request = Request {
        num_images: 2,
        ..sized("a fox", 256, 256)
    };
    let (text, remote) = remote_failure(run(&*generator, &request), ErrorCode::Remote);
    assert!(text.contains("downloading data[1].url"), "{text}");
    assert!(text.contains("HTTP 404: expired"), "{text}");
    assert!(
        !text.contains("SIGNATURE"),
        "signed queries are not shown: {text}"
    );
    assert_eq!(remote.status, Some(404));

    let sent = server.requests();
    assert_eq!(sent[0].json()["response_format"], json!("url"));
    assert_eq!(sent[0].json()["size"], json!("256x256"));
    assert_eq!(
        (sent[1].method.as_str(), sent[1].path.as_str()),
        ("GET", "/files/0.png?sig=SIGNATURE")
    );
    assert_eq!(
        sent[1].header("authorization"),
        None,
        "the key stays with the API"
    );

    let output = run(&*generator, &Request::new("a fox")).unwrap();
    assert_eq!(output.images, vec![served]);
    let sent = server.requests();
    assert!(
        sent[3].json().get("size").is_none(),
        "dall-e-2 gets no `auto`"
    );
}

#[test]
fn the_key_never_shows() {
    let server = TestServer::start(|_, _| {
        api_error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided: sk-test-key. You can find your API key at ...",
        )
    });
    let generator = openai(&server, &[]);
    let err = run(&*generator, &Request::new("x")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote);
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{generator:?}"),
    ] {
        assert!(!text.contains(KEY), "{text}");
    }
    assert!(
        err.to_string()
            .contains("Incorrect API key provided: <redacted>"),
        "{err}"
    );
    assert!(format!("{generator:?}").contains("<redacted>"));
}

#[test]
fn fields_openai_cannot_use_are_refused_or_listed() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, _| ok.clone());
    let generator = openai(&server, &[]);
    let mut request = Request {
        negative_prompt: Some("blurry".into()),
        seed: Some(7),
        steps: 20,
        scheduler: Some("euler".into()),
        loras: Some(vec![diffgentor::LoraUse::new("style", 0.8)]),
        ..sized("a fox", 512, 512)
    };
    let err = run(&*generator, &request).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    let text = err.to_string();
    for field in [
        "`negative_prompt`",
        "`seed`",
        "`steps`",
        "`scheduler`",
        "`loras`",
        "`size` 512x512",
    ] {
        assert!(text.contains(field), "{field}: {text}");
    }
    assert!(text.contains("1024x1024, 1536x1024, 1024x1536"), "{text}");
    assert!(text.contains("best_effort"), "{text}");
    assert!(server.requests().is_empty(), "refused before any call");

    request.best_effort = true;
    let output = run(&*generator, &request).unwrap();
    assert_eq!(
        output.metadata["ignored"],
        json!([
            "negative_prompt",
            "seed",
            "scheduler",
            "steps",
            "loras",
            "size"
        ])
    );
    let sent = server.requests()[0].json();
    assert_eq!(
        sent["size"],
        json!("1024x1024"),
        "the nearest size the model makes"
    );
    assert!(sent.get("negative_prompt").is_none() && sent.get("seed").is_none());

    // Defaults are not requests: a plain request runs with nothing ignored.
    let output = run(&*generator, &Request::new("a fox")).unwrap();
    assert!(!output.metadata.contains_key("ignored"));

    let err = run(
        &*generator,
        &Request {
            num_images: 11,
            ..Request::new("a fox")
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(
        err.to_string()
            .contains("`num_images` 11 (gpt-image-1 makes at most 10 per call)"),
        "{err}"
    );

    let err = run(
        &*generator,
        &Request {
            init_latents: Some(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 4, 8, 8]))),
            best_effort: true,
            ..Request::new("a fox")
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(err.to_string().contains("init_latents"), "{err}");

    // An OpenAI-compatible server's model gets any size as asked.
    let compatible = openai(&server, &[("model", "sd-turbo")]);
    run(&*compatible, &sized("a fox", 512, 768)).unwrap();
    let last = server.requests().last().unwrap().json();
    assert_eq!(
        (last["model"].clone(), last["size"].clone()),
        (json!("sd-turbo"), json!("512x768"))
    );
}

#[test]
fn compatible_servers_can_be_sent_the_diffusion_fields() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, _| ok.clone());
    let generator = openai(
        &server,
        &[("model", "digits"), ("diffusion_fields", "true")],
    );
    assert!(generator.describe().honours_seed);
    let mut request = Request {
        negative_prompt: Some("blurry".into()),
        seed: Some(u64::MAX),
        steps: 3,
        guidance_scale: 0.1,
        scheduler: Some("euler".into()),
        loras: Some(vec![
            diffgentor::LoraUse::new("style", 0.8),
            diffgentor::LoraUse::new("hero", -0.5),
        ]),
        ..Request::new("a fox")
    };
    request
        .scheduler_overrides
        .insert("timestep_spacing".into(), json!("trailing"));
    let output = run(&*generator, &request).unwrap();
    assert!(!output.metadata.contains_key("ignored"));
    let sent = server.requests()[0].json();
    assert_eq!(sent["seed"], json!(u64::MAX));
    assert_eq!(sent["steps"], json!(3));
    assert_eq!(sent["guidance_scale"].as_f64().unwrap() as f32, 0.1);
    assert_eq!(sent["negative_prompt"], json!("blurry"));
    assert_eq!(sent["scheduler"], json!("euler"));
    assert_eq!(sent["scheduler.timestep_spacing"], json!("trailing"));
    // A LoRA stack travels in the form `dg serve` reads back.
    assert_eq!(sent["loras"], json!("style:0.8;hero:-0.5"));

    // Edits send them as text parts.
    request.init_image = Some(image(2, 2));
    run(&*generator, &request).unwrap();
    let parts = multipart(&server.requests()[1]);
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p.0 == name)
            .map(|p| String::from_utf8_lossy(&p.3).into_owned())
    };
    assert_eq!(text("seed").as_deref(), Some("18446744073709551615"));
    assert_eq!(text("steps").as_deref(), Some("3"));

    // A plan cannot be sent: it stays refused.
    request.plan = Some(
        diffgentor::request::Plan::from_json(r#"{"stages": [{"width": 8, "height": 8}]}"#).unwrap(),
    );
    let err = run(&*generator, &request).unwrap_err();
    assert!(err.to_string().contains("`plan`"), "{err}");

    // OpenAI's own models refuse fields they do not define, so the option is refused for them.
    let mut options = GeneratorOptions::new();
    options
        .set("base_url", &server.url("/v1"))
        .set("api_key", KEY)
        .set("model", "gpt-image-1")
        .set("diffusion_fields", "true");
    let err = remote("openai", &options).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("diffusion_fields"), "{err}");
}

#[test]
fn cancelled_requests_send_nothing() {
    let ok = answer(&[image(2, 2)]);
    let server = TestServer::start(move |_, _| ok.clone());
    let generator = openai(&server, &[]);
    let token = CancelToken::new();
    token.cancel();
    let request = Request {
        cancel: Some(token),
        ..Request::new("a fox")
    };
    assert_eq!(
        run(&*generator, &request).unwrap_err().code(),
        ErrorCode::Cancelled
    );
    assert!(server.requests().is_empty());
    let err = generator
        .generate(&Request::new("a fox"), &mut |_| false)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Cancelled);
}

#[test]
fn describe_follows_the_model() {
    let server = TestServer::start(|_, _| Reply::raw(500, "text/plain", ""));
    let described = |model: &str| openai(&server, &[("model", model)]).describe();
    let gpt = described("gpt-image-1");
    assert_eq!((gpt.name.as_str(), gpt.kind), ("gpt-image-1", "openai"));
    assert_eq!(
        gpt.tasks,
        vec![Task::TextToImage, Task::Edit, Task::Inpaint]
    );
    assert_eq!(
        gpt.sizes,
        Sizes::Listed(vec![(1024, 1024), (1536, 1024), (1024, 1536)])
    );
    assert!(!gpt.honours_seed && !gpt.negative_prompt);
    let dalle3 = described("dall-e-3");
    assert_eq!(dalle3.tasks, vec![Task::TextToImage]);
    assert_eq!(
        dalle3.sizes,
        Sizes::Listed(vec![(1024, 1024), (1792, 1024), (1024, 1792)])
    );
    assert!(matches!(
        described("gpt-image-2").sizes,
        Sizes::Multiple {
            multiple: 16,
            max: 3840,
            ..
        }
    ));
    assert_eq!(described("sd-turbo").sizes, Sizes::Any);

    let err = run(
        &*openai(&server, &[("model", "dall-e-3")]),
        &Request {
            init_image: Some(image(4, 4)),
            ..Request::new("x")
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(
        err.to_string().contains("dall-e-3 cannot edit images"),
        "{err}"
    );
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Contract: every request the client sends validates against OpenAI's published spec.

/// The spec subset, kept outside the repository (contracts README).
fn contract_spec() -> PathBuf {
    common::repo().join("../shared/contracts/openai-images.yaml")
}

/// The validating stub, killed when dropped.
struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(python: &Path, spec: &Path) -> Proxy {
        let script = common::repo().join("tests/contract/openai_proxy.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(spec)
            .arg("0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the contract proxy starts");
        let stdout = child.stdout.take().expect("the proxy's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok());
        let mut proxy = Proxy { child, port: 0 };
        match port {
            Some(port) => proxy.port = port,
            None => panic!("the contract proxy did not start (said {line:?})"),
        }
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn requests_conform_to_the_openai_spec() {
    let spec = contract_spec();
    if !spec.is_file() {
        eprintln!(
            "skipping the OpenAI contract test: {} is absent (it comes with ../shared)",
            spec.display()
        );
        return;
    }
    let started = Instant::now();
    let python = match common::peers::python() {
        Ok(python) => python,
        Err(why) => {
            return common::peers::skip(
                "the OpenAI contract test",
                &format!("no Python with openapi-core: {why}"),
            )
        }
    };
    let venv_ready = started.elapsed();
    let proxy = Proxy::start(&python, &spec);
    let generator = |extra: &[(&str, &str)]| {
        let mut options = GeneratorOptions::new();
        options
            .set("base_url", &proxy.url())
            .set("api_key", KEY)
            .set("timeout_s", "20")
            .set("max_retries", "0");
        for (key, value) in extra {
            options.set(key, value);
        }
        remote("openai", &options).unwrap()
    };
    let conforms = |generator: &dyn Generator, request: &Request, what: &str| {
        let output = run(generator, request).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            output.metadata["revised_prompts"],
            json!(["validated"]),
            "{what}"
        );
    };

    let every_field = generator(&[
        ("quality", "high"),
        ("background", "transparent"),
        ("output_format", "webp"),
        ("output_compression", "50"),
        ("moderation", "low"),
        ("user", "contract-test"),
    ]);
    conforms(
        &*every_field,
        &Request {
            num_images: 3,
            ..sized("a lighthouse at dusk", 1024, 1536)
        },
        "generation with every option",
    );
    conforms(
        &*generator(&[]),
        &Request::new("auto size"),
        "generation, size auto",
    );
    conforms(
        &*generator(&[("model", "dall-e-2"), ("response_format", "b64_json")]),
        &sized("a small square", 512, 512),
        "dall-e-2 with response_format",
    );
    conforms(
        &*generator(&[("model", "gpt-image-2")]),
        &sized("wide", 1536, 864),
        "gpt-image-2 free size",
    );
    let mask = Image {
        width: 16,
        height: 16,
        pixels: (0..256)
            .flat_map(|i| [if i < 128 { 255 } else { 0 }; 3])
            .collect(),
    };
    conforms(
        &*every_field,
        &Request {
            init_image: Some(image(16, 16)),
            mask: Some(mask),
            num_images: 2,
            ..sized("add snow", 1024, 1024)
        },
        "edit with a mask and every option",
    );
    conforms(
        &*generator(&[]),
        &Request {
            init_image: Some(image(16, 16)),
            ..Request::new("edit, size auto")
        },
        "edit without a mask",
    );

    // The stub does reject what breaks the spec: a compatible model is sent n=11 unchecked.
    let err = run(
        &*generator(&[("model", "sd-turbo")]),
        &Request {
            num_images: 11,
            ..Request::new("too many")
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("contract violation: n: 11 is greater than the maximum of 10"),
        "{err}"
    );
    eprintln!(
        "OpenAI contract: venv ready in {:.1} s, all checks in {:.1} s",
        venv_ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
