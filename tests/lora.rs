//! LoRA adapters on the tiny packages: parity with diffusers' `load_lora_weights` / `set_adapters`
//! (goldens from models/make_lora.py), naming variants, stacks, hot-swapping, concurrency and bad
//! files.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use diffgentor::pipelines::flux;
use diffgentor::{npy, ErrorCode, LoraUse, Output, Pipeline, Request};
use ndarray::{ArrayD, Ix4};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    common::repo().join("tests/golden/lora")
}

fn manifest() -> Value {
    let path = golden_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn lora(file: &str) -> PathBuf {
    common::repo().join("models/lora").join(file)
}

fn request_for(case: &Value) -> Request {
    let mut request = common::golden_request(case);
    request.max_sequence_length = case["max_sequence_length"].as_u64().map(|v| v as usize);
    request.loras = Some(
        case["loras"]
            .as_array()
            .expect("loras")
            .iter()
            .map(|l| {
                LoraUse::new(
                    l["adapter_name"].as_str().expect("adapter_name"),
                    l["strength"].as_f64().expect("strength") as f32,
                )
            })
            .collect(),
    );
    request
}

/// Loads every file a case uses under its adapter name.
fn load_case_loras(pipeline: &Pipeline, case: &Value) {
    for l in case["loras"].as_array().expect("loras") {
        let file = common::repo().join(l["file"].as_str().expect("file"));
        let name = l["adapter_name"].as_str().expect("adapter_name");
        pipeline
            .load_lora(name, &file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// Our latents in the golden's layout (FLUX goldens are packed).
fn comparable(case: &Value, output: &Output) -> ArrayD<f32> {
    if case["kind"]
        .as_str()
        .unwrap_or_default()
        .starts_with("flux")
    {
        let latents = output.latents.clone().into_dimensionality::<Ix4>().unwrap();
        flux::pack(latents.view()).into_dyn()
    } else {
        output.latents.clone()
    }
}

fn parity(case: &Value, output: &Output) -> common::Parity {
    let expected = npy::read_f32(&golden_dir().join(case["latents"].as_str().unwrap())).unwrap();
    let pngs: Vec<PathBuf> = case["png"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| golden_dir().join(f.as_str().unwrap()))
        .collect();
    common::Parity::of(&comparable(case, output), &expected, &output.images, &pngs)
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    (a - b).mapv(f32::abs).fold(0.0, |m, &v| m.max(v))
}

#[test]
fn every_golden_case_matches_diffusers() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(
        cases.len() >= 9,
        "base and LoRA cases for SD, SDXL and FLUX"
    );
    let mut pipelines: HashMap<String, Pipeline> = HashMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let pipeline = pipelines
            .entry(model.clone())
            .or_insert_with(|| common::pipeline(&model));
        load_case_loras(pipeline, case);
        match pipeline.generate(&request_for(case)) {
            Ok(output) => {
                let parity = parity(case, &output);
                println!("{name}: {parity}");
                if !parity.passes() {
                    failures.push(format!("{name}: {parity}"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// kohya, the old attn-processor naming and FLUX's fused BFL form hold the same weights as the
/// diffusers files they are twins of: same golden, and (nearly) the same output as the reference.
#[test]
fn other_namings_of_the_same_weights_give_the_same_images() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().expect("cases");
    let equivalent = manifest["equivalent"].as_object().expect("equivalent");
    let mut checked = 0;
    for (reference, twins) in equivalent {
        let case = cases
            .iter()
            .find(|c| {
                let loras = c["loras"].as_array().expect("loras");
                loras.len() == 1 && loras[0]["file"].as_str() == Some(reference)
            })
            .unwrap_or_else(|| panic!("no single-LoRA case uses {reference}"));
        let pipeline = common::pipeline(case["model"].as_str().unwrap());
        load_case_loras(&pipeline, case);
        let request = request_for(case);
        let expected = pipeline.generate(&request).expect("reference");
        for twin in twins.as_array().expect("twins") {
            let file = common::repo().join(twin.as_str().unwrap());
            let info = pipeline
                .load_lora("twin", &file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let mut twin_request = request.clone();
            let strength = request.loras.as_ref().unwrap()[0].strength;
            twin_request.loras = Some(vec![LoraUse::new("twin", strength)]);
            let output = pipeline.generate(&twin_request).expect("twin");
            let diff = max_diff(&output.latents, &expected.latents);
            let parity = parity(case, &output);
            println!(
                "{} ({}): vs reference {diff:.2e}; {parity}",
                info.name, info.format
            );
            assert!(parity.passes(), "{}: {parity}", file.display());
            assert!(
                diff < 1e-4,
                "{} differs from {reference} by {diff}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "kohya, old, te kohya, SDXL SGM and FLUX BFL twins"
    );
}

fn base_request() -> Request {
    let mut request = Request::new("a red fox in the snow");
    request.steps = 3;
    request.seed = Some(7);
    request
}

#[test]
fn unloading_and_empty_stacks_give_the_base_output_bit_for_bit() {
    let pipeline = common::pipeline("tiny-sd");
    let request = base_request();
    let base = pipeline.generate(&request).expect("base");
    pipeline
        .load_lora("a", &lora("sd_a.safetensors"))
        .expect("load");
    let after_load = pipeline.generate(&request).expect("after load");
    assert_eq!(base.images, after_load.images, "no stack feeds nothing");
    assert_eq!(base.latents, after_load.latents);
    let mut with = request.clone();
    with.loras = Some(vec![LoraUse::new("a", 1.0)]);
    let changed = pipeline.generate(&with).expect("with a");
    assert!(
        max_diff(&changed.latents, &base.latents) > 1e-2,
        "the LoRA changes the output"
    );
    pipeline
        .set_default_loras(vec![LoraUse::new("a", 1.0)])
        .expect("default");
    let default = pipeline.generate(&request).expect("default stack");
    assert_eq!(
        default.latents, changed.latents,
        "requests naming no stack get the default"
    );
    let mut none = request.clone();
    none.loras = Some(Vec::new());
    assert_eq!(
        pipeline.generate(&none).expect("none").latents,
        base.latents
    );
    pipeline.unload_lora("a").expect("unload");
    assert!(
        pipeline.default_loras().is_empty(),
        "unloading leaves the default stack"
    );
    assert!(pipeline.loras().is_empty());
    assert_eq!(
        pipeline.generate(&request).expect("unloaded").images,
        base.images
    );
    let err = pipeline.generate(&with).expect_err("unloaded adapter");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("no LoRA named `a`"), "{err}");
}

#[test]
fn prompt_tags_name_the_stack() {
    let pipeline = common::pipeline("tiny-sd");
    pipeline
        .load_lora("a", &lora("sd_a.safetensors"))
        .expect("load");
    let mut explicit = base_request();
    explicit.loras = Some(vec![LoraUse::new("a", 0.7)]);
    let mut tagged = base_request();
    tagged.prompt = "a red fox <lora:a:0.7> in the snow".into();
    tagged.lora_prompt_tags = true;
    let (a, b) = (
        pipeline.generate(&explicit).expect("explicit"),
        pipeline.generate(&tagged).expect("tagged"),
    );
    assert_eq!(a.latents, b.latents);
    // A tag naming an adapter of the stack sets its strength instead of naming it twice.
    let mut overriding = tagged.clone();
    overriding.loras = Some(vec![LoraUse::new("a", 1.0)]);
    let c = pipeline.generate(&overriding).expect("tag over stack");
    assert_eq!(a.latents, c.latents);
    // Without the flag the tag is prompt text.
    tagged.lora_prompt_tags = false;
    let literal = pipeline.generate(&tagged).expect("literal");
    assert_ne!(literal.latents, a.latents);
}

#[test]
fn concurrent_requests_with_different_stacks_match_their_sequential_runs() {
    let pipeline = common::pipeline("tiny-sd");
    pipeline
        .load_lora("a", &lora("sd_a.safetensors"))
        .expect("a");
    pipeline
        .load_lora("b", &lora("sd_b.safetensors"))
        .expect("b");
    pipeline
        .load_lora("te", &lora("sd_te.safetensors"))
        .expect("te");
    let stacks: Vec<Vec<LoraUse>> = vec![
        vec![],
        vec![LoraUse::new("a", 1.0)],
        vec![LoraUse::new("b", 0.8)],
        vec![LoraUse::new("te", 1.0)],
        vec![LoraUse::new("a", 0.7), LoraUse::new("b", -0.4)],
        vec![LoraUse::new("a", -0.5), LoraUse::new("te", 0.5)],
        vec![
            LoraUse::new("b", 0.3),
            LoraUse::new("te", 1.0),
            LoraUse::new("a", 0.2),
        ],
        vec![LoraUse::new("a", 2.0)],
    ];
    let request_with = |stack: &Vec<LoraUse>| Request {
        loras: Some(stack.clone()),
        ..base_request()
    };
    let sequential: Vec<_> = stacks
        .iter()
        .map(|s| {
            pipeline
                .generate(&request_with(s))
                .expect("sequential")
                .images
        })
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = stacks
            .iter()
            .map(|s| {
                let pipeline = &pipeline;
                let request = request_with(s);
                scope.spawn(move || pipeline.generate(&request).expect("concurrent").images)
            })
            .collect();
        for (i, (handle, expected)) in handles.into_iter().zip(&sequential).enumerate() {
            let images = handle.join().expect("thread");
            assert_eq!(&images, expected, "stack {i} differs when run concurrently");
        }
    });
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

/// A safetensors file holding one float32 tensor per (key, shape).
fn safetensors(tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (key, shape) in tensors {
        let len = shape.iter().product::<usize>() * 4;
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.resize(bytes.len() + offset, 0);
    bytes
}

#[test]
fn bad_files_are_clear_errors_and_the_pipeline_keeps_working() {
    let pipeline = common::pipeline("tiny-sd");
    let request = base_request();
    let base = pipeline.generate(&request).expect("base");
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read(lora("sd_a.safetensors")).expect("sd_a");
    let png = std::fs::read(golden_dir().join("sd_a.png")).expect("png");
    let cases: Vec<(&str, PathBuf, ErrorCode, &str)> = vec![
        (
            "missing",
            dir.path().join("nope.safetensors"),
            ErrorCode::Io,
            "nope.safetensors",
        ),
        (
            "truncated",
            write(dir.path(), "cut.safetensors", &good[..good.len() / 2]),
            ErrorCode::InvalidArg,
            "cut.safetensors",
        ),
        (
            "not safetensors",
            write(dir.path(), "image.safetensors", &png),
            ErrorCode::InvalidArg,
            "image.safetensors",
        ),
        (
            "another architecture",
            lora("sdxl_a.safetensors"),
            ErrorCode::InvalidArg,
            "different model",
        ),
        (
            "unknown layout",
            write(
                dir.path(),
                "weird.safetensors",
                &safetensors(&[("model.layers.0.weight", &[2, 2])]),
            ),
            ErrorCode::Unsupported,
            "model.layers.0.weight",
        ),
    ];
    for (what, path, code, needle) in cases {
        let err = pipeline.load_lora("x", &path).expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
        assert!(
            err.to_string().contains(needle),
            "{what}: `{err}` lacks `{needle}`"
        );
    }
    assert!(
        pipeline.loras().is_empty(),
        "failed loads leave nothing behind"
    );
    let err = pipeline
        .load_lora("bad name!", &lora("sd_a.safetensors"))
        .expect_err("name");
    assert_eq!(err.code(), ErrorCode::InvalidArg);

    pipeline
        .load_lora("a", &lora("sd_a.safetensors"))
        .expect("good file");
    for (stack, needle) in [
        (vec![LoraUse::new("a", f32::NAN)], "finite"),
        (
            vec![LoraUse::new("a", 1.0), LoraUse::new("a", 0.5)],
            "twice",
        ),
        (
            (0..11)
                .map(|i| LoraUse::new(format!("l{i}"), 1.0))
                .collect(),
            "at most 10",
        ),
        (vec![LoraUse::new("ghost", 1.0)], "loaded: a"),
    ] {
        let err = pipeline
            .generate(&Request {
                loras: Some(stack),
                ..request.clone()
            })
            .expect_err(needle);
        assert_eq!(err.code(), ErrorCode::InvalidArg, "{err}");
        assert!(err.to_string().contains(needle), "`{err}` lacks `{needle}`");
    }
    assert_eq!(
        pipeline.generate(&request).expect("still works").images,
        base.images
    );
}
