//! LoRA adapters from the `dg` command line: `--lora FILE[:STRENGTH]` on `dg generate` and
//! `dg edit`, prompt tags, the errors of bad files and backends, and a batch's `loras` column.
//! Everything runs the `dg` binary on models/tiny-sd with 3 steps.
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use diffgentor::Image;
use serde_json::Value;

fn dg_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
    cmd.args(args).current_dir(common::repo());
    for var in ["RANK", "WORLD_SIZE", "LOCAL_RANK"] {
        cmd.env_remove(var);
    }
    if let Some(lib) = common::ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd
}

fn dg(args: &[&str]) -> Output {
    dg_command(args).output().expect("dg runs")
}

fn ok(args: &[&str]) -> (String, String) {
    let out = dg(args);
    let (stdout, stderr) = texts(&out);
    assert!(
        out.status.success(),
        "dg {args:?} failed: {stderr}\n{stdout}"
    );
    (stdout, stderr)
}

/// The stderr of a run that must fail.
fn failed(args: &[&str]) -> String {
    let out = dg(args);
    let (stdout, stderr) = texts(&out);
    assert!(
        !out.status.success(),
        "dg {args:?} should have failed: {stdout}"
    );
    stderr
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lora(file: &str) -> String {
    format!("models/lora/{file}")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `dg generate` on tiny-sd, 3 steps, seed 7, prompt `a red fox` unless `extra` has one, into
/// `out`.
fn generate(out: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "generate",
        "--model",
        "models/tiny-sd",
        "--steps",
        "3",
        "--seed",
        "7",
        "-o",
        path(out),
    ];
    if !extra.contains(&"--prompt") {
        args.extend(["--prompt", "a red fox"]);
    }
    args.extend(extra);
    ok(&args)
}

fn pixels(path: &Path) -> Image {
    Image::load_png(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest difference of any channel of two images of one size.
fn max_diff(a: &Image, b: &Image) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.pixels
        .iter()
        .zip(&b.pixels)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn parameters(path: &Path) -> String {
    common::png::text_chunks(path)
        .into_iter()
        .find(|(keyword, _)| keyword == "parameters")
        .map(|(_, text)| text)
        .unwrap_or_default()
}

#[test]
fn a_lora_changes_the_image_and_its_kohya_twin_gives_the_same_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |name: &str| tmp.path().join(name);
    generate(&at("base.png"), &["-q"]);
    let (stdout, stderr) = generate(&at("a.png"), &["--lora", &lora("sd_a.safetensors:0.8")]);
    assert!(stdout.contains("wrote"), "{stdout}");
    assert!(
        stderr.contains("lora sd_a (0.8): models/lora/sd_a.safetensors, diffusers")
            && stderr.contains("unet 40 layers"),
        "what loaded is said on stderr: {stderr}"
    );
    generate(
        &at("kohya.png"),
        &["--lora", &lora("sd_a_kohya.safetensors:0.8"), "-q"],
    );
    let (base, a, kohya) = (
        pixels(&at("base.png")),
        pixels(&at("a.png")),
        pixels(&at("kohya.png")),
    );
    let changed = max_diff(&base, &a);
    assert!(
        changed > 8,
        "the LoRA must change the image (max diff {changed})"
    );
    // Same weights in another naming: the same deltas, added in the same order.
    assert_eq!(max_diff(&a, &kohya), 0, "sd_a and its kohya twin");
    let text = parameters(&at("a.png"));
    assert!(
        text.contains(", LoRA: \"sd_a:0.8\", Version: diffgentor"),
        "the stack is in the parameters text: {text}"
    );
    assert!(
        !parameters(&at("base.png")).contains("LoRA"),
        "no stack, no mention"
    );

    // The strength after the last `:`; 0 is the base image, and two stems that clash get `_2`.
    generate(
        &at("zero.png"),
        &["--lora", &lora("sd_a.safetensors:0"), "-q"],
    );
    assert_eq!(max_diff(&base, &pixels(&at("zero.png"))), 0, "strength 0");
    let copy = at("sd_a.safetensors");
    std::fs::copy(common::repo().join(lora("sd_a.safetensors")), &copy).unwrap();
    let copy_spec = format!("{}:0.4", copy.display());
    generate(
        &at("halves.png"),
        &[
            "--lora",
            &lora("sd_a.safetensors:0.4"),
            "--lora",
            &copy_spec,
            "-q",
        ],
    );
    let text = parameters(&at("halves.png"));
    assert!(text.contains("LoRA: \"sd_a:0.4;sd_a_2:0.4\""), "{text}");
    let halves = max_diff(&a, &pixels(&at("halves.png")));
    assert!(
        halves <= 2,
        "0.4 + 0.4 of one LoRA is 0.8 of it (max diff {halves})"
    );
}

#[test]
fn prompt_tags_pick_loaded_adapters_and_their_strength() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |name: &str| tmp.path().join(name);
    generate(
        &at("flag.png"),
        &["--lora", &lora("sd_a.safetensors:0.8"), "-q"],
    );
    // Loaded at strength 0, applied at 0.8 by the tag (the tag's strength wins).
    generate(
        &at("tag.png"),
        &[
            "--lora",
            &lora("sd_a.safetensors:0"),
            "--lora-prompt-tags",
            "--prompt",
            "a red fox <lora:sd_a:0.8>",
            "-q",
        ],
    );
    assert_eq!(
        max_diff(&pixels(&at("flag.png")), &pixels(&at("tag.png"))),
        0
    );
    let text = parameters(&at("tag.png"));
    assert!(text.starts_with("a red fox <lora:sd_a:0.8>\n"), "{text}");

    let stderr = failed(&[
        "generate",
        "--model",
        "models/tiny-sd",
        "--prompt",
        "a red fox <lora:nobody:0.5>",
        "--lora-prompt-tags",
        "--steps",
        "3",
        "-o",
        path(&at("x.png")),
    ]);
    assert!(
        stderr.contains("no LoRA named `nobody` is loaded"),
        "{stderr}"
    );
}

#[test]
fn dg_edit_takes_loras_too() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |name: &str| tmp.path().join(name);
    let edit = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "edit",
            "--model",
            "models/tiny-sd",
            "--image",
            "tests/golden/edit/image_64x64.png",
            "--prompt",
            "a snowy fox",
            "--strength",
            "0.8",
            "--steps",
            "3",
            "--seed",
            "7",
            "-q",
            "-o",
            path(out),
        ];
        args.extend(extra);
        ok(&args);
    };
    edit(&at("base.png"), &[]);
    edit(&at("a.png"), &["--lora", &lora("sd_a.safetensors")]);
    let changed = max_diff(&pixels(&at("base.png")), &pixels(&at("a.png")));
    assert!(changed > 8, "max diff {changed}");
    assert!(parameters(&at("a.png")).contains("LoRA: \"sd_a:1\""));
}

#[test]
fn bad_lora_flags_fail_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    let run = |spec: &str| {
        failed(&[
            "generate",
            "--model",
            "models/tiny-sd",
            "--prompt",
            "a fox",
            "--steps",
            "3",
            "--lora",
            spec,
            "-o",
            path(&out),
        ])
    };
    let stderr = run("models/lora/missing.safetensors:0.8");
    assert!(
        stderr.contains("--lora models/lora/missing.safetensors: no such file"),
        "{stderr}"
    );
    let stderr = run(path(&junk));
    assert!(
        stderr.contains("junk.safetensors: not a valid safetensors file"),
        "{stderr}"
    );
    let stderr = run(&lora("sdxl_a.safetensors"));
    assert!(
        stderr.contains("sdxl_a.safetensors: the LoRA was made for a different model"),
        "{stderr}"
    );
    let stderr = run(&lora("sd_a.safetensors:inf"));
    assert!(stderr.contains("finite strength"), "{stderr}");
    assert!(!out.exists(), "nothing written");

    // A remote backend runs no adapters: refused before any request is sent.
    let out = dg_command(&[
        "generate",
        "--backend",
        "openai",
        "--endpoint",
        "http://127.0.0.1:9/v1",
        "--prompt",
        "a fox",
        "--lora",
        &lora("sd_a.safetensors"),
        "-o",
        path(&tmp.path().join("remote.png")),
    ])
    .env("DG_OPENAI_API_KEY", "sk-unused")
    .output()
    .expect("dg runs");
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--lora: the openai backend runs no LoRA adapters"),
        "{stderr}"
    );
}

/// The parseable lines of a manifest, by row index (the last line of each row).
fn manifest(path: &Path) -> BTreeMap<u64, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["index"].as_u64()?, v)))
        .collect()
}

#[test]
fn a_batchs_loras_column_loads_each_file_once_and_fails_only_its_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("loras")).unwrap();
    std::fs::copy(
        common::repo().join(lora("sd_a.safetensors")),
        data.join("loras/sd_a.safetensors"),
    )
    .unwrap();
    std::fs::write(
        data.join("loras/bad.safetensors"),
        b"{\"not\": \"tensors\"}",
    )
    .unwrap();
    let table = data.join("rows.csv");
    std::fs::write(
        &table,
        "prompt,loras\n\
         a red fox,loras/sd_a.safetensors:0.8\n\
         a red fox,loras/bad.safetensors:0.5\n\
         a red fox,sd_b:0.5;loras/sd_a.safetensors:0.3\n\
         a red fox,nobody:1\n\
         a red fox,\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let args = [
        "t2i",
        "--model",
        "models/tiny-sd",
        "--input",
        path(&table),
        "--output-dir",
        path(&out),
        "--steps",
        "3",
        "--seed",
        "7",
        "--lora",
        &lora("sd_b.safetensors:0.7"),
    ];
    let run = dg(&args);
    let (stdout, stderr) = texts(&run);
    assert_eq!(run.status.code(), Some(1), "rows failed: {stderr}");
    assert!(stdout.contains("batch: 3 ok, 2 failed"), "{stdout}");
    assert_eq!(
        stderr.matches("lora sd_a: ").count(),
        1,
        "the file loads once, for two rows: {stderr}"
    );

    let lines = manifest(&out.join("manifest.jsonl"));
    assert_eq!(lines.len(), 5, "every row has a line: {lines:?}");
    let row = &lines[&0];
    assert_eq!(row["status"], "ok", "{row}");
    let loras = &row["parameters"]["loras"];
    assert_eq!(loras[0]["name"], "sd_a", "{row}");
    assert_eq!(loras[0]["strength"], 0.8, "{row}");
    assert!(
        loras[0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("loras/sd_a.safetensors")),
        "{row}"
    );
    let error = lines[&1]["error"].as_str().unwrap_or_default();
    assert_eq!(lines[&1]["status"], "error");
    assert!(
        error.starts_with("column `loras`: ") && error.contains("bad.safetensors"),
        "{error}"
    );
    let row = &lines[&2];
    assert_eq!(row["status"], "ok", "{row}");
    let names: Vec<&str> = row["parameters"]["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sd_b", "sd_a"], "a --lora name and a file");
    let error = lines[&3]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no LoRA named `nobody` is loaded"),
        "{error}"
    );
    // No cell: the --lora stack.
    assert_eq!(lines[&4]["parameters"]["loras"][0]["name"], "sd_b");
    assert!(!out.join("000001.png").exists() && !out.join("000003.png").exists());

    // Row 0 is what `dg generate` makes with the same file, strength and seed (7 + 0), with the
    // same adapters loaded (each adapter's weights become graph inputs, which ONNX Runtime
    // optimizes around a little differently: a level of difference, else).
    let single = tmp.path().join("single.png");
    generate(
        &single,
        &[
            "--lora",
            &lora("sd_b.safetensors:0"),
            "--lora",
            &lora("sd_a.safetensors:0.8"),
            "-q",
        ],
    );
    assert_eq!(
        max_diff(&pixels(&single), &pixels(&out.join("000000.png"))),
        0
    );

    // A rerun skips the rows done and fails the bad ones again; the manifest merges.
    let (code, stdout) = {
        let run = dg(&args);
        (run.status.code(), texts(&run).0)
    };
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("batch: 0 ok, 2 failed, 3 already done"),
        "{stdout}"
    );
    let (stdout, _) = ok(&["manifest", "merge", path(&out)]);
    assert!(stdout.contains("merged 5 rows (2 failed)"), "{stdout}");
}

#[test]
fn a_batch_on_a_remote_backend_refuses_only_the_rows_with_loras() {
    let tmp = tempfile::tempdir().unwrap();
    let table = tmp.path().join("rows.jsonl");
    std::fs::write(&table, "{\"prompt\": \"a fox\", \"loras\": \"a:0.5\"}\n").unwrap();
    let out = tmp.path().join("out");
    let run = dg_command(&[
        "t2i",
        "--backend",
        "openai",
        "--endpoint",
        "http://127.0.0.1:9/v1",
        "--input",
        path(&table),
        "--output-dir",
        path(&out),
        "-q",
    ])
    .env("DG_OPENAI_API_KEY", "sk-unused")
    .output()
    .expect("dg runs");
    assert_eq!(run.status.code(), Some(1));
    let lines = manifest(&out.join("manifest.jsonl"));
    let error = lines[&0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the openai backend runs no LoRA adapters"),
        "{error}"
    );
}
