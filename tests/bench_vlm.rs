//! `dg-bench vlm` on the tiny Qwen2.5-VL packages: the report's fields and the tokens it measured
//! (the goldens' greedy ids). Timings are only checked to be present, never compared (DESIGN.md §8).
mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn dg_bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg-bench"));
    cmd.args(args).current_dir(common::repo());
    if let Some(lib) = common::ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd.output().expect("dg-bench runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn golden_case(name: &str) -> Value {
    let path = common::repo().join("models/vlm-goldens.json");
    let goldens: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    goldens["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no golden case {name}"))
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an id list: {value}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {report}"))
}

#[test]
fn vlm_reports_what_it_measured() {
    let case = golden_case("image_96x64");
    let expected = ids(&case["expected_ids"]);
    let prompt_ids = ids(&case["input_ids"]);
    for package in ["tiny-qwen2.5-vl", "tiny-qwen2.5-vl-builder"] {
        let model = format!("models/{package}");
        let output = dg_bench(&[
            "vlm",
            "--model",
            &model,
            "--image",
            "models/vlm-images/shapes_96x64.png",
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json",
        ]);
        assert!(
            output.status.success(),
            "{package}: {}",
            text(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{package}: stdout is not JSON ({e}): {}",
                text(&output.stdout)
            )
        });
        assert_eq!(report["settings"]["layout"], "onnxruntime-genai");
        assert_eq!(report["settings"]["intra_threads"], 1);
        assert_eq!(report["settings"]["sampling"], "greedy");
        assert_eq!(ids(&report["prompt_ids"]), prompt_ids, "{package}");
        assert_eq!(report["prompt_tokens"], prompt_ids.len());
        assert_eq!(ids(&report["token_ids"]), expected[..6], "{package}");
        assert_eq!(report["same_tokens_every_run"], true);
        let runs = report["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "measured runs only, not the warm-up");
        for run in runs {
            assert_eq!(run["new_tokens"], 6);
            assert_eq!(run["finish_reason"], "length");
            for key in [
                "ttft_ms",
                "preprocess_ms",
                "vision_ms",
                "prefill_ms",
                "decode_ms",
                "tokens_per_second",
                "ms_per_token",
                "cpu_ms_per_token",
                "total_ms",
            ] {
                assert!(run[key].is_f64(), "{package}: run has no {key}: {run}");
            }
            assert!(run["inter_token_ms"]["p50"].is_f64());
        }
        assert_eq!(number(&report, "/median/new_tokens"), 6.0);
        for key in ["ttft_ms", "tokens_per_second", "ms_per_token", "total_ms"] {
            number(&report, &format!("/median/{key}"));
        }
        assert!(number(&report, "/peak_rss_mb") > 0.0);
        number(&report, "/load_ms");
    }
}

#[test]
fn vlm_table_and_refusals() {
    let output = dg_bench(&[
        "vlm",
        "--model",
        "models/tiny-qwen2.5-vl",
        "--max-new-tokens",
        "2",
        "--runs",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    for row in [
        "first token",
        "decode",
        "peak rss",
        "prompt tokens",
        "no image",
    ] {
        assert!(table.contains(row), "no `{row}` in\n{table}");
    }

    let output = dg_bench(&["vlm", "--model", "models/tiny-qwen2.5-vl", "--runs", "0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("--runs"),
        "{}",
        text(&output.stderr)
    );

    let output = dg_bench(&["vlm", "--model", "models/tiny-sd"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));

    // Without --model the local benchmark asks for it (it used to name the backend instead).
    let output = dg_bench(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("--model DIR is required"),
        "{}",
        text(&output.stderr)
    );

    // The image-generation benchmark stays the command without a subcommand.
    let output = dg_bench(&["--help"]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    assert!(help.contains("vlm") && help.contains("--steps"), "{help}");
}
