//! The VLM part of the C ABI (`dg_vlm_*`) called the way C calls it: raw pointers, NUL-terminated
//! strings, out-params, a token callback. Answers equal the transformers goldens
//! (models/vlm-goldens.json) and the Rust API's for the same request.
mod common;

use std::ffi::{c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use common::capi::*;
use diffgentor::capi::*;
use diffgentor::vlm::enhance::{clean_reply, EnhanceStyle};
use diffgentor::vlm::{Vlm, VlmRequest};
use diffgentor::{Image, Runtime, RuntimeOptions};
use serde_json::Value;

const MODEL: &str = "tiny-qwen2.5-vl";

unsafe fn load(name: &str) -> *mut dg_vlm_t {
    let dir = cstr(common::model_dir(name).to_str().unwrap());
    let mut vlm = sentinel();
    ok(dg_vlm_load(runtime(), dir.as_ptr(), &mut vlm));
    assert_ne!(vlm, sentinel());
    vlm
}

/// The model most tests share (thread-safe, as one loaded model serves many threads).
fn vlm() -> *const dg_vlm_t {
    static VLM: OnceLock<Shared<dg_vlm_t>> = OnceLock::new();
    VLM.get_or_init(|| Shared(unsafe { load(MODEL) })).0
}

fn goldens() -> Value {
    let text = std::fs::read_to_string(common::repo().join("models/vlm-goldens.json"))
        .expect("models/vlm-goldens.json");
    serde_json::from_str(&text).expect("goldens parse")
}

fn case(name: &str) -> Value {
    goldens()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no golden case {name}"))
        .clone()
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn image_path(relative: &str) -> String {
    common::repo()
        .join("models")
        .join(relative)
        .to_str()
        .unwrap()
        .to_string()
}

/// How a test hands an image to the params.
#[derive(Clone, Copy, Debug)]
enum Via {
    File,
    Encoded,
    Pixels,
}

unsafe fn add_image(p: *mut dg_vlm_params_t, relative: &str, via: Via) {
    let path = image_path(relative);
    match via {
        Via::File => ok(dg_vlm_params_add_image_file(
            p,
            ptr::null(),
            cstr(&path).as_ptr(),
        )),
        Via::Encoded => {
            let bytes = std::fs::read(&path).unwrap();
            ok(dg_vlm_params_add_image_encoded(
                p,
                c"user".as_ptr(),
                bytes.as_ptr(),
                bytes.len(),
            ))
        }
        Via::Pixels => {
            let image = Image::load_png(path.as_ref()).unwrap();
            ok(dg_vlm_params_add_image(
                p,
                c"user".as_ptr(),
                image.pixels.as_ptr(),
                image.width,
                image.height,
                3,
                3 * image.width as usize,
            ))
        }
    }
}

/// A golden case as C params: its images, then its prompt, max_new_tokens as a string key.
unsafe fn case_params(case: &Value, via: Via) -> *mut dg_vlm_params_t {
    let mut p = sentinel();
    ok(dg_vlm_params_new(&mut p));
    for image in case["images"].as_array().unwrap() {
        add_image(p, image.as_str().unwrap(), via);
    }
    let prompt = cstr(case["prompt"].as_str().unwrap());
    ok(dg_vlm_params_add_text(p, c"user".as_ptr(), prompt.as_ptr()));
    let max = cstr(&case["max_new_tokens"].to_string());
    ok(dg_vlm_params_set(
        p,
        c"max_new_tokens".as_ptr(),
        max.as_ptr(),
    ));
    p
}

/// What a result holds, copied out.
#[derive(Debug, PartialEq)]
struct Answer {
    text: Vec<u8>,
    token_ids: Vec<i64>,
    prompt_tokens: usize,
    finish_reason: String,
    timings: Value,
    enhanced_prompt: String,
}

unsafe fn answer(result: *mut dg_vlm_result_t) -> Answer {
    let mut len = usize::MAX;
    let text = dg_vlm_result_text(result, &mut len);
    let text = std::slice::from_raw_parts(text.cast::<u8>(), len).to_vec();
    assert_eq!(*dg_vlm_result_text(result, ptr::null_mut()).add(len), 0);
    let mut n = usize::MAX;
    let ids = dg_vlm_result_token_ids(result, &mut n);
    let token_ids = std::slice::from_raw_parts(ids, n).to_vec();
    let string = |p: *const std::ffi::c_char| CStr::from_ptr(p).to_str().unwrap().to_string();
    let answer = Answer {
        text,
        token_ids,
        prompt_tokens: dg_vlm_result_prompt_tokens(result),
        finish_reason: string(dg_vlm_result_finish_reason(result)),
        timings: serde_json::from_str(&string(dg_vlm_result_timings(result))).unwrap(),
        enhanced_prompt: string(dg_vlm_result_enhanced_prompt(result)),
    };
    dg_vlm_result_free(result);
    answer
}

unsafe fn generate_with(
    vlm: *const dg_vlm_t,
    params: *const dg_vlm_params_t,
    on_token: dg_vlm_token_fn,
    user_data: *mut c_void,
    cancel: *const dg_cancel_token_t,
) -> Result<Answer, (dg_error_code_t, String)> {
    let mut out = sentinel();
    let err = dg_vlm_generate(vlm, params, on_token, user_data, cancel, &mut out);
    if err.is_null() {
        assert_ne!(out, sentinel());
        Ok(answer(out))
    } else {
        assert_eq!(out, sentinel(), "out-param written on error");
        Err(take(err))
    }
}

unsafe fn generate(params: *const dg_vlm_params_t) -> Answer {
    generate_with(vlm(), params, None, ptr::null_mut(), ptr::null())
        .unwrap_or_else(|(code, message)| panic!("{code:?}: {message}"))
}

/// The Rust API on the same package, for answers the goldens do not hold.
fn rust_vlm() -> &'static Vlm {
    static VLM: OnceLock<Vlm> = OnceLock::new();
    VLM.get_or_init(|| {
        // One intra-op thread, as the C API's runtime here: the same reductions, the same logits.
        let runtime = Runtime::new(RuntimeOptions {
            ort_library: common::ort_library(),
            intra_threads: Some(1),
            ..RuntimeOptions::default()
        })
        .unwrap();
        Vlm::load(runtime, &common::model_dir(MODEL)).unwrap()
    })
}

#[test]
fn every_golden_case_gives_transformers_tokens_whichever_way_images_arrive() {
    let goldens = goldens();
    for (i, case) in goldens["cases"].as_array().unwrap().iter().enumerate() {
        let via = [Via::File, Via::Encoded, Via::Pixels][i % 3];
        let name = case["name"].as_str().unwrap();
        unsafe {
            let p = case_params(case, via);
            let answer = generate(p);
            dg_vlm_params_free(p);
            assert_eq!(
                answer.token_ids,
                ids(&case["expected_ids"]),
                "{name} ({via:?})"
            );
            assert_eq!(
                answer.text,
                case["expected_text"].as_str().unwrap().as_bytes(),
                "{name}"
            );
            assert_eq!(
                answer.prompt_tokens,
                case["input_ids"].as_array().unwrap().len(),
                "{name}"
            );
            let eos = case["stopped_at_eos"].as_bool() == Some(true);
            assert_eq!(
                answer.finish_reason,
                if eos { "stop" } else { "length" },
                "{name}"
            );
            for key in [
                "preprocess_s",
                "vision_s",
                "first_token_s",
                "decode_s",
                "total_s",
                "tokens_per_second",
            ] {
                assert!(answer.timings[key].as_f64().unwrap() >= 0.0, "{key}");
            }
            assert!(answer.timings["total_s"].as_f64() >= answer.timings["first_token_s"].as_f64());
        }
    }
}

#[test]
fn every_layout_loads_and_reports_itself() {
    let case = case("two_images");
    for (name, layout) in [
        ("tiny-qwen2.5-vl", "onnxruntime-genai"),
        ("tiny-qwen2.5-vl-builder", "onnxruntime-genai"),
        ("tiny-qwen2.5-vl-tfjs", "transformers.js"),
    ] {
        unsafe {
            let vlm = load(name);
            let info: Value =
                serde_json::from_str(CStr::from_ptr(dg_vlm_info(vlm)).to_str().unwrap()).unwrap();
            assert_eq!(info["layout"], layout, "{name}");
            assert_eq!(info["chat"], true);
            let mut eos = ids(&info["eos_ids"]);
            eos.sort_unstable();
            assert_eq!(eos, vec![400, 402], "{name}");
            assert_eq!(
                info["caption_prompt"],
                diffgentor::vlm::DEFAULT_CAPTION_PROMPT
            );
            assert!(info["context_length"].as_u64().unwrap() >= 1024, "{info}");
            let p = case_params(&case, Via::File);
            let answer = generate_with(vlm, p, None, ptr::null_mut(), ptr::null()).unwrap();
            assert_eq!(answer.token_ids, ids(&case["expected_ids"]), "{name}");
            dg_vlm_params_free(p);
            dg_vlm_free(vlm);
        }
    }
}

/// What the token callback saw.
#[derive(Default)]
struct Seen {
    ids: Vec<i64>,
    indexes: Vec<u32>,
    text: Vec<u8>,
    sizes: Vec<u32>,
    /// Cancel after this many tokens (0 = never).
    stop_after: usize,
    cancel: Option<Shared<dg_cancel_token_t>>,
}

unsafe extern "C" fn on_token(token: *const dg_vlm_token_t, user_data: *mut c_void) -> bool {
    let seen = &mut *user_data.cast::<Seen>();
    let t = &*token;
    seen.sizes.push(t.struct_size);
    seen.ids.push(t.token_id);
    seen.indexes.push(t.index);
    let bytes = std::slice::from_raw_parts(t.text.cast::<u8>(), t.text_len + 1);
    assert_eq!(bytes[t.text_len], 0, "the text is NUL-terminated");
    seen.text.extend_from_slice(&bytes[..t.text_len]);
    if let Some(cancel) = seen.cancel {
        if seen.ids.len() == seen.stop_after {
            dg_cancel_token_cancel(cancel.get());
        }
        return true;
    }
    seen.stop_after == 0 || seen.ids.len() < seen.stop_after
}

#[test]
fn the_token_callback_sees_every_token_and_can_cancel() {
    let case = case("image_96x64");
    let expected = ids(&case["expected_ids"]);
    unsafe {
        let p = case_params(&case, Via::File);
        let mut seen = Seen::default();
        let answer = generate_with(
            vlm(),
            p,
            Some(on_token),
            ptr::from_mut(&mut seen).cast(),
            ptr::null(),
        )
        .unwrap();
        assert_eq!(answer.token_ids, expected);
        assert_eq!(seen.ids, expected);
        assert_eq!(
            seen.text, answer.text,
            "streamed text adds up to the answer"
        );
        assert_eq!(
            seen.indexes,
            (1..=expected.len() as u32).collect::<Vec<_>>()
        );
        assert!(seen
            .sizes
            .iter()
            .all(|&s| s as usize == size_of::<dg_vlm_token_t>()));

        // Returning false at the third token cancels: no fourth call, no result.
        let mut seen = Seen {
            stop_after: 3,
            ..Seen::default()
        };
        let (code, message) = generate_with(
            vlm(),
            p,
            Some(on_token),
            ptr::from_mut(&mut seen).cast(),
            ptr::null(),
        )
        .unwrap_err();
        assert_eq!(code, dg_error_code_t::DG_ERROR_CANCELLED, "{message}");
        assert_eq!(seen.ids, expected[..3]);

        // A token raised before the request: nothing runs.
        let mut token = sentinel();
        ok(dg_cancel_token_new(&mut token));
        dg_cancel_token_cancel(token);
        let mut seen = Seen::default();
        let (code, _) = generate_with(
            vlm(),
            p,
            Some(on_token),
            ptr::from_mut(&mut seen).cast(),
            token,
        )
        .unwrap_err();
        assert_eq!(code, dg_error_code_t::DG_ERROR_CANCELLED);
        assert!(seen.ids.is_empty());
        dg_cancel_token_free(token);

        // A token raised during the request (here from the callback): it stops before the next.
        let mut token = sentinel();
        ok(dg_cancel_token_new(&mut token));
        let mut seen = Seen {
            stop_after: 2,
            cancel: Some(Shared(token)),
            ..Seen::default()
        };
        let (code, _) = generate_with(
            vlm(),
            p,
            Some(on_token),
            ptr::from_mut(&mut seen).cast(),
            token,
        )
        .unwrap_err();
        assert_eq!(code, dg_error_code_t::DG_ERROR_CANCELLED);
        assert_eq!(seen.ids, expected[..2]);
        dg_cancel_token_free(token);

        // The same params still give the golden answer.
        assert_eq!(generate(p).token_ids, expected);
        dg_vlm_params_free(p);
    }
}

#[test]
fn null_pointers_are_null_arg_and_getters_have_defaults() {
    let null = dg_error_code_t::DG_ERROR_NULL_ARG;
    unsafe {
        let dir = cstr(common::model_dir(MODEL).to_str().unwrap());
        let mut out = sentinel::<dg_vlm_t>();
        expect_err(
            dg_vlm_load(ptr::null(), dir.as_ptr(), &mut out),
            null,
            &["`rt`"],
        );
        expect_err(
            dg_vlm_load(runtime(), ptr::null(), &mut out),
            null,
            &["`model_dir`"],
        );
        assert_eq!(out, sentinel());
        expect_err(
            dg_vlm_load(runtime(), dir.as_ptr(), ptr::null_mut()),
            null,
            &["`out`"],
        );

        expect_err(dg_vlm_params_new(ptr::null_mut()), null, &["`out`"]);
        let mut p = sentinel();
        expect_err(
            dg_vlm_params_new_enhance(ptr::null(), c"x".as_ptr(), &mut p),
            null,
            &["`style`"],
        );
        expect_err(
            dg_vlm_params_new_enhance(c"t2i".as_ptr(), ptr::null(), &mut p),
            null,
            &["`instruction`"],
        );
        assert_eq!(p, sentinel());
        expect_err(
            dg_vlm_params_new_enhance(c"t2i".as_ptr(), c"x".as_ptr(), ptr::null_mut()),
            null,
            &["`out`"],
        );

        let mut p = ptr::null_mut();
        ok(dg_vlm_params_new(&mut p));
        let png = std::fs::read(image_path("vlm-images/square_80x80.png")).unwrap();
        let pixels = [0u8; 3];
        expect_err(
            dg_vlm_params_add_text(ptr::null_mut(), ptr::null(), c"x".as_ptr()),
            null,
            &["`p`"],
        );
        expect_err(
            dg_vlm_params_add_text(p, ptr::null(), ptr::null()),
            null,
            &["`text`"],
        );
        expect_err(
            dg_vlm_params_add_image(ptr::null_mut(), ptr::null(), pixels.as_ptr(), 1, 1, 3, 3),
            null,
            &["`p`"],
        );
        expect_err(
            dg_vlm_params_add_image(p, ptr::null(), ptr::null(), 1, 1, 3, 3),
            null,
            &["`pixels`"],
        );
        expect_err(
            dg_vlm_params_add_image_encoded(ptr::null_mut(), ptr::null(), png.as_ptr(), png.len()),
            null,
            &["`p`"],
        );
        expect_err(
            dg_vlm_params_add_image_encoded(p, ptr::null(), ptr::null(), 10),
            null,
            &["`data`"],
        );
        let path = cstr(&image_path("vlm-images/square_80x80.png"));
        expect_err(
            dg_vlm_params_add_image_file(ptr::null_mut(), ptr::null(), path.as_ptr()),
            null,
            &["`p`"],
        );
        expect_err(
            dg_vlm_params_add_image_file(p, ptr::null(), ptr::null()),
            null,
            &["`path`"],
        );
        expect_err(
            dg_vlm_params_set(ptr::null_mut(), c"seed".as_ptr(), c"1".as_ptr()),
            null,
            &["`p`"],
        );
        expect_err(
            dg_vlm_params_set(p, ptr::null(), c"1".as_ptr()),
            null,
            &["`key`"],
        );
        expect_err(
            dg_vlm_params_set(p, c"seed".as_ptr(), ptr::null()),
            null,
            &["`value`"],
        );

        ok(dg_vlm_params_add_text(
            p,
            ptr::null(),
            c"Describe this image.".as_ptr(),
        ));
        let mut result = sentinel();
        expect_err(
            dg_vlm_generate(
                ptr::null(),
                p,
                None,
                ptr::null_mut(),
                ptr::null(),
                &mut result,
            ),
            null,
            &["`vlm`"],
        );
        expect_err(
            dg_vlm_generate(
                vlm(),
                ptr::null(),
                None,
                ptr::null_mut(),
                ptr::null(),
                &mut result,
            ),
            null,
            &["`params`"],
        );
        assert_eq!(result, sentinel());
        expect_err(
            dg_vlm_generate(
                vlm(),
                p,
                None,
                ptr::null_mut(),
                ptr::null(),
                ptr::null_mut(),
            ),
            null,
            &["`out`"],
        );
        dg_vlm_params_free(p);

        // Getters of NULL: empty values; len out-params are written; free(NULL) is a no-op.
        assert_eq!(CStr::from_ptr(dg_vlm_info(ptr::null())).to_bytes(), b"");
        let mut len = 7;
        assert_eq!(
            CStr::from_ptr(dg_vlm_result_text(ptr::null(), &mut len)).to_bytes(),
            b""
        );
        assert_eq!(len, 0);
        let mut len = 7;
        assert!(dg_vlm_result_token_ids(ptr::null(), &mut len).is_null());
        assert_eq!(len, 0);
        assert!(dg_vlm_result_token_ids(ptr::null(), ptr::null_mut()).is_null());
        assert_eq!(dg_vlm_result_prompt_tokens(ptr::null()), 0);
        for s in [
            dg_vlm_result_finish_reason(ptr::null()),
            dg_vlm_result_timings(ptr::null()),
            dg_vlm_result_enhanced_prompt(ptr::null()),
        ] {
            assert_eq!(CStr::from_ptr(s).to_bytes(), b"");
        }
        dg_vlm_free(ptr::null_mut());
        dg_vlm_params_free(ptr::null_mut());
        dg_vlm_result_free(ptr::null_mut());
    }
}

#[test]
fn invalid_utf8_is_invalid_arg_naming_the_parameter() {
    let invalid = dg_error_code_t::DG_ERROR_INVALID_ARG;
    let bad = c"ab\xffc".as_ptr();
    unsafe {
        let mut out = sentinel::<dg_vlm_t>();
        expect_err(
            dg_vlm_load(runtime(), bad, &mut out),
            invalid,
            &["`model_dir`", "offset 2"],
        );
        let mut p = sentinel();
        expect_err(
            dg_vlm_params_new_enhance(bad, c"x".as_ptr(), &mut p),
            invalid,
            &["`style`"],
        );
        expect_err(
            dg_vlm_params_new_enhance(c"t2i".as_ptr(), bad, &mut p),
            invalid,
            &["`instruction`"],
        );
        assert_eq!(p, sentinel());

        let mut p = ptr::null_mut();
        ok(dg_vlm_params_new(&mut p));
        expect_err(
            dg_vlm_params_add_text(p, bad, c"x".as_ptr()),
            invalid,
            &["`role`"],
        );
        expect_err(
            dg_vlm_params_add_text(p, ptr::null(), bad),
            invalid,
            &["`text`"],
        );
        let pixels = [0u8; 3 * 28 * 28];
        expect_err(
            dg_vlm_params_add_image(p, bad, pixels.as_ptr(), 28, 28, 3, 84),
            invalid,
            &["`role`"],
        );
        expect_err(
            dg_vlm_params_add_image_file(p, ptr::null(), bad),
            invalid,
            &["`path`"],
        );
        expect_err(
            dg_vlm_params_set(p, bad, c"1".as_ptr()),
            invalid,
            &["`key`"],
        );
        expect_err(
            dg_vlm_params_set(p, c"stop".as_ptr(), bad),
            invalid,
            &["`value`"],
        );
        dg_vlm_params_free(p);
    }
}

#[test]
fn bad_keys_and_values_are_invalid_arg_naming_them_and_change_nothing() {
    let invalid = dg_error_code_t::DG_ERROR_INVALID_ARG;
    let case = case("text_only");
    unsafe {
        let p = case_params(&case, Via::File);
        let (code, message) = take(dg_vlm_params_set(p, c"max_tokens".as_ptr(), c"8".as_ptr()));
        assert_eq!(code, invalid);
        for key in [
            "max_tokens",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "repetition_penalty",
            "seed",
            "system",
            "stop",
        ] {
            assert!(message.contains(key), "`{message}` should list {key}");
        }
        for (key, value) in [
            ("max_new_tokens", "0"),
            ("max_new_tokens", "32769"),
            ("max_new_tokens", "-1"),
            ("max_new_tokens", "many"),
            ("temperature", "-0.5"),
            ("temperature", "NaN"),
            ("temperature", "101"),
            ("temperature", "hot"),
            ("top_p", "0"),
            ("top_p", "1.5"),
            ("top_k", "-1"),
            ("top_k", "1.5"),
            ("repetition_penalty", "0"),
            ("repetition_penalty", "inf"),
            ("seed", "-3"),
            ("seed", "18446744073709551616"),
        ] {
            let (k, v) = (cstr(key), cstr(value));
            expect_err(
                dg_vlm_params_set(p, k.as_ptr(), v.as_ptr()),
                invalid,
                &[key, value],
            );
        }
        // Seventeen stop strings are one too many; "" removes them all.
        for i in 0..16 {
            let stop = cstr(&format!("<never {i}>"));
            ok(dg_vlm_params_set(p, c"stop".as_ptr(), stop.as_ptr()));
        }
        expect_err(
            dg_vlm_params_set(p, c"stop".as_ptr(), c"one more".as_ptr()),
            invalid,
            &["stop", "one more", "16"],
        );
        ok(dg_vlm_params_set(p, c"stop".as_ptr(), c"".as_ptr()));
        // Nothing above changed the request: still the golden greedy answer.
        assert_eq!(generate(p).token_ids, ids(&case["expected_ids"]));

        // Roles, images and requests the model refuses.
        expect_err(
            dg_vlm_params_add_text(p, c" ".as_ptr(), c"x".as_ptr()),
            invalid,
            &["role"],
        );
        let two = [0u8; 2 * 28 * 28];
        expect_err(
            dg_vlm_params_add_image(p, ptr::null(), two.as_ptr(), 28, 28, 2, 56),
            invalid,
            &["channels"],
        );
        expect_err(
            dg_vlm_params_add_image(p, ptr::null(), two.as_ptr(), 0, 28, 1, 0),
            invalid,
            &[],
        );
        expect_err(
            dg_vlm_params_add_image(p, ptr::null(), two.as_ptr(), 28, 28, 1, 10),
            invalid,
            &["stride"],
        );
        expect_err(
            dg_vlm_params_add_image(p, ptr::null(), two.as_ptr(), 100_000, 28, 3, usize::MAX),
            invalid,
            &[],
        );
        let garbage = b"\x89PNG\r\n\x1a\n garbage";
        expect_err(
            dg_vlm_params_add_image_encoded(p, ptr::null(), garbage.as_ptr(), garbage.len()),
            invalid,
            &["PNG"],
        );
        let missing = cstr("/nonexistent/dir/image.png");
        expect_err(
            dg_vlm_params_add_image_file(p, ptr::null(), missing.as_ptr()),
            dg_error_code_t::DG_ERROR_IO,
            &["/nonexistent/dir/image.png"],
        );
        let not_image = cstr(
            common::model_dir(MODEL)
                .join("config.json")
                .to_str()
                .unwrap(),
        );
        expect_err(
            dg_vlm_params_add_image_file(p, ptr::null(), not_image.as_ptr()),
            invalid,
            &["config.json"],
        );
        dg_vlm_params_free(p);

        let mut empty = ptr::null_mut();
        ok(dg_vlm_params_new(&mut empty));
        let (code, message) =
            generate_with(vlm(), empty, None, ptr::null_mut(), ptr::null()).unwrap_err();
        assert_eq!(code, invalid);
        assert!(message.contains("message"), "{message}");
        add_image(empty, "vlm-images/tiny_10x10.png", Via::File);
        ok(dg_vlm_params_add_text(
            empty,
            ptr::null(),
            c"what is this?".as_ptr(),
        ));
        let (code, message) =
            generate_with(vlm(), empty, None, ptr::null_mut(), ptr::null()).unwrap_err();
        assert_eq!(code, invalid);
        assert!(message.contains("14"), "smaller than one patch: {message}");
        dg_vlm_params_free(empty);

        let mut long = ptr::null_mut();
        ok(dg_vlm_params_new(&mut long));
        let text = cstr(&"red ".repeat(3000));
        ok(dg_vlm_params_add_text(long, ptr::null(), text.as_ptr()));
        let (code, message) =
            generate_with(vlm(), long, None, ptr::null_mut(), ptr::null()).unwrap_err();
        assert_eq!(code, invalid);
        assert!(message.contains("context"), "{message}");
        dg_vlm_params_free(long);

        let mut out = sentinel::<dg_vlm_t>();
        let missing = cstr("/nonexistent/model");
        let (code, _) = take(dg_vlm_load(runtime(), missing.as_ptr(), &mut out));
        assert!(
            matches!(
                code,
                dg_error_code_t::DG_ERROR_MODEL | dg_error_code_t::DG_ERROR_IO
            ),
            "{code:?}"
        );
        assert_eq!(out, sentinel());
    }
}

#[test]
fn keys_and_roles_build_the_request_the_rust_api_builds() {
    let case = case("image_96x64");
    let image = Image::load_png(image_path("vlm-images/shapes_96x64.png").as_ref()).unwrap();
    let mut request = VlmRequest::new("Describe this image.", vec![image]).with_system("Be brief.");
    request.max_new_tokens = 12;
    request.sampling.temperature = 0.9;
    request.sampling.top_k = 40;
    request.sampling.top_p = 0.9;
    request.sampling.repetition_penalty = 1.2;
    request.sampling.seed = 11;
    let expected = rust_vlm().generate(&request).unwrap();
    assert_ne!(expected.token_ids, ids(&case["expected_ids"])[..12]);
    unsafe {
        let mut p = ptr::null_mut();
        ok(dg_vlm_params_new(&mut p));
        // A system message added as a part, then replaced by the "system" key.
        ok(dg_vlm_params_add_text(
            p,
            c"system".as_ptr(),
            c"Be verbose.".as_ptr(),
        ));
        add_image(p, "vlm-images/shapes_96x64.png", Via::Pixels);
        ok(dg_vlm_params_add_text(
            p,
            c"user".as_ptr(),
            c"Describe this image.".as_ptr(),
        ));
        for (key, value) in [
            ("max_new_tokens", " 12"),
            ("temperature", "0.9"),
            ("top_k", "40"),
            ("top_p", "0.9"),
            ("repetition_penalty", "1.2"),
            ("seed", "11"),
            ("system", "Be brief."),
        ] {
            let (k, v) = (cstr(key), cstr(value));
            ok(dg_vlm_params_set(p, k.as_ptr(), v.as_ptr()));
        }
        let answer = generate(p);
        assert_eq!(answer.token_ids, expected.token_ids);
        assert_eq!(answer.text, expected.text.as_bytes());
        assert_eq!(answer.prompt_tokens, expected.prompt_tokens);
        dg_vlm_params_free(p);
    }

    // A stop string cuts the text before it, as the Rust API does.
    let case = self::case("text_only");
    let full = case["expected_text"].as_str().unwrap();
    let cut = full.char_indices().nth(6).map(|(i, _)| i).unwrap();
    let stop: String = full[cut..].chars().take(2).collect();
    unsafe {
        let p = case_params(&case, Via::File);
        let stop_c = cstr(&stop);
        ok(dg_vlm_params_set(p, c"stop".as_ptr(), stop_c.as_ptr()));
        let answer = generate(p);
        assert_eq!(answer.finish_reason, "stop");
        assert_eq!(answer.text, &full.as_bytes()[..full.find(&stop).unwrap()]);
        dg_vlm_params_free(p);
    }
}

#[test]
fn prompt_enhancement_runs_the_styles_request_and_cleans_the_reply() {
    let invalid = dg_error_code_t::DG_ERROR_INVALID_ARG;
    let image = Image::load_png(image_path("vlm-images/square_80x80.png").as_ref()).unwrap();
    let mut request = EnhanceStyle::QwenImageEdit
        .request("make the square blue", Some(image))
        .unwrap();
    request.max_new_tokens = 24;
    let expected = rust_vlm().generate(&request).unwrap();
    unsafe {
        let mut p = sentinel();
        expect_err(
            dg_vlm_params_new_enhance(c"sdxl".as_ptr(), c"x".as_ptr(), &mut p),
            invalid,
            &["sdxl", "qwen_image_edit", "flux2", "glm_image", "t2i"],
        );
        expect_err(
            dg_vlm_params_new_enhance(c"t2i".as_ptr(), c"  ".as_ptr(), &mut p),
            invalid,
            &["instruction"],
        );
        assert_eq!(p, sentinel());

        ok(dg_vlm_params_new_enhance(
            c"qwen_image_edit".as_ptr(),
            c"make the square blue".as_ptr(),
            &mut p,
        ));
        expect_err(
            dg_vlm_params_add_text(p, ptr::null(), c"x".as_ptr()),
            invalid,
            &["image"],
        );
        let png = std::fs::read(image_path("vlm-images/square_80x80.png")).unwrap();
        expect_err(
            dg_vlm_params_add_image_encoded(p, c"system".as_ptr(), png.as_ptr(), png.len()),
            invalid,
            &["system"],
        );
        add_image(p, "vlm-images/square_80x80.png", Via::Encoded);
        expect_err(
            dg_vlm_params_add_image_encoded(p, ptr::null(), png.as_ptr(), png.len()),
            invalid,
            &["one image"],
        );
        ok(dg_vlm_params_set(
            p,
            c"max_new_tokens".as_ptr(),
            c"24".as_ptr(),
        ));
        let answer = generate(p);
        assert_eq!(answer.token_ids, expected.token_ids);
        assert_eq!(answer.text, expected.text.as_bytes());
        assert_eq!(
            answer.enhanced_prompt,
            clean_reply(&expected.text)
                .unwrap_or_default()
                .replace('\0', " ")
        );
        dg_vlm_params_free(p);

        // Without an image, and with the system prompt replaced: the Rust API's request again.
        let mut request = EnhanceStyle::T2i
            .request("a fox", None)
            .unwrap()
            .with_system("Rewrite.");
        request.max_new_tokens = 8;
        let expected = rust_vlm().generate(&request).unwrap();
        let mut p = ptr::null_mut();
        ok(dg_vlm_params_new_enhance(
            c"t2i".as_ptr(),
            c"a fox".as_ptr(),
            &mut p,
        ));
        ok(dg_vlm_params_set(
            p,
            c"system".as_ptr(),
            c"Rewrite.".as_ptr(),
        ));
        ok(dg_vlm_params_set(
            p,
            c"max_new_tokens".as_ptr(),
            c"8".as_ptr(),
        ));
        assert_eq!(generate(p).token_ids, expected.token_ids);
        dg_vlm_params_free(p);
    }
}

#[test]
fn threads_share_one_model_and_the_runtime_may_go_first() {
    let goldens = goldens();
    let cases: Vec<Value> = goldens["cases"].as_array().unwrap().clone();
    unsafe {
        // A model of its own on a runtime of its own, freed before the model is used.
        let rt = new_runtime();
        let dir = cstr(
            common::model_dir("tiny-qwen2.5-vl-builder")
                .to_str()
                .unwrap(),
        );
        let mut vlm = ptr::null_mut();
        ok(dg_vlm_load(rt, dir.as_ptr(), &mut vlm));
        dg_runtime_free(rt);
        let shared = Shared(vlm);
        let handles: Vec<_> = cases
            .into_iter()
            .map(|case| {
                std::thread::spawn(move || {
                    let p = case_params(&case, Via::Encoded);
                    let answer =
                        generate_with(shared.get(), p, None, ptr::null_mut(), ptr::null()).unwrap();
                    dg_vlm_params_free(p);
                    assert_eq!(
                        answer.token_ids,
                        ids(&case["expected_ids"]),
                        "{}",
                        case["name"]
                    );
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        dg_vlm_free(vlm);
    }
}
