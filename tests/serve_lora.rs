//! `dg serve`'s LoRA endpoints end to end, on models/tiny-sd with 3 steps: `set_lora`,
//! `merge_lora_weights`, `unmerge_lora_weights`, `list_loras`, a request's own `loras`, the
//! `--lora-dir` sandbox and the errors of bad files, names and backends.
mod common;

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::serve::{get, post, post_json, post_multipart, Reply, Server};
use diffgentor::Image;
use serde_json::{json, Value};

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn copy_lora(file: &str, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::copy(common::repo().join("models/lora").join(file), to).unwrap();
}

/// `dg serve --model models/tiny-sd` plus `args`.
fn start(args: &[&str]) -> Server {
    Server::start(&[&["--model", "models/tiny-sd"][..], args].concat(), &[])
}

/// The PNG bytes of a generation of `a red fox` (seed 7, 3 steps) with `extra` fields.
fn image(server: &Server, extra: Value) -> Vec<u8> {
    let reply = generation(server, extra.clone());
    assert_eq!(reply.status, 200, "{extra}: {}", reply.text());
    b64(&reply.json()["data"][0]["b64_json"])
}

fn generation(server: &Server, extra: Value) -> Reply {
    let mut body = json!({"prompt": "a red fox", "seed": 7, "steps": 3});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    post_json(&server.url("/v1/images/generations"), &body)
}

fn b64(text: &Value) -> Vec<u8> {
    STANDARD
        .decode(text.as_str().expect("a base64 string"))
        .expect("valid base64")
}

fn pixels(png: &[u8]) -> Image {
    Image::decode(png).expect("a PNG")
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    let (a, b) = (pixels(a), pixels(b));
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.pixels
        .iter()
        .zip(&b.pixels)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Asserts two PNGs are the same bytes, without printing them.
fn same(a: &[u8], b: &[u8], what: &str) {
    assert!(
        a == b,
        "{what}: the PNGs differ (pixels max diff {})",
        max_diff(a, b)
    );
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// POSTs `body` to a LoRA endpoint and returns the answer.
fn call(server: &Server, endpoint: &str, body: Value) -> Reply {
    post_json(&server.url(&format!("/v1/{endpoint}")), &body)
}

/// Asserts a 200 and returns the JSON body.
fn ok(reply: Reply, what: &str) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    reply.json()
}

/// Asserts a 400 with `code` (and `param`, when given) and returns the message.
fn refused(reply: &Reply, code: Option<&str>, param: Option<&str>, what: &str) -> String {
    assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "invalid_request_error", "{what}: {error}");
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{what}: {error}");
    }
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{what}: {error}");
    }
    error["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn set_lora_switches_merges_and_unmerges_the_active_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("loras");
    copy_lora("sd_a.safetensors", &dir.join("sd_a.safetensors"));
    copy_lora(
        "sd_a_kohya.safetensors",
        &dir.join("sd_a_kohya.safetensors"),
    );
    copy_lora("sd_b.safetensors", &dir.join("styles/sd_b.safetensors"));
    let server = start(&["--lora-dir", path(&dir)]);

    let base = image(&server, json!({}));
    let list = ok(get(&server.url("/v1/list_loras")), "an empty list");
    assert_eq!(list["data"], json!([]));
    assert_eq!(list["active"], json!([]));

    let set = ok(
        call(
            &server,
            "set_lora",
            json!({"lora_nickname": "a", "lora_path": "sd_a.safetensors", "strength": 0.8}),
        ),
        "set_lora a",
    );
    assert_eq!(
        (&set["status"], &set["loaded"]),
        (&json!("ok"), &json!(true))
    );
    let with_a = image(&server, json!({}));
    let changed = max_diff(&base, &with_a);
    assert!(
        changed > 8,
        "the active LoRA changes the image (max diff {changed})"
    );
    assert!(
        contains(&with_a, "LoRA: \"a:0.8\""),
        "the PNG names the stack"
    );
    assert!(!contains(&base, "LoRA"));

    let list = ok(get(&server.url("/v1/list_loras")), "list_loras");
    assert_eq!(
        list["data"],
        json!([{
            "name": "a", "path": "sd_a.safetensors", "format": "diffusers",
            "layers": {"unet": 40}, "unmatched": 0, "active": true, "strength": 0.8,
        }]),
        "{list}"
    );
    assert_eq!(list["active"], json!([{"name": "a", "strength": 0.8}]));

    // A request's own stack wins over the active one: none is the base, bit for bit.
    same(&image(&server, json!({"loras": []})), &base, "no stack");
    same(
        &image(&server, json!({"loras": [{"name": "a", "strength": 0.8}]})),
        &with_a,
        "a's stack by request",
    );
    same(
        &image(&server, json!({"loras": "a:0.8"})),
        &with_a,
        "a as text",
    );

    // The kohya twin: the same pixels. Switching back needs no path and loads nothing.
    let set = ok(
        call(
            &server,
            "set_lora",
            json!({"lora_nickname": "k", "lora_path": "sd_a_kohya.safetensors", "strength": 0.8}),
        ),
        "set_lora k",
    );
    assert_eq!(set["active"], json!([{"name": "k", "strength": 0.8}]));
    let kohya = image(&server, json!({}));
    assert_eq!(max_diff(&kohya, &with_a), 0, "sd_a and its kohya twin");
    let set = ok(
        call(
            &server,
            "set_lora",
            json!({"lora_nickname": "a", "strength": 0.8}),
        ),
        "switch back",
    );
    assert_eq!(set["loaded"], json!(false));
    same(&image(&server, json!({})), &with_a, "switched back to a");
    let set = ok(
        call(
            &server,
            "set_lora",
            json!({"lora_nickname": "a", "lora_path": "sd_a.safetensors", "strength": 0.8}),
        ),
        "the same file again",
    );
    assert_eq!(set["loaded"], json!(false));

    // Merging scales the stack set_lora chose; unmerging is the base image again.
    ok(
        call(
            &server,
            "set_lora",
            json!({"lora_nickname": "a", "strength": 0.8}),
        ),
        "a again",
    );
    let merged = ok(
        call(&server, "merge_lora_weights", json!({"strength": 0.5})),
        "merge at 0.5",
    );
    assert_eq!(merged["active"], json!([{"name": "a", "strength": 0.4}]));
    let half = image(&server, json!({}));
    same(
        &half,
        &image(&server, json!({"loras": "a:0.4"})),
        "merged at 0.5",
    );
    assert!(max_diff(&half, &with_a) > 0);
    let unmerged = ok(
        post(
            &server.url("/v1/unmerge_lora_weights"),
            "application/json",
            b"",
        ),
        "unmerge",
    );
    assert_eq!(unmerged["active"], json!([]));
    assert_eq!(
        unmerged["data"].as_array().map(Vec::len),
        Some(2),
        "a and k stay loaded"
    );
    same(
        &image(&server, json!({})),
        &base,
        "unmerged: the base bytes",
    );
    ok(
        call(&server, "merge_lora_weights", json!({})),
        "merge again",
    );
    same(&image(&server, json!({})), &with_a, "merged again");

    // Edits take `loras` as a form field.
    let source = std::fs::read(common::repo().join("tests/golden/edit/image_64x64.png")).unwrap();
    let edit = |loras: &str| {
        let reply = post_multipart(
            &server.url("/v1/images/edits"),
            &[
                ("image", &source),
                ("prompt", b"a snowy fox"),
                ("strength", b"0.8"),
                ("seed", b"7"),
                ("steps", b"3"),
                ("loras", loras.as_bytes()),
            ],
        );
        assert_eq!(
            reply.status,
            200,
            "edit with loras {loras:?}: {}",
            reply.text()
        );
        b64(&reply.json()["data"][0]["b64_json"])
    };
    let plain = edit("");
    let styled = edit(r#"[{"name": "a", "strength": 0.8}]"#);
    assert!(max_diff(&plain, &styled) > 8);
    same(&edit("a:0.8"), &styled, "an edit with a as text");

    // A third adapter, from a subfolder, stacked with another by a request. (Loaded last: each
    // adapter makes more weights graph inputs, which ONNX Runtime optimizes around a little
    // differently, so images made before may differ from later ones by a level.)
    let set = ok(
        call(
            &server,
            "set_lora",
            json!({"lora_nickname": "b", "lora_path": "styles/sd_b.safetensors"}),
        ),
        "a file in a subfolder",
    );
    let names: Vec<&str> = set["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "k"], "every adapter stays loaded");
    assert_eq!(set["data"][1]["path"], "styles/sd_b.safetensors");
    let stacked = image(
        &server,
        json!({"loras": [{"name": "a", "strength": 0.8}, "b:0.5"]}),
    );
    assert!(max_diff(&stacked, &with_a) > 0);
}

#[test]
fn bad_lora_requests_get_400s_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("loras");
    copy_lora("sd_a.safetensors", &dir.join("sd_a.safetensors"));
    copy_lora("sdxl_a.safetensors", &dir.join("sdxl_a.safetensors"));
    copy_lora("sd_a.safetensors", &tmp.path().join("outside.safetensors"));
    std::fs::write(dir.join("bad.safetensors"), b"\x08\0\0\0\0\0\0\0{}garbage").unwrap();
    std::os::unix::fs::symlink(
        tmp.path().join("outside.safetensors"),
        dir.join("escape.safetensors"),
    )
    .unwrap();
    let server = start(&["--lora-dir", path(&dir)]);
    let set = |body: Value| call(&server, "set_lora", body);
    let outside = path(&tmp.path().join("outside.safetensors")).to_string();
    for lora_path in [
        "../outside.safetensors",
        "./../loras/../outside.safetensors",
        outside.as_str(),
        "escape.safetensors",
    ] {
        let message = refused(
            &set(json!({"lora_nickname": "x", "lora_path": lora_path})),
            Some("lora_path_outside"),
            Some("lora_path"),
            lora_path,
        );
        assert!(
            message.contains("outside the server's LoRA directory"),
            "{message}"
        );
    }
    refused(
        &set(json!({"lora_nickname": "x", "lora_path": "missing.safetensors"})),
        Some("lora_not_found"),
        Some("lora_path"),
        "a missing file",
    );
    let message = refused(
        &set(json!({"lora_nickname": "x", "lora_path": "bad.safetensors"})),
        Some("invalid_lora"),
        Some("lora_path"),
        "a bad file",
    );
    assert!(
        message.starts_with("bad.safetensors: ") && message.contains("safetensors"),
        "{message}"
    );
    assert!(
        !message.contains(path(tmp.path())),
        "the server's own paths stay its own: {message}"
    );
    let message = refused(
        &set(json!({"lora_nickname": "x", "lora_path": "sdxl_a.safetensors"})),
        Some("invalid_lora"),
        Some("lora_path"),
        "another model's LoRA",
    );
    assert!(message.contains("made for a different model"), "{message}");
    refused(
        &set(json!({"lora_nickname": "a/b", "lora_path": "sd_a.safetensors"})),
        None,
        Some("lora_nickname"),
        "a name with a slash",
    );
    refused(
        &set(json!({"lora_path": "sd_a.safetensors"})),
        None,
        Some("lora_nickname"),
        "no name",
    );
    refused(
        &set(json!({"lora_nickname": "never_loaded"})),
        None,
        Some("lora_path"),
        "no path for a new adapter",
    );
    refused(
        &set(json!({"lora_nickname": "x", "lora_path": "sd_a.safetensors", "strength": "x"})),
        None,
        Some("strength"),
        "a strength that is no number",
    );
    let reply = post(
        &server.url("/v1/set_lora"),
        "application/json",
        b"{\"lora_nickname\":",
    );
    refused(&reply, Some("invalid_json"), None, "malformed JSON");
    refused(
        &call(&server, "merge_lora_weights", json!({})),
        Some("no_lora_set"),
        None,
        "merge before set_lora",
    );
    refused(
        &generation(&server, json!({"loras": [{"name": "nobody"}]})),
        Some("lora_not_loaded"),
        Some("loras"),
        "a request naming no loaded adapter",
    );
    refused(
        &generation(&server, json!({"loras": 3})),
        None,
        Some("loras"),
        "a `loras` of the wrong type",
    );
    refused(
        &generation(
            &server,
            json!({"prompt": "a fox <lora:nobody:0.5>", "lora_prompt_tags": true}),
        ),
        Some("lora_not_loaded"),
        Some("prompt"),
        "a prompt tag naming no loaded adapter",
    );

    // Nothing half-loaded, and the server still serves.
    let list = ok(get(&server.url("/v1/list_loras")), "list after failures");
    assert_eq!(list["data"], json!([]));
    assert_eq!(get(&server.url("/healthz")).status, 200);
    let base = image(&server, json!({}));
    ok(
        set(json!({"lora_nickname": "a", "lora_path": "sd_a.safetensors"})),
        "a good file after the bad ones",
    );
    assert!(max_diff(&base, &image(&server, json!({}))) > 8);
    // Prompt tags name loaded adapters; a tag sets the strength of one in the stack.
    let tagged = image(
        &server,
        json!({"prompt": "a red fox <lora:a:0.8>", "lora_prompt_tags": true}),
    );
    assert_eq!(
        max_diff(&tagged, &image(&server, json!({"loras": "a:0.8"}))),
        0
    );
}

#[test]
fn without_lora_dir_the_endpoints_are_refused_and_preloads_apply() {
    let server = start(&["--lora", "a=models/lora/sd_a.safetensors:0.8"]);
    for (endpoint, get_it) in [
        ("set_lora", false),
        ("merge_lora_weights", false),
        ("unmerge_lora_weights", false),
        ("list_loras", true),
    ] {
        let reply = if get_it {
            get(&server.url(&format!("/v1/{endpoint}")))
        } else {
            call(
                &server,
                endpoint,
                json!({"lora_nickname": "b", "lora_path": "sd_b.safetensors"}),
            )
        };
        let message = refused(&reply, Some("lora_dir_not_set"), None, endpoint);
        assert!(message.contains("--lora-dir DIR"), "{endpoint}: {message}");
    }
    let preloaded = image(&server, json!({}));
    assert!(contains(&preloaded, "LoRA: \"a:0.8\""));
    let base = image(&server, json!({"loras": []}));
    assert!(max_diff(&preloaded, &base) > 8);

    // The pixels `dg generate --lora` makes.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cli.png");
    let run = common::dg(&[
        "generate",
        "--model",
        path(&common::model_dir("tiny-sd")),
        "--prompt",
        "a red fox",
        "--seed",
        "7",
        "--steps",
        "3",
        "--lora",
        path(&common::repo().join("models/lora/sd_a.safetensors:0.8")),
        "-q",
        "-o",
        path(&out),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(max_diff(&std::fs::read(&out).unwrap(), &preloaded), 0);
}

#[test]
fn lora_flags_that_cannot_work_stop_the_server_at_start() {
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
        cmd.arg("serve")
            .args(["--port", "0"])
            .args(args)
            .current_dir(common::repo())
            .envs(env.iter().copied());
        if let Some(lib) = common::ort_library() {
            cmd.env("DG_ORT_DYLIB_PATH", lib);
        }
        let out = cmd.output().expect("dg serve runs");
        assert!(!out.status.success(), "dg serve {args:?} should not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = serve(
        &["--model", "models/tiny-sd", "--lora-dir", "no/such/dir"],
        &[],
    );
    assert!(stderr.contains("--lora-dir"), "{stderr}");
    let stderr = serve(
        &[
            "--model",
            "models/tiny-sd",
            "--lora",
            "a=models/lora/sdxl_a.safetensors",
        ],
        &[],
    );
    assert!(stderr.contains("made for a different model"), "{stderr}");
    let stderr = serve(
        &[
            "--model",
            "models/tiny-sd",
            "--lora",
            "models/lora/sd_a.safetensors",
        ],
        &[],
    );
    assert!(stderr.contains("is not NAME=FILE[:STRENGTH]"), "{stderr}");
    let remote = [
        "--backend",
        "openai",
        "--endpoint",
        "http://127.0.0.1:9/v1",
        "--lora-dir",
        "models/lora",
    ];
    let stderr = serve(&remote, &[("DG_OPENAI_API_KEY", "sk-unused")]);
    assert!(
        stderr.contains("--lora-dir: the openai backend runs no LoRA adapters"),
        "{stderr}"
    );
}

#[test]
fn a_remote_backend_refuses_loras_with_400() {
    let server = Server::start(
        &["--backend", "openai", "--endpoint", "http://127.0.0.1:9/v1"],
        &[("DG_OPENAI_API_KEY", "sk-unused")],
    );
    let message = refused(
        &get(&server.url("/v1/list_loras")),
        Some("lora_unsupported"),
        None,
        "list_loras on openai",
    );
    assert!(
        message.contains("the openai backend runs no LoRA adapters"),
        "{message}"
    );
    refused(
        &call(
            &server,
            "set_lora",
            json!({"lora_nickname": "a", "lora_path": "a.safetensors"}),
        ),
        Some("lora_unsupported"),
        None,
        "set_lora on openai",
    );
    refused(
        &generation(&server, json!({"loras": "a:0.8"})),
        Some("lora_unsupported"),
        Some("loras"),
        "a request with loras on openai",
    );
}
