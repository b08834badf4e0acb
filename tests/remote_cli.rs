//! `dg` and `dg-bench` with remote backends, against local servers: files written, what is
//! refused, `dg doctor --backend`, and keys that come only from the environment.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::http::{Reply, TestServer};
use diffgentor::Image;
use serde_json::json;

const KEY: &str = "sk-cli-test-key";

/// Runs a binary with only the given `DG_*` variables (so a developer's own keys never leak in).
fn run(exe: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DG_OPENAI") || name.starts_with("DG_GEMINI") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the binary runs")
}

fn dg(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(env!("CARGO_BIN_EXE_dg"), args, env)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn served_png() -> Vec<u8> {
    Image::from_raw(&[200; 8 * 8 * 3], 8, 8, 3, 24)
        .unwrap()
        .encode_png(&[])
        .unwrap()
}

/// An OpenAI-compatible server: images, a model list, and 401 for any other key.
fn openai_server() -> TestServer {
    let png = STANDARD.encode(served_png());
    TestServer::start(move |request, _| {
        if request.header("authorization") != Some(&format!("Bearer {KEY}")) {
            return Reply::json(
                401,
                &json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                  "param": null, "code": "invalid_api_key"}}),
            );
        }
        match request.path.as_str() {
            "/v1/models" => Reply::json(
                200,
                &json!({"object": "list", "data": [{"id": "sd-turbo", "object": "model", "created": 1, "owned_by": "me"}]}),
            ),
            _ => Reply::json(
                200,
                &json!({"created": 1, "data": [{"b64_json": png, "revised_prompt": "a red fox, revised"}]}),
            ),
        }
    })
}

fn parameters(path: &Path) -> String {
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .map(|c| c.text.clone())
        .chain(info.utf8_text.iter().map(|c| c.get_text().unwrap()))
        .collect()
}

#[test]
fn generate_through_an_openai_compatible_server() {
    let server = openai_server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fox.png");
    let url = server.url("/v1");
    let base = [
        "generate",
        "-q",
        "--backend",
        "openai",
        "--endpoint",
        &url,
        "--remote-model",
        "sd-turbo",
        "--prompt",
        "a red fox",
        "--width",
        "512",
        "--height",
        "512",
        "--output",
        out.to_str().unwrap(),
    ];
    let output = dg(&base, &[("DG_OPENAI_API_KEY", KEY)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), format!("wrote {}\n", out.display()));
    assert_eq!(Image::load_png(&out).unwrap().pixels, vec![200; 8 * 8 * 3]);
    let meta = parameters(&out);
    assert!(
        meta.starts_with("a red fox\nSize: 8x8, Model: sd-turbo, Backend: openai"),
        "{meta}"
    );
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/images/generations");
    assert_eq!(sent.json()["size"], "512x512");

    // A negative prompt cannot be sent: refused, nothing written...
    std::fs::remove_file(&out).unwrap();
    let mut refused = base.to_vec();
    refused.extend(["--negative-prompt", "blurry"]);
    let output = dg(&refused, &[("DG_OPENAI_API_KEY", KEY)]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: unsupported: ") && stderr.contains("negative_prompt"),
        "{stderr}"
    );
    assert!(!out.exists());
    // ...unless best effort is asked for: then it is dropped and said so.
    refused.push("--best-effort");
    let output = dg(&refused, &[("DG_OPENAI_API_KEY", KEY)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("ignored [\"negative_prompt\"]"),
        "{}",
        text(&output.stderr)
    );
    assert!(parameters(&out).contains("Ignored: [\"negative_prompt\"]"));

    // Latents do not exist remotely.
    let latents = dir.path().join("l.npy");
    let mut with_latents = base.to_vec();
    with_latents.extend(["--save-latents", latents.to_str().unwrap()]);
    let output = dg(&with_latents, &[("DG_OPENAI_API_KEY", KEY)]);
    assert!(
        text(&output.stderr).contains("returns images, not latents"),
        "{}",
        text(&output.stderr)
    );
    assert!(!latents.exists());
}

#[test]
fn keys_come_from_the_environment_only_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    // The public API without a key: the error names the variable to set.
    let output = dg(
        &[
            "generate",
            "--backend",
            "openai",
            "--prompt",
            "x",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("DG_OPENAI_API_KEY"),
        "{}",
        text(&output.stderr)
    );
    // There is no flag for a key.
    let output = dg(
        &[
            "generate",
            "--backend",
            "openai",
            "--api-key",
            KEY,
            "--prompt",
            "x",
            "-o",
            "x.png",
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap refuses the unknown flag"
    );

    // A wrong key: the service's 401 is reported, the key is not.
    let server = openai_server();
    let url = server.url("/v1");
    let output = dg(
        &["doctor", "--backend", "openai", "--endpoint", &url],
        &[("DG_OPENAI_API_KEY", "sk-wrong-key-123")],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("invalid_api_key"),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-wrong-key-123"));
}

#[test]
fn the_local_backend_needs_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let out = out.to_str().unwrap();
    let image = dir.path().join("in.png");
    std::fs::write(&image, served_png()).unwrap();
    let image = image.to_str().unwrap();
    // The default backend (which clap's `required_if_eq` does not see): the error is the missing
    // --model, not an unknown backend `local`.
    for args in [
        &["generate", "--prompt", "x", "-o", out][..],
        &["edit", "--image", image, "--prompt", "x", "-o", out][..],
    ] {
        let output = dg(args, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--model DIR is required for the local backend"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("unknown backend"), "{stderr}");
        assert!(!Path::new(out).exists());
    }
    // Named, clap refuses it as a usage error.
    let output = dg(
        &["generate", "--backend", "local", "--prompt", "x", "-o", out],
        &[],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--model <DIR>"), "{stderr}");
}

#[test]
fn doctor_checks_a_remote_backend() {
    let server = openai_server();
    let url = server.url("/v1");
    let output = dg(
        &[
            "doctor",
            "--backend",
            "openai",
            "--endpoint",
            &url,
            "--remote-model",
            "sd-turbo",
        ],
        &[("DG_OPENAI_API_KEY", KEY)],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains("backend openai (model sd-turbo)"),
        "{stdout}"
    );
    assert!(stdout.contains("tasks txt2img, edit, inpaint"), "{stdout}");
    assert!(stdout.contains("seeds not honoured"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{url} answers and accepts the key (1 models listed)"
        )),
        "{stdout}"
    );
    assert_eq!(server.requests()[0].path, "/v1/models");

    // Nothing listening: the error says the call failed, after the configured retries.
    drop(server);
    let output = dg(
        &[
            "doctor",
            "--backend",
            "openai",
            "--endpoint",
            "http://127.0.0.1:9/v1",
        ],
        &[("DG_OPENAI_API_KEY", KEY), ("DG_OPENAI_MAX_RETRIES", "0")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("request failed"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn bench_measures_remote_latency() {
    let server = openai_server();
    let url = server.url("/v1");
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let output = run(
        env!("CARGO_BIN_EXE_dg-bench"),
        &[
            "--backend",
            "openai",
            "--endpoint",
            &url,
            "--remote-model",
            "sd-turbo",
            "--concurrency",
            "2",
            "--requests",
            "6",
            "--warmup",
            "1",
            "--json",
            json_path.to_str().unwrap(),
        ],
        &[("DG_OPENAI_API_KEY", KEY)],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("p50"),
        "{}",
        text(&output.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["settings"]["backend"], "openai");
    assert_eq!(server.requests().len(), 7, "1 warm-up and 6 measured calls");
}
