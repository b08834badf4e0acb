//! The VLM runtime against transformers: greedy token ids equal `generate(do_sample=False)` on the
//! same tiny Qwen2.5-VL in three export layouts (models/make_vlm.py), prompts equal the processor's.
mod common;

use std::sync::Arc;

use diffgentor::vlm::{FinishReason, SamplingParams, Vlm, VlmRequest};
use diffgentor::{ErrorCode, Image};
use serde_json::Value;

const LAYOUTS: [(&str, &str); 3] = [
    ("tiny-qwen2.5-vl", "onnxruntime-genai"),
    ("tiny-qwen2.5-vl-builder", "onnxruntime-genai"),
    ("tiny-qwen2.5-vl-tfjs", "transformers.js"),
];

fn goldens() -> Value {
    let path = common::repo().join("models/vlm-goldens.json");
    let text = std::fs::read_to_string(&path).expect("models/vlm-goldens.json");
    serde_json::from_str(&text).expect("goldens parse")
}

fn load(name: &str) -> Vlm {
    Vlm::load(common::runtime(), &common::model_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn image(relative: &str) -> Image {
    Image::load_png(&common::repo().join("models").join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("id list")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect()
}

fn request(case: &Value) -> VlmRequest {
    let images = case["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|p| image(p.as_str().expect("path")))
        .collect();
    let mut request = VlmRequest::new(case["prompt"].as_str().expect("prompt"), images);
    request.max_new_tokens = case["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
    request
}

#[test]
fn greedy_tokens_equal_transformers_in_every_layout() {
    let goldens = goldens();
    let cases = goldens["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5, "three image sizes, text only, two images");
    for (package, layout) in LAYOUTS {
        let vlm = load(package);
        assert_eq!(vlm.layout(), layout);
        for case in cases {
            let name = case["name"].as_str().expect("name");
            let request = request(case);
            let prompt = vlm.prompt_ids(&request).expect("prompt ids");
            assert_eq!(
                prompt,
                ids(&case["input_ids"]),
                "{package} {name}: prompt ids"
            );
            let output = vlm
                .generate(&request)
                .unwrap_or_else(|e| panic!("{package} {name}: {e}"));
            assert_eq!(
                output.token_ids,
                ids(&case["expected_ids"]),
                "{package} {name}: new tokens"
            );
            assert_eq!(output.prompt_tokens, prompt.len());
            let expected_reason = if case["stopped_at_eos"].as_bool() == Some(true) {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            assert_eq!(output.finish_reason, expected_reason, "{package} {name}");
            assert_eq!(
                output.text,
                case["expected_text"].as_str().expect("text"),
                "{package} {name}: text"
            );
        }
    }
}

#[test]
fn streamed_text_adds_up_to_the_answer_and_a_false_return_cancels() {
    let vlm = load("tiny-qwen2.5-vl");
    let goldens = goldens();
    // Every case: one of them ends at an end token right after a token cut mid-character.
    for case in goldens["cases"].as_array().expect("cases") {
        let request = request(case);
        let mut streamed = String::new();
        let mut ids_seen = Vec::new();
        let output = vlm
            .generate_streaming(&request, &mut |event| {
                streamed.push_str(event.text);
                ids_seen.push(event.token_id);
                assert_eq!(event.index, ids_seen.len());
                true
            })
            .expect("generate");
        assert_eq!(ids_seen, output.token_ids, "{}", case["name"]);
        assert_eq!(streamed, output.text, "{}", case["name"]);
    }

    let request = request(&goldens["cases"][0]);
    let mut calls = 0;
    let err = vlm
        .generate_streaming(&request, &mut |_| {
            calls += 1;
            calls < 3
        })
        .expect_err("cancelled by the callback");
    assert_eq!(err.code(), ErrorCode::Cancelled);
    assert_eq!(calls, 3);
}

#[test]
fn seeded_sampling_repeats_and_differs_from_greedy() {
    let vlm = load("tiny-qwen2.5-vl");
    let case = &goldens()["cases"][0];
    let mut request = request(case);
    request.sampling = SamplingParams {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 7,
    };
    let a = vlm.generate(&request).expect("sampled");
    let b = vlm.generate(&request).expect("sampled again");
    assert_eq!(a.token_ids, b.token_ids, "same seed, same tokens");
    assert_ne!(
        a.token_ids,
        ids(&case["expected_ids"]),
        "sampling is not greedy"
    );
    request.sampling.seed = 8;
    let c = vlm.generate(&request).expect("other seed");
    assert_ne!(a.token_ids, c.token_ids, "another seed, other tokens");
}

#[test]
fn threads_share_one_model_and_each_gets_its_own_answer() {
    let vlm = Arc::new(load("tiny-qwen2.5-vl-builder"));
    let goldens = goldens();
    let cases: Vec<Value> = goldens["cases"].as_array().expect("cases").clone();
    let handles: Vec<_> = cases
        .into_iter()
        .map(|case| {
            let vlm = Arc::clone(&vlm);
            std::thread::spawn(move || {
                let output = vlm.generate(&request(&case)).expect("generate");
                assert_eq!(
                    output.token_ids,
                    ids(&case["expected_ids"]),
                    "{}",
                    case["name"]
                );
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread");
    }
}

#[test]
fn stop_strings_and_length_end_generation() {
    let vlm = load("tiny-qwen2.5-vl");
    let case = &goldens()["cases"][4];
    assert_eq!(case["name"], "text_only");
    let full = case["expected_text"].as_str().expect("text");
    // A stop string taken from the middle of the known answer: the text ends right before it.
    let cut = full
        .char_indices()
        .nth(6)
        .map(|(i, _)| i)
        .expect("long enough");
    let stop: String = full[cut..].chars().take(2).collect();
    let mut request = request(case);
    request.stop = vec![stop.clone()];
    let output = vlm.generate(&request).expect("generate");
    assert_eq!(output.finish_reason, FinishReason::Stop);
    assert_eq!(
        output.text,
        &full[..full.find(&stop).expect("stop in text")]
    );

    let mut request = self::request(case);
    request.max_new_tokens = 3;
    let output = vlm.generate(&request).expect("generate");
    assert_eq!(output.token_ids, ids(&case["expected_ids"])[..3]);
    assert_eq!(output.finish_reason, FinishReason::Length);
}

#[test]
fn bad_requests_get_clear_errors() {
    let vlm = load("tiny-qwen2.5-vl");
    let case = &goldens()["cases"][0];

    let mut zero = request(case);
    zero.max_new_tokens = 0;
    let err = vlm.generate(&zero).expect_err("max_new_tokens 0");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("max_new_tokens"), "{err}");

    let tiny = VlmRequest::new("what is this?", vec![image("vlm-images/tiny_10x10.png")]);
    let err = vlm.generate(&tiny).expect_err("smaller than one patch");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("14"), "{err}");

    let long = VlmRequest::new("red ".repeat(3000), vec![]);
    let err = vlm.generate(&long).expect_err("longer than the context");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("context"), "{err}");

    let mut nan = request(case);
    nan.sampling.temperature = f32::NAN;
    let err = vlm.generate(&nan).expect_err("NaN temperature");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("temperature"), "{err}");

    // The model still answers after every refusal.
    assert!(vlm.generate(&request(case)).is_ok());
}

#[test]
fn broken_packages_are_refused_with_what_was_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = common::copy_model("tiny-qwen2.5-vl", dir.path());

    std::fs::remove_file(copy.join("tokenizer.json")).expect("remove");
    let err = Vlm::load(common::runtime(), &copy).expect_err("no tokenizer");
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let copy = common::copy_model("tiny-qwen2.5-vl", &dir.path().join("b"));
    std::fs::write(copy.join("genai_config.json"), b"{ not json").expect("write");
    let err = Vlm::load(common::runtime(), &copy).expect_err("bad config");
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(err.to_string().contains("genai_config.json"), "{err}");

    let copy = common::copy_model("tiny-qwen2.5-vl", &dir.path().join("c"));
    std::fs::remove_file(copy.join("genai_config.json")).expect("remove");
    let err = Vlm::load(common::runtime(), &copy).expect_err("no layout");
    assert_eq!(err.code(), ErrorCode::Model);
    let text = err.to_string();
    assert!(text.contains("decoder/model.onnx"), "{text}");
    assert!(
        text.contains("inputs_embeds"),
        "the I/O found is listed: {text}"
    );

    // A decoder without cache inputs: the embedding graph in the decoder's place.
    let copy = common::copy_model("tiny-qwen2.5-vl-tfjs", &dir.path().join("d"));
    std::fs::copy(
        copy.join("onnx/embed_tokens.onnx"),
        copy.join("onnx/decoder_model_merged.onnx"),
    )
    .expect("copy");
    let err = Vlm::load(common::runtime(), &copy).expect_err("no cache");
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string().contains("inputs_embeds") || err.to_string().contains("cache"),
        "{err}"
    );

    let copy = common::copy_model("tiny-qwen2.5-vl", &dir.path().join("f"));
    std::fs::remove_file(copy.join("preprocessor_config.json")).expect("remove");
    let err = Vlm::load(common::runtime(), &copy).expect_err("no preprocessor config");
    assert_eq!(err.code(), ErrorCode::Model);
    assert!(
        err.to_string().contains("preprocessor_config.json"),
        "{err}"
    );

    let copy = common::copy_model("tiny-qwen2.5-vl", &dir.path().join("e"));
    std::fs::write(copy.join("decoder/model.onnx"), b"not a graph").expect("write");
    let err = Vlm::load(common::runtime(), &copy).expect_err("corrupt graph");
    assert!(
        matches!(err.code(), ErrorCode::Model | ErrorCode::Backend),
        "{err}"
    );
}

#[test]
fn a_corrupt_image_is_refused_by_the_decoder_not_the_model() {
    let err = Image::decode(b"\x89PNG\r\n\x1a\n garbage").expect_err("corrupt");
    assert_eq!(err.code(), ErrorCode::InvalidArg, "{err}");
}

#[test]
fn the_encoder_decoder_captioner_equals_transformers() {
    let path = common::repo().join("models/vlm-captioner-goldens.json");
    let goldens: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("parse");
    let vlm = load("tiny-vit-gpt2");
    assert_eq!(vlm.layout(), "optimum vision-encoder-decoder");
    assert!(!vlm.is_chat());
    for case in goldens["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let mut request =
            VlmRequest::caption(vec![image(case["image"].as_str().expect("image"))], None);
        request.max_new_tokens = case["max_new_tokens"].as_u64().expect("max") as usize;
        let output = vlm
            .generate(&request)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(output.token_ids, ids(&case["expected_ids"]), "{name}");
        assert_eq!(
            output.text,
            case["expected_text"].as_str().expect("text"),
            "{name}"
        );
    }
    let two = VlmRequest::caption(
        vec![
            image("vlm-images/square_80x80.png"),
            image("vlm-images/square_80x80.png"),
        ],
        None,
    );
    let err = vlm.generate(&two).expect_err("one image only");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("exactly one image"), "{err}");
}
