//! `dg serve` end to end: the real binary on an ephemeral port, driven by the official `openai`
//! client and schemathesis (tests/serve/*.py), by dg's own OpenAI backend, and by raw HTTP and
//! WebSocket clients for load, shutdown, bad input and the native job API.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::png::lying_png;
use common::serve::{agent, get, post, post_json, read, Reply, Server};
use diffgentor::Image;
use serde_json::{json, Value};

/// The key of the servers started with one.
const KEY: &str = "sk-serve-test";

/// Starts `dg serve --model models/<model> <args>` with `env` set.
fn start(model: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = common::model_dir(model);
    let model_args = ["--model", dir.to_str().expect("a UTF-8 path")];
    Server::start(&[&model_args[..], args].concat(), env)
}

/// A multipart/form-data body of `(name, bytes)` parts (files when the name is an image part).
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "dg-serve-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if matches!(*name, "image" | "image[]" | "mask") {
            body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\n\
                     Content-Type: image/png\r\n\r\n"
                )
                .as_bytes(),
            );
        } else {
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn post_multipart(url: &str, parts: &[(&str, &[u8])]) -> Reply {
    let (content_type, body) = multipart(parts);
    post(url, &content_type, &body)
}

/// Asserts an OpenAI error answer: the status, and `{"error":{message,type,param,code}}` with
/// all four keys (message and type strings, param and code a string or null). Returns `error`.
fn assert_openai_error(reply: &Reply, status: u16, param: Option<&str>, what: &str) -> Value {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{what}: content type {:?}",
        reply.header("content-type")
    );
    let body = reply.json();
    let error = body["error"].clone();
    let keys: Vec<&str> = error
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no error object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["message", "type", "param", "code"] {
        assert!(keys.contains(&key), "{what}: `{key}` missing from {body}");
    }
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert!(error["type"].is_string(), "{what}: {body}");
    assert!(
        error["code"].is_string() || error["code"].is_null(),
        "{what}: {body}"
    );
    assert_eq!(error["param"].as_str(), param, "{what}: {body}");
    error
}

/// Decodes a PNG, failing with `what` when it is not one.
fn png(bytes: &[u8], what: &str) -> Image {
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{what}: not a PNG ({} bytes)",
        bytes.len()
    );
    Image::decode(bytes).unwrap_or_else(|e| panic!("{what}: not a readable PNG: {e}"))
}

fn b64(text: &Value) -> Vec<u8> {
    STANDARD
        .decode(text.as_str().expect("a base64 string"))
        .expect("valid base64")
}

/// Runs `dg` with `args` and the bundled runtime, failing with its stderr when it fails.
fn dg_ok(args: &[&str]) {
    let out = common::dg(args);
    assert!(out.status.success(), "dg {args:?}: {}", stderr(&out));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The fixtures the client tests compare with (see tests/serve/openai_client.py): an input
/// digit, an OpenAI mask (RGBA, transparent left half) and dg's mask for the same area (white
/// left half), and what `dg generate`/`dg edit` write for seed 7 and 5 steps.
fn fixtures(dir: &Path) -> PathBuf {
    let at = |name: &str| dir.join(name);
    dg_ok(&[
        "generate",
        "--model",
        "models/digits",
        "--prompt",
        "3",
        "--seed",
        "3",
        "--steps",
        "5",
        "-q",
        "--output",
        path(&at("digit.png")),
    ]);
    let mut rgba = Vec::new();
    for _y in 0..16 {
        for x in 0..16 {
            rgba.extend_from_slice(&[0, 0, 0, if x < 8 { 0 } else { 255 }]);
        }
    }
    std::fs::write(at("mask_rgba.png"), rgba_png(16, 16, &rgba)).unwrap();
    let white = Image {
        width: 16,
        height: 16,
        pixels: (0..16 * 16)
            .flat_map(|i| [if i % 16 < 8 { 255 } else { 0 }; 3])
            .collect(),
    };
    std::fs::write(at("mask_white.png"), white.encode_png(&[]).unwrap()).unwrap();
    let [generate, edit, inpaint, digit, white] = [
        "generate.png",
        "edit.png",
        "inpaint.png",
        "digit.png",
        "mask_white.png",
    ]
    .map(|name| path(&at(name)).to_string());
    let seeded = [
        "--seed",
        "7",
        "--steps",
        "5",
        "-q",
        "--model",
        "models/digits",
    ];
    dg_ok(
        &[
            &["generate", "--prompt", "7", "--output", &generate][..],
            &seeded,
        ]
        .concat(),
    );
    let edit_args = ["edit", "--prompt", "3", "--image", &digit];
    dg_ok(&[&edit_args[..], &seeded, &["--output", &edit]].concat());
    dg_ok(
        &[
            &edit_args[..],
            &seeded,
            &["--mask", &white, "--output", &inpaint],
        ]
        .concat(),
    );
    // The mask must matter, or comparing with inpaint.png would not show the server read it.
    assert_ne!(
        std::fs::read(at("edit.png")).unwrap(),
        std::fs::read(at("inpaint.png")).unwrap()
    );
    dir.to_path_buf()
}

fn rgba_png(width: u32, height: u32, rgba: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(rgba).unwrap();
    writer.finish().unwrap();
    out
}

/// The peers' python, or `None` after skipping (a failure under DG_CONTRACT_REQUIRED).
fn python(test: &str) -> Option<PathBuf> {
    match common::peers::python() {
        Ok(python) => Some(python),
        Err(why) => {
            common::peers::skip(
                test,
                &format!("the Python peers could not be set up: {why}"),
            );
            None
        }
    }
}

/// Runs tests/serve/<script> with `args` in `cwd`, failing with its output when it fails.
fn run_script(python: &Path, script: &str, args: &[&str], cwd: &Path) {
    let out = Command::new(python)
        .arg(common::repo().join("tests/serve").join(script))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn the_openai_client_generates_edits_streams_and_gets_typed_errors() {
    let Some(python) = python("the openai client test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures(dir.path());
    // One worker and one queue slot, so the script can fill the queue (RateLimitError).
    let server = start(
        "digits",
        &["--api-key", KEY, "--concurrency", "1", "--queue-size", "1"],
        &[],
    );
    run_script(
        &python,
        "openai_client.py",
        &[&server.base(), KEY, path(&fixtures)],
        dir.path(),
    );
}

#[test]
fn schemathesis_finds_the_server_true_to_openais_images_spec() {
    let spec = common::repo().join("../shared/contracts/openai-images.yaml");
    if !spec.is_file() {
        return common::peers::skip(
            "the schemathesis contract test",
            &format!(
                "{} is absent (it lives outside the repository)",
                spec.display()
            ),
        );
    }
    let Some(python) = python("the schemathesis contract test") else {
        return;
    };
    // Two steps keep every generation short; sizes past 64 (1024x1024 is the spec's example)
    // are refused rather than run: the digits model makes 16x16.
    let server = start(
        "digits",
        &["--api-key", KEY, "--max-side", "64"],
        &[("DG_SERVE_NUM_INFERENCE_STEPS", "2")],
    );
    // The checks it runs, and the three it leaves out as false positives, are in the script.
    let dir = tempfile::tempdir().unwrap();
    run_script(
        &python,
        "schemathesis_run.py",
        &[path(&spec), &server.url("/v1"), KEY],
        dir.path(),
    );
}

#[test]
fn dgs_openai_backend_through_the_server_matches_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = start("digits", &[], &[]);
    let endpoint = server.url("/v1");
    let local = dir.path().join("local.png");
    let remote = dir.path().join("remote.png");
    let fields = ["--prompt", "7", "--seed", "7", "--steps", "5", "-q"];
    dg_ok(
        &[
            &["generate", "--model", "models/digits"][..],
            &fields,
            &["--output", path(&local)],
        ]
        .concat(),
    );
    let backend = [
        "generate",
        "--backend",
        "openai",
        "--endpoint",
        &endpoint,
        "--remote-model",
        "digits",
    ];
    let through = |extra: &[&str], output: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
        cmd.args(backend)
            .args(extra)
            .args(fields)
            .arg("--output")
            .arg(output)
            .env("DG_OPENAI_API_KEY", "anything")
            .env_remove("DG_OPENAI_BASE_URL");
        cmd.output().expect("dg runs")
    };

    // Diffusion fields go only where asked: plain OpenAI has no seeds.
    let refused = through(&[], &dir.path().join("refused.png"));
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("`seed`"), "{}", stderr(&refused));

    let out = through(&["--backend-option", "diffusion_fields=true"], &remote);
    assert!(out.status.success(), "{}", stderr(&out));
    let local = Image::load_png(&local).unwrap();
    let remote = Image::load_png(&remote).unwrap();
    assert_eq!((remote.width, remote.height), (16, 16));
    assert!(
        remote.pixels == local.pixels,
        "the round trip changed pixels"
    );
}

#[test]
fn replicas_share_the_queue_and_give_the_same_images() {
    let server = start("digits", &["--replicas", "2", "--concurrency", "2"], &[]);
    let ready = get(&server.url("/readyz"));
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        (
            ready.json()["replicas"].clone(),
            ready.json()["workers"].clone()
        ),
        (json!(2), json!(2))
    );
    let url = server.url("/v1/images/generations");
    // Four requests at once keep both workers (one per replica) busy; same seed, same bytes.
    let answers: Vec<Vec<u8>> = thread::scope(|scope| {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let reply = post_json(&url, &json!({"prompt": "3", "seed": 5, "steps": 10}));
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    b64(&reply.json()["data"][0]["b64_json"])
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
}

/// The value of a metric line `name` (exactly, labels included) in a /metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok())?
    })
}

/// /metrics once no job is queued or running: a worker marks itself idle just after it hands
/// over its job's result, so the gauges may trail the last answer by a moment.
fn settled_metrics(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(&server.url("/metrics")).text();
        let idle = metric(&text, "dg_queue_depth") == Some(0.0)
            && metric(&text, "dg_in_flight") == Some(0.0);
        if idle || Instant::now() > deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_hundred_requests_at_concurrency_16_all_succeed_and_metrics_add_up() {
    const REQUESTS: usize = 200;
    const CLIENTS: usize = 16;
    let server = start("digits", &["--queue-size", "64"], &[]);
    let url = server.url("/v1/images/generations");
    let (sent, results) = mpsc::channel();
    thread::scope(|scope| {
        for client in 0..CLIENTS {
            let (url, sent) = (&url, sent.clone());
            scope.spawn(move || {
                let agent = agent();
                for i in (client..REQUESTS).step_by(CLIENTS) {
                    let body = json!({"prompt": format!("{}", i % 10), "steps": 4});
                    let reply = read(
                        agent
                            .post(url)
                            .header("content-type", "application/json")
                            .send(body.to_string()),
                    );
                    sent.send((i, reply)).unwrap();
                }
            });
        }
    });
    drop(sent);
    let results: Vec<_> = results.iter().collect();
    assert_eq!(results.len(), REQUESTS);
    for (i, reply) in results {
        let reply = reply.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        let data = reply.json()["data"].clone();
        assert_eq!(data.as_array().map(Vec::len), Some(1), "request {i}");
        let image = png(&b64(&data[0]["b64_json"]), &format!("request {i}"));
        assert_eq!((image.width, image.height), (16, 16));
    }

    let text = settled_metrics(&server);
    let route = "/v1/images/generations";
    assert_eq!(
        metric(
            &text,
            &format!("dg_http_requests_total{{route=\"{route}\",status=\"200\"}}")
        ),
        Some(REQUESTS as f64),
        "{text}"
    );
    let other_statuses = text.lines().filter(|l| {
        l.starts_with(&format!("dg_http_requests_total{{route=\"{route}\""))
            && !l.contains("\"200\"")
    });
    assert_eq!(other_statuses.count(), 0, "{text}");
    assert_eq!(
        metric(&text, "dg_images_generated_total"),
        Some(REQUESTS as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "dg_generations_total"),
        Some(REQUESTS as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "dg_denoise_steps_total"),
        Some(4.0 * REQUESTS as f64),
        "{text}"
    );
    assert_eq!(metric(&text, "dg_queue_depth"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "dg_in_flight"), Some(0.0), "{text}");
    assert_eq!(
        metric(
            &text,
            &format!("dg_http_request_duration_seconds_count{{route=\"{route}\"}}")
        ),
        Some(REQUESTS as f64),
        "{text}"
    );
}

#[test]
fn sigterm_under_load_answers_every_request_whole_and_exits_0() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 6;
    let mut server = start("digits", &["--queue-size", "64"], &[]);
    let url = server.url("/v1/images/generations");
    let (sent, results) = mpsc::channel();
    let outcomes = thread::scope(|scope| {
        for _ in 0..CLIENTS {
            let (url, sent) = (&url, sent.clone());
            scope.spawn(move || {
                let agent = agent();
                for _ in 0..PER_CLIENT {
                    let reply = read(
                        agent
                            .post(url)
                            .header("content-type", "application/json")
                            .send(json!({"prompt": "8", "steps": 20}).to_string()),
                    );
                    if sent.send(reply).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sent);
        // The first image back means the others are queued or running: stop the server now.
        let first = results.recv().expect("a first answer");
        let status = server.terminate();
        let mut outcomes = vec![first];
        outcomes.extend(results.iter());
        (status, outcomes)
    });
    let (status, outcomes) = outcomes;
    assert!(
        status.success(),
        "dg serve exited with {status} after SIGTERM"
    );
    assert_eq!(outcomes.len(), CLIENTS * PER_CLIENT);
    let (mut done, mut refused, mut unanswered) = (0, 0, 0);
    for outcome in outcomes {
        match outcome {
            Ok(reply) if reply.status == 200 => {
                png(
                    &b64(&reply.json()["data"][0]["b64_json"]),
                    "an answer during shutdown",
                );
                done += 1;
            }
            Ok(reply) => {
                let error = assert_openai_error(&reply, 503, None, "a refusal during shutdown");
                assert_eq!(error["code"], "shutting_down");
                refused += 1;
            }
            // Refused connections once the listener closed: no answer, so nothing cut short.
            Err(e) if e.starts_with("no answer") => unanswered += 1,
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("after SIGTERM: {done} images, {refused} refused, {unanswered} unanswered");
    assert!(done >= 1, "no image came back");
}

/// Sends a `bytes`-long body and reads the answer, on a raw connection: the server may answer
/// before it has read the whole body, which a client that insists on sending it all would miss.
fn post_oversized(server: &Server, path: &str, content_type: &str, bytes: usize) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
         Content-Length: {bytes}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let block = vec![b'a'; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len());
            if writer.write_all(&block[..n]).is_err() {
                return; // the server stopped reading: expected once it answered
            }
            left -= n;
        }
    });
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header");
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("a content-length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    drop(reader);
    let _ = sender.join();
    Reply {
        status,
        headers,
        body,
    }
}

#[test]
fn bad_input_gets_openai_errors_and_the_server_stays_healthy() {
    let server = start("digits", &[], &[]);
    let generations = server.url("/v1/images/generations");
    let edits = server.url("/v1/images/edits");
    let fast = |extra: Value| {
        let mut body = json!({"prompt": "7", "steps": 4});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    let reply = post(&generations, "application/json", b"{\"prompt\": \"7\",");
    let error = assert_openai_error(&reply, 400, None, "malformed JSON");
    assert_eq!(error["code"], "invalid_json");
    let reply = post(
        &generations,
        "text/plain",
        fast(json!({})).to_string().as_bytes(),
    );
    let error = assert_openai_error(&reply, 415, None, "a text/plain body");
    assert_eq!(error["code"], "invalid_content_type");
    let reply = post_json(&edits, &fast(json!({})));
    assert_openai_error(&reply, 415, None, "a JSON edit");

    // 40 MB against the 32 MiB default.
    for (route, content_type) in [
        ("/v1/images/generations", "application/json"),
        ("/v1/images/edits", "multipart/form-data; boundary=x"),
    ] {
        let reply = post_oversized(&server, route, content_type, 40_000_000);
        let error = assert_openai_error(&reply, 413, None, &format!("40 MB to {route}"));
        assert_eq!(error["code"], "body_too_large");
    }

    for (n, what) in [(json!(0), "n=0"), (json!(1000), "n=1000")] {
        let reply = post_json(&generations, &fast(json!({"n": n})));
        assert_openai_error(&reply, 400, Some("n"), what);
    }
    let reply = post_json(&generations, &fast(json!({"size": "17x16"})));
    let error = assert_openai_error(&reply, 400, Some("size"), "size 17x16");
    assert_eq!(error["code"], "invalid_size");
    let reply = post_json(&generations, &fast(json!({"size": "4096x4096"})));
    assert_openai_error(&reply, 400, Some("size"), "a size past --max-side");
    let reply = post_json(&generations, &json!({"n": 1}));
    assert_openai_error(&reply, 400, Some("prompt"), "no prompt");

    // Fields neither OpenAI nor diffgentor knows are ignored, as the API does.
    let reply = post_json(
        &generations,
        &fast(json!({"no_such_field": {"nested": [1, 2]}, "another": null})),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    png(
        &b64(&reply.json()["data"][0]["b64_json"]),
        "with unknown fields",
    );

    let image = reply.json()["data"][0]["b64_json"].clone();
    let image = b64(&image);
    let prompt: &[u8] = b"3";
    let steps: &[u8] = b"4";
    let lying = lying_png(100_000, 100_000);
    let reply = post_multipart(
        &edits,
        &[("image", &lying), ("prompt", prompt), ("steps", steps)],
    );
    let error = assert_openai_error(&reply, 400, Some("image"), "a 100000x100000 header");
    assert!(
        error["message"].as_str().unwrap().contains("100000"),
        "{error}"
    );
    let truncated = &image[..image.len() / 2];
    let reply = post_multipart(
        &edits,
        &[("image", truncated), ("prompt", prompt), ("steps", steps)],
    );
    assert_openai_error(&reply, 400, Some("image"), "a truncated PNG");
    let reply = post_multipart(&edits, &[("prompt", prompt), ("steps", steps)]);
    assert_openai_error(&reply, 400, Some("image"), "no image");
    let small_mask = rgba_png(8, 8, &[0; 8 * 8 * 4]);
    let reply = post_multipart(
        &edits,
        &[
            ("image", &image),
            ("mask", &small_mask),
            ("prompt", prompt),
            ("steps", steps),
        ],
    );
    assert_openai_error(&reply, 400, Some("mask"), "an 8x8 mask on a 16x16 image");

    let health = get(&server.url("/healthz"));
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );
    // And it still generates.
    let reply = post_json(&generations, &fast(json!({})));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// One Server-Sent Event: its name and JSON data.
type SseEvent = (String, Value);

/// Follows a job's event stream on a thread, sending each event until the stream ends. The
/// stream is read over HTTP/1.0 on a raw connection, so each event arrives as it is sent (no
/// chunked framing, no client-side buffering to wait on).
fn follow_events(server: &Server, path: &str) -> mpsc::Receiver<SseEvent> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.0 200"), "{path}: {status:?}");
    let (sent, events) = mpsc::channel();
    thread::spawn(move || {
        let mut in_body = false;
        let mut name = String::new();
        let mut data = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if !in_body {
                in_body = line.is_empty();
            } else if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let value = serde_json::from_str(&data).expect("event data is JSON");
                if sent.send((std::mem::take(&mut name), value)).is_err() {
                    return;
                }
                data.clear();
            }
        }
    });
    events
}

fn next_event(events: &mpsc::Receiver<SseEvent>) -> SseEvent {
    events
        .recv_timeout(Duration::from_secs(60))
        .expect("an event within a minute")
}

/// Every event left on a stream, until it ends.
fn rest(events: &mpsc::Receiver<SseEvent>) -> Vec<SseEvent> {
    let mut all = Vec::new();
    while let Ok(event) = events.recv_timeout(Duration::from_secs(60)) {
        all.push(event);
    }
    all
}

/// What `dg generate` writes for the prompt "7", seed 7, 5 steps on the digits model: the bytes
/// the job API and the WebSocket must hand back for the same request.
fn digit_png() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.png");
    dg_ok(&[
        "generate",
        "--model",
        "models/digits",
        "--prompt",
        "7",
        "--seed",
        "7",
        "--steps",
        "5",
        "-q",
        "--output",
        path(&expected),
    ]);
    std::fs::read(expected).unwrap()
}

#[test]
fn the_job_api_queues_streams_cancels_and_forgets() {
    let expected = digit_png();
    let server = start("digits", &["--concurrency", "1", "--queue-size", "4"], &[]);
    let jobs = server.url("/v1/jobs");
    let create = |body: Value| {
        let reply = post_json(&jobs, &body);
        assert_eq!(reply.status, 202, "{}", reply.text());
        let view = reply.json();
        assert_eq!(view["object"], "job");
        view["id"].as_str().expect("an id").to_string()
    };

    // A long job holds the one worker: seen running, everything after it waits.
    let slow = create(json!({"prompt": "1", "steps": 999, "n": 10}));
    let slow_events = follow_events(&server, &format!("/v1/jobs/{slow}/events"));
    loop {
        let (name, view) = next_event(&slow_events);
        assert!(
            matches!(name.as_str(), "queued" | "running"),
            "{name}: {view}"
        );
        if name == "running" {
            assert_eq!(view["progress"]["total"], 999, "{view}");
            break;
        }
    }
    let seeded = create(json!({"prompt": "7", "seed": 7, "steps": 5}));
    let doomed = create(json!({"prompt": "2", "steps": 5}));
    let seeded_events = follow_events(&server, &format!("/v1/jobs/{seeded}/events"));
    let (name, view) = next_event(&seeded_events);
    assert_eq!(
        (name.as_str(), &view["position"]),
        ("queued", &json!(0)),
        "{view}"
    );
    let view = get(&server.url(&format!("/v1/jobs/{doomed}"))).json();
    assert_eq!(
        (&view["status"], &view["position"]),
        (&json!("queued"), &json!(1)),
        "{view}"
    );

    // Cancelling a queued job ends it at once; a running one at its next step.
    let reply = post_json(
        &server.url(&format!("/v1/jobs/{doomed}/cancel")),
        &json!({}),
    );
    assert_eq!(
        (reply.status, &reply.json()["status"]),
        (200, &json!("cancelled"))
    );
    let reply = post_json(&server.url(&format!("/v1/jobs/{slow}/cancel")), &json!({}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let names: Vec<String> = rest(&slow_events).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names.last().map(String::as_str),
        Some("cancelled"),
        "{names:?}"
    );
    assert!(
        names[..names.len() - 1].iter().all(|n| n == "running"),
        "{names:?}"
    );
    let view = get(&server.url(&format!("/v1/jobs/{slow}"))).json();
    assert_eq!(view["status"], "cancelled", "{view}");

    // The waiting job runs: queued (maybe again), running with progress, then done.
    let events = rest(&seeded_events);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let running = names
        .iter()
        .position(|n| *n == "running")
        .expect("a running event");
    assert!(names[..running].iter().all(|n| *n == "queued"), "{names:?}");
    assert!(
        names[running..names.len() - 1]
            .iter()
            .all(|n| *n == "running"),
        "{names:?}"
    );
    let view = get(&server.url(&format!("/v1/jobs/{seeded}"))).json();
    assert_eq!(
        (&view["status"], &view["seed"], &view["size"]),
        (&json!("done"), &json!(7), &json!("16x16"))
    );
    let images = view["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "{view}");
    assert!(
        b64(&images[0]["b64_json"]) == expected,
        "the job's PNG differs from dg generate's"
    );
    assert_eq!(events.last().unwrap().1["images"], view["images"]);

    // Unknown ids are 404 everywhere.
    for reply in [
        get(&server.url("/v1/jobs/no-such-job")),
        get(&server.url("/v1/jobs/no-such-job/events")),
        post_json(&server.url("/v1/jobs/no-such-job/cancel"), &json!({})),
    ] {
        let error = assert_openai_error(&reply, 404, None, "an unknown job");
        assert_eq!(error["code"], "job_not_found");
    }
    let reply = post_json(&jobs, &json!({"prompt": "7", "n": 0}));
    assert_openai_error(&reply, 400, Some("n"), "a job with n=0");

    let ready = get(&server.url("/readyz"));
    assert_eq!(
        (ready.status, &ready.json()["status"]),
        (200, &json!("ready"))
    );
    let metrics = get(&server.url("/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));
    let text = metrics.text();
    for name in [
        "dg_http_requests_total",
        "dg_http_request_duration_seconds",
        "dg_queue_depth",
        "dg_in_flight",
        "dg_images_generated_total",
        "dg_generations_total",
        "dg_denoise_steps_total",
        "dg_denoise_seconds_total",
        "dg_denoise_steps_per_second",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
fn cancelled_jobs_free_their_place_and_time_limits_hold() {
    let server = start("digits", &["--concurrency", "1", "--queue-size", "1"], &[]);
    let jobs = server.url("/v1/jobs");
    let create = |body: Value| post_json(&jobs, &body);
    let slow = create(json!({"prompt": "1", "steps": 999, "n": 10})).json()["id"].clone();
    let slow_events = follow_events(
        &server,
        &format!("/v1/jobs/{}/events", slow.as_str().unwrap()),
    );
    while next_event(&slow_events).0 != "running" {}
    let queued = create(json!({"prompt": "2", "steps": 5}));
    assert_eq!(queued.status, 202, "{}", queued.text());
    let full = create(json!({"prompt": "3", "steps": 5}));
    assert_openai_error(&full, 429, None, "the one queue place is taken");
    // Cancelling the queued job gives its place back at once.
    let id = queued.json()["id"].as_str().unwrap().to_string();
    post_json(&server.url(&format!("/v1/jobs/{id}/cancel")), &json!({}));
    let next = create(json!({"prompt": "3", "steps": 5}));
    assert_eq!(next.status, 202, "{}", next.text());
    let ready = get(&server.url("/readyz"));
    assert_eq!(ready.json()["queued"], 1, "{}", ready.text());
    post_json(
        &server.url(&format!("/v1/jobs/{}/cancel", slow.as_str().unwrap())),
        &json!({}),
    );

    // A generation past --request-timeout is cancelled with a 504; time queued does not count.
    // Images behind URLs and finished jobs are gone after --job-ttl.
    let server = start("digits", &["--request-timeout", "1", "--job-ttl", "1"], &[]);
    let slow = post_json(
        &server.url("/v1/images/generations"),
        &json!({"prompt": "1", "steps": 999, "n": 10}),
    );
    let error = assert_openai_error(&slow, 504, None, "a generation past its time");
    assert_eq!(error["code"], "timeout");
    let answer = post_json(
        &server.url("/v1/images/generations"),
        &json!({"prompt": "1", "steps": 2, "response_format": "url"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let url = answer.json()["data"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get(&url).status, 200);
    let job = post_json(&server.url("/v1/jobs"), &json!({"prompt": "1", "steps": 2})).json();
    let job_url = server.url(&format!("/v1/jobs/{}", job["id"].as_str().unwrap()));
    while get(&job_url).json()["status"] != "done" {
        thread::sleep(Duration::from_millis(20));
    }
    // Expiry is a matter of time: wait it out.
    thread::sleep(Duration::from_millis(1300));
    assert_openai_error(&get(&url), 404, None, "an expired image URL");
    assert_openai_error(&get(&job_url), 404, None, "an expired job");
}

#[test]
fn a_websocket_submits_follows_and_reports_errors() {
    let expected = digit_png();
    let server = start("digits", &[], &[]);
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/v1/ws", server.port);
    let (mut socket, _) = tungstenite::client(url.as_str(), stream).expect("the handshake");
    let send = |socket: &mut tungstenite::WebSocket<TcpStream>, message: Value| {
        socket
            .send(tungstenite::Message::Text(message.to_string().into()))
            .expect("sent");
    };
    let receive = |socket: &mut tungstenite::WebSocket<TcpStream>| -> Value {
        loop {
            match socket.read().expect("a message") {
                tungstenite::Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON")
                }
                tungstenite::Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    };

    send(
        &mut socket,
        json!({"type": "submit", "prompt": "7", "seed": 7, "steps": 5}),
    );
    let mut statuses = Vec::new();
    let done = loop {
        let message = receive(&mut socket);
        assert_eq!(message["type"], "job", "{message}");
        let status = message["status"].as_str().expect("a status").to_string();
        statuses.push(status.clone());
        if status != "queued" && status != "running" {
            break message;
        }
    };
    assert_eq!(done["status"], "done", "{statuses:?}: {done}");
    assert!(statuses.contains(&"running".to_string()), "{statuses:?}");
    assert!(
        b64(&done["images"][0]["b64_json"]) == expected,
        "the PNG differs from dg generate's"
    );

    // The same socket takes more: a bad message, a bad call, an unknown id.
    for (message, param, code) in [
        (json!({"type": "dance"}), Some("type"), None),
        (
            json!({"type": "submit", "prompt": "7", "n": 1000}),
            Some("n"),
            None,
        ),
        (
            json!({"type": "subscribe", "id": "no-such-job"}),
            None,
            Some("job_not_found"),
        ),
    ] {
        send(&mut socket, message.clone());
        let answer = receive(&mut socket);
        assert_eq!(answer["type"], "error", "{message}: {answer}");
        let error = &answer["error"];
        assert_eq!(error["param"].as_str(), param, "{message}: {answer}");
        assert!(error["message"].is_string(), "{answer}");
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{answer}");
        }
    }

    // A long job on this socket; its id from the first answer.
    let submit_slow = |socket: &mut tungstenite::WebSocket<TcpStream>| -> String {
        send(
            socket,
            json!({"type": "submit", "prompt": "1", "steps": 999, "n": 10}),
        );
        receive(socket)["id"].as_str().expect("an id").to_string()
    };

    // While it follows a job the socket still reads: a cancel stops the job, and a second
    // submit is refused rather than left unread.
    let id = submit_slow(&mut socket);
    send(&mut socket, json!({"type": "submit", "prompt": "2"}));
    let last = loop {
        let message = receive(&mut socket);
        if message["type"] == "error" {
            assert_eq!(message["error"]["param"], "type", "{message}");
            send(&mut socket, json!({"type": "cancel", "id": id}));
            continue;
        }
        if !matches!(message["status"].as_str(), Some("queued" | "running")) {
            break message;
        }
    };
    assert_eq!(last["status"], "cancelled", "{last}");

    // Closing the socket cancels the job it submitted.
    let id = submit_slow(&mut socket);
    socket.close(None).expect("closed");
    let job = server.url(&format!("/v1/jobs/{id}"));
    let status = loop {
        let status = get(&job).json()["status"].clone();
        if status != "queued" && status != "running" {
            break status;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, "cancelled");
}
