//! `dg serve --vlm`: OpenAI chat completions over the tiny Qwen2.5-VL, end to end. The official
//! `openai` client drives the main checks (tests/serve/openai_chat.py); raw HTTP covers what a
//! client library hides: `dg caption` parity, the SSE framing, a client leaving mid-stream, the
//! request timeout, remote images, and servers with only a VLM or none.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::http::{Reply as Canned, TestServer};
use common::serve::{get, post_json, Reply, Server};
use serde_json::{json, Value};

const KEY: &str = "sk-chat-test";
const VLM: &str = "tiny-qwen2.5-vl";

/// `dg serve --vlm models/tiny-qwen2.5-vl <args>`.
fn vlm(args: &[&str]) -> Server {
    Server::start(
        &[&["--vlm", "models/tiny-qwen2.5-vl"][..], args].concat(),
        &[],
    )
}

fn chat(server: &Server, body: &Value) -> Reply {
    post_json(&server.url("/v1/chat/completions"), body)
}

/// Asserts an OpenAI error answer and returns its `error` object.
fn assert_error(reply: &Reply, status: u16, param: Option<&str>, what: &str) -> Value {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    let body = reply.json();
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(
            error.get(key).is_some(),
            "{what}: `{key}` missing from {body}"
        );
    }
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(error["param"].as_str(), param, "{what}: {body}");
    error
}

fn goldens() -> Vec<Value> {
    let text = std::fs::read_to_string(common::model_dir("vlm-goldens.json")).unwrap();
    let goldens: Value = serde_json::from_str(&text).unwrap();
    goldens["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    goldens()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no golden case {name}"))
}

fn data_url(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", STANDARD.encode(bytes))
}

fn image_url(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// A case's images, then its prompt, as one user message.
fn messages(case: &Value) -> Value {
    let mut parts: Vec<Value> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let bytes = std::fs::read(common::model_dir(p.as_str().unwrap())).unwrap();
            image_url(&data_url(&bytes))
        })
        .collect();
    parts.push(json!({"type": "text", "text": case["prompt"]}));
    json!([{"role": "user", "content": parts}])
}

fn len(value: &Value) -> usize {
    value.as_array().expect("a list").len()
}

/// `dg caption --json` for a golden case: the answer the server must give.
fn caption(case: &Value) -> Value {
    let mut args = vec!["caption".to_string(), "--model".into()];
    args.push(path(&common::model_dir(VLM)));
    for image in case["images"].as_array().unwrap() {
        args.push("--image".into());
        args.push(path(&common::model_dir(image.as_str().unwrap())));
    }
    args.extend(["--prompt".into(), case["prompt"].as_str().unwrap().into()]);
    args.extend([
        "--max-new-tokens".into(),
        case["max_new_tokens"].to_string(),
        "--json".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::dg(&args);
    assert!(
        out.status.success(),
        "dg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dg caption --json prints JSON")
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_string()
}

/// The value of a metric line `name` (labels included) in a /metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok())?
    })
}

/// /metrics once nothing is queued or running, and how long that took.
fn idle_metrics(server: &Server) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let text = get(&server.url("/metrics")).text();
        let idle = metric(&text, "dg_queue_depth") == Some(0.0)
            && metric(&text, "dg_in_flight") == Some(0.0);
        if idle || started.elapsed() > Duration::from_secs(30) {
            return (text, started.elapsed());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn python() -> Option<PathBuf> {
    match common::peers::python() {
        Ok(python) => Some(python),
        Err(why) => {
            common::peers::skip(
                "the openai chat client test",
                &format!("the Python peers could not be set up: {why}"),
            );
            None
        }
    }
}

#[test]
fn the_openai_client_chats_streams_and_gets_typed_errors() {
    let Some(python) = python() else { return };
    // An image model next to the VLM: they share one worker and one queue place, so the
    // script can fill the queue with image jobs and see a completion refused.
    let server = vlm(&[
        "--model",
        "models/digits",
        "--api-key",
        KEY,
        "--concurrency",
        "1",
        "--queue-size",
        "1",
    ]);
    let out = Command::new(python)
        .arg(common::repo().join("tests/serve/openai_chat.py"))
        .args([&server.url(""), KEY, &path(&common::repo().join("models"))])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "openai_chat.py failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn answers_equal_dg_caption_and_a_vlm_only_server_makes_no_images() {
    let server = vlm(&[]);
    for name in ["image_96x64", "two_images", "image_300x200_max_pixels"] {
        let case = case(name);
        let expected = caption(&case);
        // dg caption's tokens are transformers' (tests/vlm.rs); the server's must be dg caption's.
        assert_eq!(expected["token_ids"], case["expected_ids"], "{name}");
        let reply = chat(
            &server,
            &json!({
                "model": VLM,
                "messages": messages(&case),
                "max_tokens": case["max_new_tokens"],
            }),
        );
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        let answer = reply.json();
        let choice = &answer["choices"][0];
        assert_eq!(choice["message"]["content"], expected["text"], "{name}");
        assert_eq!(choice["finish_reason"], expected["finish_reason"], "{name}");
        let usage = &answer["usage"];
        assert_eq!(
            usage["completion_tokens"].as_u64(),
            Some(len(&expected["token_ids"]) as u64),
            "{name}: {answer}"
        );
        assert_eq!(usage["prompt_tokens"], expected["prompt_tokens"], "{name}");
        assert_eq!(
            usage["prompt_tokens"].as_u64(),
            Some(len(&case["input_ids"]) as u64)
        );
    }

    // Only the VLM: listed alone, and the image routes are not there.
    let models = get(&server.url("/v1/models")).json();
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1), "{models}");
    assert_eq!(models["data"][0]["id"], VLM);
    let ready = get(&server.url("/readyz")).json();
    assert_eq!(
        (&ready["model"], &ready["vlm"]),
        (&json!(null), &json!(VLM))
    );
    for (path, body) in [
        ("/v1/images/generations", json!({"prompt": "7"})),
        ("/v1/jobs", json!({"prompt": "7"})),
    ] {
        let error = assert_error(&post_json(&server.url(path), &body), 404, None, path);
        assert_eq!(error["code"], "model_not_served", "{path}");
    }
    // The header names an image too large for --max-side before anything is decoded.
    let huge = common::png::lying_png(100_000, 100_000);
    let reply = chat(
        &server,
        &json!({
            "messages": [{"role": "user", "content": [image_url(&data_url(&huge))]}],
        }),
    );
    let error = assert_error(
        &reply,
        400,
        Some("messages[0].content[0].image_url"),
        "a 100000x100000 image",
    );
    assert!(
        error["message"].as_str().unwrap().contains("100000"),
        "{error}"
    );
    // A prompt longer than the model's context.
    let long = "yes ".repeat(5000);
    let reply = chat(
        &server,
        &json!({"messages": [{"role": "user", "content": long}]}),
    );
    assert_error(&reply, 400, None, "a prompt past the context");
}

#[test]
fn a_server_without_vlm_has_no_chat_completions() {
    let server = Server::start(&["--model", "models/digits"], &[]);
    let reply = chat(
        &server,
        &json!({"model": VLM, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let error = assert_error(&reply, 404, None, "chat without --vlm");
    assert_eq!(error["code"], "model_not_served");
    let models = get(&server.url("/v1/models")).json();
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1), "{models}");
    assert_eq!(models["data"][0]["id"], "digits");
}

/// A streamed completion read over a raw connection, so the test can stop reading and leave.
struct RawStream {
    reader: BufReader<TcpStream>,
}

impl RawStream {
    fn open(server: &Server, body: &Value) -> RawStream {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.0 200"), "{status:?}");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-type:") {
                assert!(value.trim().starts_with("text/event-stream"), "{header}");
            }
        }
        RawStream { reader }
    }

    /// The next `data:` payload (`None` at the end of the stream).
    fn next(&mut self) -> Option<String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(data.to_string());
            }
        }
    }
}

#[test]
fn a_client_leaving_mid_stream_frees_the_worker() {
    // One worker, no waiting place: a second request while a completion runs is refused.
    let server = vlm(&["--concurrency", "1", "--queue-size", "0"]);
    // The longest answer the tiny model gives: it runs until its end-of-sequence token.
    let long = json!({
        "messages": messages(&case("image_96x64")),
        "stream": true,
        "stream_options": {"include_usage": true},
    });

    // Read whole once, to know its length; the SSE framing ends in [DONE].
    let mut whole = RawStream::open(&server, &long);
    let mut payloads = Vec::new();
    while let Some(data) = whole.next() {
        payloads.push(data);
    }
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    let full = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(full > 100, "a long answer to cancel: {usage}");
    let (text, _) = idle_metrics(&server);
    assert_eq!(
        metric(&text, "dg_chat_completion_tokens_total"),
        Some(full as f64)
    );

    // Again, leaving after the first words.
    let mut stream = RawStream::open(&server, &long);
    let role: Value = serde_json::from_str(&stream.next().unwrap()).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant", "{role}");
    let first: Value = serde_json::from_str(&stream.next().unwrap()).unwrap();
    assert!(
        first["choices"][0]["delta"]["content"].is_string(),
        "{first}"
    );
    // Still generating: the one worker is busy and there is no waiting place.
    let busy = chat(
        &server,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    let error = assert_error(&busy, 429, None, "a request while the worker is busy");
    assert_eq!(error["code"], "queue_full");
    assert!(busy
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    drop(stream);

    let (text, _) = idle_metrics(&server);
    let cancelled = "dg_chat_completions_total{finish_reason=\"cancelled\"}";
    assert_eq!(metric(&text, cancelled), Some(1.0), "{text}");
    let tokens = metric(&text, "dg_chat_completion_tokens_total").unwrap() - full as f64;
    assert!(
        tokens < full as f64,
        "the cancelled completion made {tokens} of {full} tokens"
    );
    // The worker takes the next request at once.
    let reply = chat(
        &server,
        &json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        }),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["usage"]["completion_tokens"], 2);
}

#[test]
fn completions_past_the_request_timeout_are_504() {
    // No time at all: every completion is cancelled at its first token.
    let server = vlm(&["--request-timeout", "0"]);
    for stream in [false, true] {
        let reply = chat(
            &server,
            &json!({
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            }),
        );
        let error = assert_error(&reply, 504, None, "a completion past its time");
        assert_eq!(error["code"], "timeout");
    }
    let (text, _) = idle_metrics(&server);
    let timeouts = "dg_chat_completions_total{finish_reason=\"timeout\"}";
    assert_eq!(metric(&text, timeouts), Some(2.0), "{text}");
}

#[test]
fn remote_images_are_fetched_only_when_allowed_and_within_limits() {
    let png = std::fs::read(common::model_dir("vlm-images/shapes_96x64.png")).unwrap();
    let images = TestServer::start(move |request, _| match request.path.as_str() {
        "/shapes.png" => Canned::raw(200, "image/png", png.clone()),
        "/moved.png" => Canned::raw(302, "text/plain", "").header("location", "/shapes.png"),
        "/big.png" => Canned::raw(200, "image/png", vec![0u8; 3 << 20]),
        "/text" => Canned::raw(200, "text/plain", "not a picture"),
        _ => Canned::raw(404, "text/plain", "no such file"),
    });
    let golden = case("image_96x64");
    let ask = |server: &Server, url: &str| {
        chat(
            server,
            &json!({
                "messages": [{"role": "user", "content": [
                    image_url(url),
                    {"type": "text", "text": golden["prompt"]},
                ]}],
                "max_tokens": golden["max_new_tokens"],
            }),
        )
    };
    let param = Some("messages[0].content[0].image_url");

    let closed = vlm(&[]);
    let error = assert_error(
        &ask(&closed, &images.url("/shapes.png")),
        400,
        param,
        "a remote image without --allow-remote-images",
    );
    assert_eq!(error["code"], "remote_images_disabled");
    assert!(images.requests().is_empty(), "the server fetched anyway");

    let open = vlm(&["--allow-remote-images", "--max-body-mib", "2"]);
    for path in ["/shapes.png", "/moved.png"] {
        let reply = ask(&open, &images.url(path));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(
            reply.json()["choices"][0]["message"]["content"],
            golden["expected_text"],
            "{path}"
        );
    }
    for (path, code) in [
        ("/missing.png", Some("image_fetch_failed")),
        ("/big.png", Some("image_too_large")),
        ("/text", None),
    ] {
        let error = assert_error(&ask(&open, &images.url(path)), 400, param, path);
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{path}: {error}");
        }
    }
}

#[test]
fn a_completion_queued_at_shutdown_is_answered_503() {
    // An image job holds the one worker; a streamed completion waits behind it.
    let mut server = vlm(&[
        "--model",
        "models/digits",
        "--concurrency",
        "1",
        "--shutdown-timeout",
        "1",
    ]);
    let slow = post_json(
        &server.url("/v1/jobs"),
        &json!({"prompt": "1", "steps": 999, "n": 10}),
    );
    assert_eq!(slow.status, 202, "{}", slow.text());
    let job = server.url(&format!("/v1/jobs/{}", slow.json()["id"].as_str().unwrap()));
    while get(&job).json()["status"] != "running" {
        thread::sleep(Duration::from_millis(10));
    }
    let url = server.url("/v1/chat/completions");
    let waiting = thread::spawn(move || {
        post_json(
            &url,
            &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
    });
    while get(&server.url("/readyz")).json()["queued"] != 1 {
        thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let status = server.terminate();
    let reply = waiting.join().unwrap();
    let error = assert_error(&reply, 503, None, "a completion queued at shutdown");
    assert_eq!(error["code"], "shutting_down");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
}
