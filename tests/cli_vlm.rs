//! `dg caption`, `dg enhance`, `--enhance-prompt` and `dg doctor` on VLM packages: the real binary
//! on the tiny test models, its answers equal to the transformers goldens and to library calls,
//! the remote enhancer against `dg serve --vlm` and against broken servers, and bad input refused
//! with an exit status, an error line and nothing written.
mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use common::http::{Reply, TestServer};
use diffgentor::vlm::enhance::{clean_reply, EnhanceStyle};
use diffgentor::vlm::{Vlm, VlmRequest};
use diffgentor::Image;
use serde_json::{json, Value};

const QWEN: &str = "tiny-qwen2.5-vl";

/// Runs `dg` with `env` and none of the developer's own `DG_PROMPT_ENHANCER_*` settings.
fn dg_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
    cmd.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DG_PROMPT_ENHANCER") {
            cmd.env_remove(name);
        }
    }
    if let Some(lib) = common::ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("dg runs")
}

fn dg(args: &[&str]) -> Output {
    dg_env(args, &[])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "dg failed ({:?}): {}",
        output.status,
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Asserts a failure with `code`, an `error: ...` stderr holding every one of `needles`, and
/// nothing on stdout.
fn fails(output: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    assert!(output.stdout.is_empty(), "stdout: {}", text(&output.stdout));
    stderr
}

fn model(name: &str) -> String {
    common::model_dir(name).display().to_string()
}

fn vlm_image(name: &str) -> String {
    common::repo()
        .join("models/vlm-images")
        .join(name)
        .display()
        .to_string()
}

fn goldens() -> Value {
    let path = common::repo().join("models/vlm-goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden(name: &str) -> Value {
    goldens()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no golden case {name}"))
        .clone()
}

/// `dg caption` arguments for a golden case.
fn caption_args(case: &Value) -> Vec<String> {
    let mut args: Vec<String> = vec!["caption".into(), "--model".into(), model(QWEN)];
    for image in case["images"].as_array().unwrap() {
        let path = common::repo().join("models").join(image.as_str().unwrap());
        args.extend(["--image".into(), path.display().to_string()]);
    }
    args.extend([
        "--prompt".into(),
        case["prompt"].as_str().unwrap().into(),
        "--max-new-tokens".into(),
        case["max_new_tokens"].to_string(),
    ]);
    args
}

fn run_strings(args: &[String]) -> Output {
    dg(&strs(args))
}

fn load(name: &str) -> Vlm {
    Vlm::load(common::runtime(), &common::model_dir(name)).unwrap()
}

fn load_image(path: &str) -> Image {
    Image::decode(&std::fs::read(path).unwrap()).unwrap()
}

/// What the library makes of an enhancement request with the CLI's defaults.
fn library_enhance(style: EnhanceStyle, instruction: &str, image: Option<&str>) -> String {
    let request = style.request(instruction, image.map(load_image)).unwrap();
    let reply = load(QWEN).generate(&request).unwrap().text;
    clean_reply(&reply).expect("the tiny model's reply keeps some text")
}

#[test]
fn caption_streams_and_prints_json_equal_to_the_goldens() {
    for name in ["image_96x64", "two_images", "image_300x200_max_pixels"] {
        let case = golden(name);
        let expected_ids = &case["expected_ids"];
        let expected_text = case["expected_text"].as_str().unwrap();

        let plain = ok(&run_strings(&caption_args(&case)));
        assert_eq!(plain, format!("{expected_text}\n"), "{name}: streamed text");

        let mut args = caption_args(&case);
        args.push("--json".into());
        let stdout = ok(&run_strings(&args));
        assert_eq!(stdout.lines().count(), 1, "{name}: one object: {stdout}");
        assert!(stdout.starts_with("{\"text\":"), "{stdout}");
        let object: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(&object["token_ids"], expected_ids, "{name}: token ids");
        assert_eq!(object["text"], expected_text, "{name}");
        assert_eq!(
            object["prompt_tokens"],
            case["input_ids"].as_array().unwrap().len(),
            "{name}"
        );
        let reason = if case["stopped_at_eos"] == true {
            "stop"
        } else {
            "length"
        };
        assert_eq!(object["finish_reason"], reason, "{name}");
        let timings = object["timings"].as_object().unwrap();
        let keys: Vec<&str> = timings.keys().map(String::as_str).collect();
        for key in [
            "preprocess_ms",
            "vision_ms",
            "first_token_ms",
            "decode_ms",
            "total_ms",
            "tokens_per_second",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
            assert!(timings[key].as_f64().unwrap() >= 0.0);
        }
        assert_eq!(keys.len(), 6, "{keys:?}");
    }
}

#[test]
fn caption_without_an_image_asks_the_prompt_as_text_and_without_a_prompt_captions() {
    let case = golden("text_only");
    assert!(case["images"].as_array().unwrap().is_empty());
    let mut args = caption_args(&case);
    args.push("--json".into());
    let object: Value = serde_json::from_str(&ok(&run_strings(&args))).unwrap();
    assert_eq!(object["token_ids"], case["expected_ids"]);

    // No --prompt: the documented caption prompt, as the library's caption request.
    let path = vlm_image("square_80x80.png");
    let stdout = ok(&dg(&[
        "caption",
        "--model",
        &model(QWEN),
        "--image",
        &path,
        "--max-new-tokens",
        "12",
        "--json",
    ]));
    let mut request = VlmRequest::caption(vec![load_image(&path)], None);
    request.max_new_tokens = 12;
    let expected = load(QWEN).generate(&request).unwrap();
    let object: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(object["token_ids"], json!(expected.token_ids));
    assert_eq!(object["text"], expected.text);

    // Neither an image nor a prompt: clap's usage error.
    let output = dg(&["caption", "--model", &model(QWEN)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("--image"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn caption_takes_sampling_system_and_stop_as_the_library_does() {
    let path = vlm_image("shapes_96x64.png");
    let stdout = ok(&dg(&[
        "caption",
        "--model",
        &model("tiny-qwen2.5-vl-tfjs"),
        "--image",
        &path,
        "--prompt",
        "What is this?",
        "--system",
        "Answer briefly.",
        "--max-new-tokens",
        "10",
        "--temperature",
        "1.3",
        "--top-p",
        "0.9",
        "--top-k",
        "40",
        "--repetition-penalty",
        "1.2",
        "--seed",
        "11",
        "--json",
    ]));
    let mut request =
        VlmRequest::new("What is this?", vec![load_image(&path)]).with_system("Answer briefly.");
    request.max_new_tokens = 10;
    request.sampling = diffgentor::vlm::SamplingParams {
        temperature: 1.3,
        top_k: 40,
        top_p: 0.9,
        repetition_penalty: 1.2,
        seed: 11,
    };
    let expected = load("tiny-qwen2.5-vl-tfjs").generate(&request).unwrap();
    let object: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(object["token_ids"], json!(expected.token_ids));

    // A stop string: the answer ends before it, and the reason says so.
    let case = golden("image_80x80");
    let full = case["expected_text"].as_str().unwrap();
    let stop = "444";
    let mut args = caption_args(&case);
    args.extend(["--stop".into(), stop.into(), "--json".into()]);
    let object: Value = serde_json::from_str(&ok(&run_strings(&args))).unwrap();
    assert_eq!(object["text"], full[..full.find(stop).unwrap()]);
    assert_eq!(object["finish_reason"], "stop");
}

#[test]
fn caption_runs_the_encoder_decoder_captioner() {
    let path = common::repo().join("models/vlm-captioner-goldens.json");
    let goldens: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &goldens["cases"][0];
    let image = common::repo()
        .join("models")
        .join(case["image"].as_str().unwrap());
    let stdout = ok(&dg(&[
        "caption",
        "--model",
        &model("tiny-vit-gpt2"),
        "--image",
        image.to_str().unwrap(),
        "--max-new-tokens",
        &case["max_new_tokens"].to_string(),
        "--json",
    ]));
    let object: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(object["token_ids"], case["expected_ids"]);
    assert_eq!(object["text"], case["expected_text"]);
}

#[test]
fn a_reader_that_goes_away_ends_caption_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dg"))
        .args([
            "caption",
            "--model",
            &model(QWEN),
            "--image",
            &vlm_image("shapes_96x64.png"),
            "--max-new-tokens",
            "64",
        ])
        .envs(common::ort_library().map(|lib| ("DG_ORT_DYLIB_PATH", lib)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
}

#[test]
fn enhance_with_a_local_model_equals_the_library() {
    let image = vlm_image("shapes_96x64.png");
    let instruction = "make the circle blue";
    let expected = library_enhance(EnhanceStyle::QwenImageEdit, instruction, Some(&image));
    let args = [
        "enhance",
        "--model",
        &model(QWEN),
        "--image",
        &image,
        "--instruction",
        instruction,
    ];
    assert_eq!(ok(&dg(&args)), format!("{expected}\n"));
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let stdout = ok(&dg(&json_args));
    assert!(stdout.starts_with("{\"prompt\":"), "{stdout}");
    let object: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        object,
        json!({"prompt": expected, "original": instruction, "style": "qwen_image_edit",
               "model": model(QWEN)})
    );

    // No image: the text-to-image style; another style on request.
    let prompt = "a lighthouse at dusk";
    let expected = library_enhance(EnhanceStyle::T2i, prompt, None);
    let stdout = ok(&dg(&[
        "enhance",
        "--model",
        &model(QWEN),
        "--instruction",
        prompt,
        "--json",
    ]));
    let object: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&object["prompt"], &object["style"]),
        (&json!(expected), &json!("t2i"))
    );
    let expected = library_enhance(EnhanceStyle::Flux2, prompt, None);
    let stdout = ok(&dg(&[
        "enhance",
        "--model",
        &model(QWEN),
        "--instruction",
        prompt,
        "--style",
        "flux2",
    ]));
    assert_eq!(stdout, format!("{expected}\n"));
}

/// A `dg serve --vlm` child on an ephemeral port; killed when dropped.
struct VlmServer {
    child: Child,
    port: u16,
    _stdout: BufReader<ChildStdout>,
}

impl VlmServer {
    fn start(args: &[&str]) -> VlmServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
        cmd.args(["serve", "--vlm", &model(QWEN), "--port", "0"])
            .args(args)
            .env("DG_LOG", "warn")
            .env_remove("DG_SERVE_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(lib) = common::ort_library() {
            cmd.env("DG_ORT_DYLIB_PATH", lib);
        }
        let mut child = cmd.spawn().expect("dg serve starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Some(port) = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dg serve --vlm did not print its address: {line:?}");
        };
        VlmServer {
            child,
            port,
            _stdout: stdout,
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for VlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_remote_enhancer_against_dg_serve_equals_the_local_model() {
    const KEY: &str = "sk-enhancer-test";
    let server = VlmServer::start(&["--api-key", KEY]);
    let base = server.base_url();
    let env = [
        ("DG_PROMPT_ENHANCER_BASE_URL", base.as_str()),
        ("DG_PROMPT_ENHANCER_API_KEY", KEY),
    ];
    let image = vlm_image("shapes_96x64.png");
    let instruction = "make the circle blue";
    let expected = library_enhance(EnhanceStyle::QwenImageEdit, instruction, Some(&image));
    let args = [
        "enhance",
        "--model",
        "openai:tiny-qwen",
        "--image",
        &image,
        "--instruction",
        instruction,
        "--json",
    ];
    let object: Value = serde_json::from_str(&ok(&dg_env(&args, &env))).unwrap();
    assert_eq!(
        object,
        json!({"prompt": expected, "original": instruction, "style": "qwen_image_edit",
               "model": "openai:tiny-qwen"})
    );

    // `openai:` alone takes the model from the environment; text only.
    let prompt = "a lighthouse at dusk";
    let expected = library_enhance(EnhanceStyle::T2i, prompt, None);
    let mut with_model = env.to_vec();
    with_model.push(("DG_PROMPT_ENHANCER_MODEL", "from-env"));
    let stdout = ok(&dg_env(
        &[
            "enhance",
            "--model",
            "openai:",
            "--instruction",
            prompt,
            "--json",
        ],
        &with_model,
    ));
    let object: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&object["prompt"], &object["model"]),
        (&json!(expected), &json!("openai:from-env"))
    );

    // The server's 401 for a wrong key is reported, the key is not.
    let wrong = [
        ("DG_PROMPT_ENHANCER_BASE_URL", base.as_str()),
        ("DG_PROMPT_ENHANCER_API_KEY", "sk-wrong-key-123"),
    ];
    let stderr = fails(
        &dg_env(&args, &wrong),
        1,
        &["prompt enhancer at", "HTTP 401"],
    );
    assert!(!stderr.contains("sk-wrong-key-123"), "{stderr}");

    // --enhance-prompt through the service records what the local model would have written.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("remote.png");
    let output = dg_env(
        &strs(&generate_args("a red fox", &out, "openai:tiny-qwen")),
        &env,
    );
    ok(&output);
    let chunks = png_text(&out);
    assert_eq!(
        chunks["enhanced_prompt"],
        library_enhance(EnhanceStyle::T2i, "a red fox", None)
    );
    assert_eq!(chunks["prompt_enhancer"], "openai:tiny-qwen");
}

/// `dg generate` on tiny-sd with `--enhance-prompt enhancer`.
fn generate_args(prompt: &str, out: &Path, enhancer: &str) -> Vec<String> {
    [
        "generate",
        "--model",
        &model("tiny-sd"),
        "--prompt",
        prompt,
        "--steps",
        "2",
        "--seed",
        "3",
        "--enhance-prompt",
        enhancer,
        "--output",
        out.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Every text chunk of a PNG (tEXt and iTXt) by key.
fn png_text(path: &Path) -> std::collections::BTreeMap<String, String> {
    let reader = png::Decoder::new(BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .chain(
            info.utf8_text
                .iter()
                .map(|c| (c.keyword.clone(), c.get_text().unwrap())),
        )
        .collect()
}

#[test]
fn enhance_prompt_rewrites_the_prompt_and_the_png_records_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fox.png");
    let enhancer = model(QWEN);
    let output = dg(&strs(&generate_args("a red fox", &out, &enhancer)));
    let stdout = ok(&output);
    assert!(stdout.contains("wrote "), "{stdout}");
    let expected = library_enhance(EnhanceStyle::T2i, "a red fox", None);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("enhanced prompt: {expected}\n")),
        "{stderr}"
    );
    let chunks = png_text(&out);
    assert_eq!(chunks["original_prompt"], "a red fox");
    assert_eq!(chunks["enhanced_prompt"], expected);
    assert_eq!(chunks["prompt_enhancer"], enhancer);
    assert_eq!(chunks["prompt_enhancer_style"], "t2i");
    let parameters = &chunks["parameters"];
    assert!(
        parameters.starts_with(&format!("{expected}\n")),
        "{parameters}"
    );
    // (The repository's path holds no comma or colon, which would quote it.)
    assert!(
        parameters.contains(&format!(
            ", Prompt enhancer: {enhancer}, Enhance style: t2i, Version: "
        )),
        "{parameters}"
    );
    assert!(!parameters.contains("a red fox"), "{parameters}");

    // The same seed and the enhanced prompt given directly: the same pixels.
    let direct = dir.path().join("direct.png");
    ok(&dg(&[
        "generate",
        "--model",
        &model("tiny-sd"),
        "--prompt",
        &expected,
        "--steps",
        "2",
        "--seed",
        "3",
        "--output",
        direct.to_str().unwrap(),
    ]));
    assert_eq!(
        Image::load_png(&out).unwrap(),
        Image::load_png(&direct).unwrap()
    );

    // -q: no enhanced prompt on stderr; another style by flag.
    let quiet = dir.path().join("quiet.png");
    let mut args = generate_args("a red fox", &quiet, &enhancer);
    args.extend(["-q", "--enhance-style", "glm_image"].map(str::to_string));
    let output = dg(&strs(&args));
    ok(&output);
    assert!(
        !text(&output.stderr).contains("enhanced prompt"),
        "{}",
        text(&output.stderr)
    );
    let chunks = png_text(&quiet);
    assert_eq!(chunks["prompt_enhancer_style"], "glm_image");
    assert_eq!(
        chunks["enhanced_prompt"],
        library_enhance(EnhanceStyle::GlmImage, "a red fox", None)
    );
}

#[test]
fn edit_shows_the_enhancer_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.png");
    let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let image = Image::from_raw(&pixels, 64, 64, 3, 64 * 3).unwrap();
    image.save_png(&source, &[]).unwrap();
    let out = dir.path().join("edited.png");
    let output = dg(&[
        "edit",
        "--model",
        &model("tiny-sd"),
        "--image",
        source.to_str().unwrap(),
        "--prompt",
        "make it blue",
        "--steps",
        "2",
        "--seed",
        "1",
        "--enhance-prompt",
        &model(QWEN),
        "-q",
        "--output",
        out.to_str().unwrap(),
    ]);
    ok(&output);
    let request = EnhanceStyle::QwenImageEdit
        .request("make it blue", Some(image))
        .unwrap();
    let reply = load(QWEN).generate(&request).unwrap().text;
    let chunks = png_text(&out);
    assert_eq!(chunks["enhanced_prompt"], clean_reply(&reply).unwrap());
    assert_eq!(chunks["original_prompt"], "make it blue");
    assert_eq!(chunks["prompt_enhancer_style"], "qwen_image_edit");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn remote_enhancer_failures_are_remote_errors_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.png");
    let quick = |base: &str| -> Vec<(String, String)> {
        vec![
            ("DG_PROMPT_ENHANCER_BASE_URL".into(), base.to_string()),
            ("DG_PROMPT_ENHANCER_MAX_RETRIES".into(), "1".into()),
            ("DG_PROMPT_ENHANCER_BACKOFF_S".into(), "0.01".into()),
            ("DG_PROMPT_ENHANCER_TIMEOUT".into(), "2".into()),
        ]
    };
    let run = |env: &[(String, String)], args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        dg_env(args, &env)
    };
    let enhance = ["enhance", "--model", "openai:m", "--instruction", "a fox"];

    // Connection refused, retried once.
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    fails(
        &run(&quick(&base), &enhance),
        1,
        &[
            &format!("prompt enhancer at {base}: request failed"),
            "(after 2 attempts)",
        ],
    );
    let generate = generate_args("a fox", &out, "openai:m");
    let stderr = fails(
        &run(&quick(&base), &strs(&generate)),
        1,
        &["prompt enhancer at"],
    );
    assert!(!out.exists(), "{stderr}");

    // A server error, retried, then reported with the service's message.
    let server = TestServer::start(|_, _| {
        Reply::json(
            500,
            &json!({"error": {"message": "the GPU caught fire", "type": "server_error"}}),
        )
    });
    fails(
        &run(&quick(&server.url("/v1")), &enhance),
        1,
        &[
            "HTTP 500",
            "server_error",
            "the GPU caught fire",
            "(after 2 attempts)",
        ],
    );
    assert_eq!(server.requests().len(), 2);
    let sent = &server.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    let body = sent.json();
    assert_eq!(body["model"], "m");
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(
        body["messages"][0]["content"],
        EnhanceStyle::T2i.system_prompt()
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Request: a fox"})
    );
    assert!(sent.header("authorization").is_none(), "no key, no header");

    // Malformed JSON in a 200: not retried.
    let server =
        TestServer::start(|_, _| Reply::raw(200, "application/json", "{\"choices\": [oops"));
    fails(
        &run(&quick(&server.url("/v1")), &enhance),
        1,
        &["invalid_response", "the answer is not JSON"],
    );
    assert_eq!(server.requests().len(), 1);

    // A refusal is its own kind of failure.
    let server = TestServer::start(|_, _| {
        Reply::json(
            200,
            &json!({"choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]}),
        )
    });
    fails(
        &run(&quick(&server.url("/v1")), &enhance),
        1,
        &["refusal", "I can't help with that."],
    );

    // No answer within the timeout.
    let server = TestServer::start(|_, _| {
        Reply::json(200, &json!({"choices": []})).delayed(Duration::from_secs(3))
    });
    let mut slow = quick(&server.url("/v1"));
    slow.push(("DG_PROMPT_ENHANCER_TIMEOUT".into(), "0.3".into()));
    slow.push(("DG_PROMPT_ENHANCER_MAX_RETRIES".into(), "0".into()));
    fails(&run(&slow, &enhance), 1, &["no answer within 0.3 s"]);

    // An image goes as a data URL, and an answer in a code fence is cleaned.
    let server = TestServer::start(|_, _| {
        Reply::json(
            200,
            &json!({"choices": [{"message": {"role": "assistant", "content": "```\nPrompt: \"the circle, blue\"\n```"}}]}),
        )
    });
    let image = vlm_image("shapes_96x64.png");
    let stdout = ok(&run(
        &quick(&server.url("/v1")),
        &[
            "enhance",
            "--model",
            "openai:m",
            "--image",
            &image,
            "--instruction",
            "make it blue",
        ],
    ));
    assert_eq!(stdout, "the circle, blue\n");
    let body = server.requests()[0].json();
    let parts = body["messages"][1]["content"].as_array().unwrap();
    let url = parts[0]["image_url"]["url"].as_str().unwrap();
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(url.strip_prefix("data:image/png;base64,").unwrap())
        .unwrap();
    assert_eq!(Image::decode(&png).unwrap(), load_image(&image));
    assert_eq!(
        parts[1],
        json!({"type": "text", "text": "Instruction: make it blue"})
    );

    // The public API without a key: refused before any call, naming the variable.
    fails(&dg(&enhance), 1, &["DG_PROMPT_ENHANCER_API_KEY"]);
    // `openai:` alone without DG_PROMPT_ENHANCER_MODEL.
    fails(
        &run(
            &quick(&server.url("/v1")),
            &["enhance", "--model", "openai:", "--instruction", "x"],
        ),
        1,
        &["DG_PROMPT_ENHANCER_MODEL"],
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let qwen = model(QWEN);
    let caption = |extra: &[&str]| {
        let mut args = vec!["caption", "--model", qwen.as_str()];
        args.extend_from_slice(extra);
        dg(&args)
    };

    let missing = dir.path().join("missing.png");
    let missing = missing.to_str().unwrap();
    fails(
        &caption(&["--image", missing]),
        1,
        &["error: cannot read ", missing],
    );

    let corrupt: PathBuf = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let corrupt = corrupt.to_str().unwrap();
    fails(
        &caption(&["--image", corrupt]),
        1,
        &["error: invalid argument: ", corrupt],
    );

    fails(
        &caption(&["--image", &vlm_image("tiny_10x10.png")]),
        1,
        &["error: invalid argument: ", "10x10", "at least one patch"],
    );

    let image = vlm_image("shapes_96x64.png");
    fails(
        &caption(&["--image", &image, "--max-new-tokens", "0"]),
        1,
        &["error: invalid argument: max_new_tokens must be 1..=32768, got 0"],
    );
    fails(
        &caption(&["--image", &image, "--top-p", "0"]),
        1,
        &["error: invalid argument: top_p must be greater than 0"],
    );

    let nowhere = dir.path().join("no-such-model");
    let nowhere = nowhere.to_str().unwrap();
    fails(
        &dg(&["caption", "--model", nowhere, "--image", &image]),
        1,
        &["error: model package ", nowhere, "is not a directory"],
    );
    fails(
        &dg(&["caption", "--model", &model("tiny-sd"), "--image", &image]),
        1,
        &["is a diffusion model package (model_index.json), not a vision-language model"],
    );

    // Unknown styles are clap's usage errors, listing the styles.
    let output = dg(&[
        "enhance",
        "--model",
        &qwen,
        "--instruction",
        "x",
        "--style",
        "sdxl",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("invalid value 'sdxl' for '--style <STYLE>'")
            && stderr.contains("qwen_image_edit, flux2, glm_image, t2i"),
        "{stderr}"
    );
    fails(
        &dg(&["enhance", "--model", &qwen, "--instruction", "  "]),
        1,
        &["error: invalid argument: prompt enhancement needs a non-empty instruction"],
    );

    // Generation with a bad enhancer or bad enhancement flags writes nothing.
    let out = dir.path().join("out.png");
    let sd = model("tiny-sd");
    fails(
        &dg(&strs(&generate_args("a fox", &out, nowhere))),
        1,
        &["is not a directory"],
    );
    fails(
        &dg(&strs(&generate_args("a fox", &out, &sd))),
        1,
        &["is a diffusion model package"],
    );
    let output = dg(&[
        "generate",
        "--model",
        &sd,
        "--prompt",
        "x",
        "--enhance-style",
        "t2i",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "--enhance-style needs --enhance-prompt"
    );
    let output = dg(&[
        "generate",
        "--model",
        &sd,
        "--input",
        "rows.csv",
        "--output-dir",
        "x",
        "--enhance-prompt",
        &qwen,
    ]);
    assert_eq!(output.status.code(), Some(2), "batches do not enhance");
    assert!(!out.exists());
}

#[test]
fn doctor_describes_vlm_packages_and_still_diffusion_ones() {
    let stdout = ok(&dg(&["doctor", "--model", &model(QWEN)]));
    for needle in [
        "model tiny-qwen2.5-vl (vision-language, onnxruntime-genai layout)",
        "  context length ",
        "  eos ids ",
        "  chat template yes",
        "  vision_encoder (pixel_values: float32[?, 1176]",
        "  decoder (inputs_embeds: ",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in:\n{stdout}");
    }
    let vlm = load(QWEN);
    let eos: Vec<String> = vlm.eos_ids().iter().map(ToString::to_string).collect();
    assert!(
        stdout.contains(&format!("  eos ids {}\n", eos.join(", "))),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  context length {}\n", vlm.context_length())));
    for graph in vlm.graphs() {
        assert!(
            stdout.contains(&format!("  {} {}\n", graph.component(), graph.signature())),
            "{stdout}"
        );
    }

    let stdout = ok(&dg(&["doctor", "--model", &model("tiny-qwen2.5-vl-tfjs")]));
    assert!(
        stdout.contains("(vision-language, transformers.js layout)"),
        "{stdout}"
    );
    let stdout = ok(&dg(&["doctor", "--model", &model("tiny-vit-gpt2")]));
    assert!(
        stdout.contains("(vision-language, optimum vision-encoder-decoder layout)")
            && stdout.contains("  chat template none"),
        "{stdout}"
    );
    let stdout = ok(&dg(&["doctor", "--model", &model("tiny-sd")]));
    assert!(
        stdout.contains("  family ") && !stdout.contains("vision-language"),
        "{stdout}"
    );
}
