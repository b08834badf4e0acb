//! End-to-end parity with diffusers' PyTorch StableDiffusionPipeline: same seed, same graphs, every
//! scheduler. Goldens come from models/make_tiny.py (final latents .npy + the PNG diffusers saved).
mod common;

use std::path::PathBuf;

use diffgentor::{npy, Request};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    common::repo().join("tests/golden/pipelines")
}

fn cases() -> Vec<Value> {
    common::manifest_cases(&golden_dir().join("manifest.json"))
}

fn request_for(case: &Value) -> Request {
    let mut request = common::golden_request(case);
    if let Some(file) = case["latents_in"].as_str() {
        request.latents = Some(npy::read_f32(&golden_dir().join(file)).unwrap());
    }
    request
}

#[test]
fn every_golden_case_matches_diffusers() {
    let cases = cases();
    assert!(
        cases.len() >= 10,
        "expected a case per scheduler and the extra cases"
    );
    let mut failures = Vec::new();
    let mut pipelines = std::collections::HashMap::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let pipeline = pipelines
            .entry(model.clone())
            .or_insert_with(|| common::pipeline(&model));
        let output = match pipeline.generate(&request_for(case)) {
            Ok(output) => output,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let expected =
            npy::read_f32(&golden_dir().join(case["latents"].as_str().unwrap())).unwrap();
        let pngs: Vec<PathBuf> = case["png"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| golden_dir().join(f.as_str().unwrap()))
            .collect();
        let parity = common::Parity::of(&output.latents, &expected, &output.images, &pngs);
        println!("{name}: {parity}");
        if !parity.passes() {
            failures.push(format!("{name}: {parity}"));
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
