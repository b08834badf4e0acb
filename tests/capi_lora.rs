//! LoRA through the C ABI (`dg_pipeline_lora_*`, `dg_params_add_lora`, `dg_params_clear_loras`,
//! `dg_string_free`), called the way C calls it, against the Rust API's bytes for the same request.
mod common;

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::ptr;

use common::capi::*;
use diffgentor::capi::*;
use diffgentor::{LoraUse, Request};
use serde_json::Value;

fn lora(file: &str) -> PathBuf {
    common::repo().join("models/lora").join(file)
}

fn lora_c(file: &str) -> CString {
    cstr(lora(file).to_str().expect("UTF-8 path"))
}

/// A fresh tiny-sd pipeline (each test its own, so adapters never leak between tests).
unsafe fn tiny_sd() -> *mut dg_pipeline_t {
    let dir = cstr(common::model_dir("tiny-sd").to_str().expect("UTF-8 path"));
    let mut p = ptr::null_mut();
    ok(dg_pipeline_load(runtime(), dir.as_ptr(), &mut p));
    p
}

/// "a red fox", seed 7, 3 euler steps.
fn fox_request() -> Request {
    let mut request = Request::new("a red fox");
    request.steps = 3;
    request.seed = Some(7);
    request.scheduler = Some("euler".into());
    request
}

unsafe fn fox_params() -> *mut dg_params_t {
    let mut params = ptr::null_mut();
    ok(dg_params_new(&mut params));
    ok(dg_params_set_prompt(params, c"a red fox".as_ptr()));
    ok(dg_params_set_steps(params, 3));
    ok(dg_params_set_seed(params, 7));
    ok(dg_params_set_scheduler(params, c"euler".as_ptr()));
    params
}

/// The first image's pixels, or the error.
unsafe fn generate(
    p: *const dg_pipeline_t,
    params: *const dg_params_t,
) -> Result<Vec<u8>, (dg_error_code_t, String)> {
    let mut out = sentinel();
    let err = dg_pipeline_generate(p, params, None, ptr::null_mut(), ptr::null(), &mut out);
    if !err.is_null() {
        assert_eq!(out, sentinel(), "out-param written on error");
        return Err(take(err));
    }
    let img = dg_images_get(out, 0);
    let len = dg_image_stride(img) * dg_image_height(img) as usize;
    let pixels = std::slice::from_raw_parts(dg_image_pixels(img), len).to_vec();
    dg_images_free(out);
    Ok(pixels)
}

unsafe fn pixels(p: *const dg_pipeline_t, params: *const dg_params_t) -> Vec<u8> {
    generate(p, params).unwrap_or_else(|(code, message)| panic!("{code:?}: {message}"))
}

/// `dg_pipeline_lora_list` parsed; the string is freed with `dg_string_free`.
unsafe fn list(p: *const dg_pipeline_t) -> Value {
    let mut out: *mut c_char = sentinel();
    ok(dg_pipeline_lora_list(p, &mut out));
    assert_ne!(out, sentinel());
    let text = CStr::from_ptr(out).to_str().expect("UTF-8").to_string();
    dg_string_free(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{text}` is not JSON: {e}"))
}

/// The Rust API's pixels for `request` on a fresh tiny-sd with `loads` (name, file) loaded.
fn rust_pixels(loads: &[(&str, &str)], request: &Request) -> Vec<u8> {
    let pipeline = common::pipeline("tiny-sd");
    for (name, file) in loads {
        pipeline.load_lora(name, &lora(file)).expect("Rust load");
    }
    let output = pipeline.generate(request).expect("Rust generate");
    output.images[0].pixels.clone()
}

#[test]
fn load_list_generate_and_unload_match_the_rust_api() {
    let base_rust = rust_pixels(&[], &fox_request());
    let stack = vec![LoraUse::new("a", 0.8), LoraUse::new("b", -0.4)];
    let with_rust = rust_pixels(
        &[("a", "sd_a.safetensors"), ("b", "sd_b.safetensors")],
        &Request {
            loras: Some(stack),
            ..fox_request()
        },
    );
    unsafe {
        let p = tiny_sd();
        let params = fox_params();
        let base = pixels(p, params);
        assert!(base == base_rust, "base pixels differ from the Rust API's");
        let empty = list(p);
        assert_eq!(empty["adapters"], Value::Array(vec![]));
        assert_eq!(empty["default_stack"], Value::Array(vec![]));

        ok(dg_pipeline_lora_load(
            p,
            c"a".as_ptr(),
            lora_c("sd_a.safetensors").as_ptr(),
            0,
        ));
        ok(dg_pipeline_lora_load(
            p,
            c"b".as_ptr(),
            lora_c("sd_b.safetensors").as_ptr(),
            0,
        ));
        let listed = list(p);
        let adapters = listed["adapters"].as_array().expect("adapters");
        assert_eq!(adapters.len(), 2, "{listed}");
        let a = &adapters[0];
        assert_eq!(a["name"], "a");
        assert_eq!(
            a["path"].as_str().map(PathBuf::from),
            Some(lora("sd_a.safetensors"))
        );
        assert_eq!(a["format"], "diffusers", "{a}");
        assert_eq!(a["layers"]["unet"], 40, "sd_a changes 40 UNet weights: {a}");
        assert_eq!(a["unmatched"], 0);
        assert_eq!(a["default_strength"], Value::Null);
        assert_eq!(adapters[1]["name"], "b");
        assert_eq!(adapters[1]["format"], "kohya", "{}", adapters[1]);

        assert!(
            pixels(p, params) == base,
            "loaded but unused adapters change nothing"
        );
        ok(dg_params_add_lora(params, c"a".as_ptr(), 0.8));
        ok(dg_params_add_lora(params, c"b".as_ptr(), -0.4));
        let with = pixels(p, params);
        assert!(with != base, "the stack must change the image");
        assert!(
            with == with_rust,
            "the C API's LoRA pixels differ from the Rust API's"
        );
        // The same stack through the string-keyed setter.
        let keyed = fox_params();
        ok(dg_params_set(
            keyed,
            c"loras".as_ptr(),
            c"a:0.8;b:-0.4".as_ptr(),
        ));
        assert!(
            pixels(p, keyed) == with,
            "\"loras\" key == dg_params_add_lora"
        );
        dg_params_free(keyed);

        ok(dg_pipeline_lora_unload(p, c"b".as_ptr()));
        ok(dg_pipeline_lora_unload(p, c"a".as_ptr()));
        assert_eq!(list(p)["adapters"], Value::Array(vec![]));
        let (code, message) = generate(p, params).expect_err("unloaded adapters");
        assert_eq!(code, dg_error_code_t::DG_ERROR_INVALID_ARG, "{message}");
        assert!(message.contains("`a`"), "{message}");
        ok(dg_params_clear_loras(params));
        assert!(
            pixels(p, params) == base,
            "after unloading, the base image bit for bit"
        );
        dg_params_free(params);
        dg_pipeline_free(p);
    }
}

#[test]
fn the_default_stack_applies_unless_the_params_name_one() {
    unsafe {
        let p = tiny_sd();
        let plain = fox_params();
        let base = pixels(p, plain);
        ok(dg_pipeline_lora_load(
            p,
            c"a".as_ptr(),
            lora_c("sd_a.safetensors").as_ptr(),
            0,
        ));
        ok(dg_pipeline_lora_load(
            p,
            c"te".as_ptr(),
            lora_c("sd_te.safetensors").as_ptr(),
            0,
        ));
        let explicit = fox_params();
        ok(dg_params_add_lora(explicit, c"a".as_ptr(), 0.5));
        ok(dg_params_add_lora(explicit, c"te".as_ptr(), 1.0));
        let want = pixels(p, explicit);
        assert!(want != base);

        ok(dg_pipeline_lora_set_default(p, c"a:0.5;te".as_ptr()));
        let listed = list(p);
        assert_eq!(
            listed["default_stack"],
            serde_json::json!([{"name": "a", "strength": 0.5}, {"name": "te", "strength": 1.0}])
        );
        let by_name = |name: &str| {
            listed["adapters"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(by_name("a")["default_strength"], 0.5);
        assert_eq!(by_name("te")["default_strength"], 1.0);
        assert_eq!(by_name("te")["layers"]["text_encoder"], 20, "{listed}");
        assert!(
            pixels(p, plain) == want,
            "params naming no stack take the default"
        );

        let none = fox_params();
        ok(dg_params_clear_loras(none));
        assert!(
            pixels(p, none) == base,
            "dg_params_clear_loras overrides the default"
        );
        let only_a = fox_params();
        ok(dg_params_clear_loras(only_a));
        ok(dg_params_add_lora(only_a, c"a".as_ptr(), 0.5));
        let a = pixels(p, only_a);
        assert!(
            a != want && a != base,
            "an explicit stack replaces the default"
        );

        // A bad default stack changes nothing.
        for (stack, words) in [
            ("ghost:1", &["ghost"][..]),
            ("a:x", &["a:x"][..]),
            ("a:1;a:2", &["twice"][..]),
            ("a:nan", &["finite"][..]),
        ] {
            let s = cstr(stack);
            expect_err(
                dg_pipeline_lora_set_default(p, s.as_ptr()),
                dg_error_code_t::DG_ERROR_INVALID_ARG,
                words,
            );
        }
        assert!(
            pixels(p, plain) == want,
            "a failed set_default keeps the old"
        );

        // Unloading takes an adapter out of the default stack.
        ok(dg_pipeline_lora_unload(p, c"te".as_ptr()));
        assert_eq!(
            list(p)["default_stack"],
            serde_json::json!([{"name": "a", "strength": 0.5}])
        );
        assert!(pixels(p, plain) == a);
        ok(dg_pipeline_lora_set_default(p, c"".as_ptr()));
        assert_eq!(list(p)["default_stack"], Value::Array(vec![]));
        assert!(pixels(p, plain) == base, "\"\" empties the default stack");
        for params in [plain, explicit, none, only_a] {
            dg_params_free(params);
        }
        dg_pipeline_free(p);
    }
}

#[test]
fn kohya_naming_loads_as_the_same_adapter() {
    unsafe {
        let p = tiny_sd();
        ok(dg_pipeline_lora_load(
            p,
            c"k".as_ptr(),
            lora_c("sd_a_kohya.safetensors").as_ptr(),
            0,
        ));
        let listed = list(p);
        assert_eq!(listed["adapters"][0]["format"], "kohya", "{listed}");
        assert_eq!(listed["adapters"][0]["layers"]["unet"], 40, "{listed}");
        // Loading again under the same name replaces it.
        ok(dg_pipeline_lora_load(
            p,
            c"k".as_ptr(),
            lora_c("sd_a.safetensors").as_ptr(),
            DG_LORA_ALLOW_PARTIAL,
        ));
        let listed = list(p);
        assert_eq!(listed["adapters"].as_array().map(Vec::len), Some(1));
        assert_eq!(listed["adapters"][0]["format"], "diffusers", "{listed}");
        dg_pipeline_free(p);
    }
}

#[test]
fn null_arguments_are_null_arg_and_touch_nothing() {
    unsafe {
        let p = tiny_sd();
        let a = lora_c("sd_a.safetensors");
        let null = dg_error_code_t::DG_ERROR_NULL_ARG;
        expect_err(
            dg_pipeline_lora_load(ptr::null(), c"a".as_ptr(), a.as_ptr(), 0),
            null,
            &["`p`"],
        );
        expect_err(
            dg_pipeline_lora_load(p, ptr::null(), a.as_ptr(), 0),
            null,
            &["`name`"],
        );
        expect_err(
            dg_pipeline_lora_load(p, c"a".as_ptr(), ptr::null(), 0),
            null,
            &["`path`"],
        );
        expect_err(
            dg_pipeline_lora_unload(ptr::null(), c"a".as_ptr()),
            null,
            &["`p`"],
        );
        expect_err(dg_pipeline_lora_unload(p, ptr::null()), null, &["`name`"]);
        let mut out: *mut c_char = sentinel();
        expect_err(dg_pipeline_lora_list(ptr::null(), &mut out), null, &["`p`"]);
        assert_eq!(out, sentinel());
        expect_err(dg_pipeline_lora_list(p, ptr::null_mut()), null, &["`out`"]);
        expect_err(
            dg_pipeline_lora_set_default(ptr::null(), c"".as_ptr()),
            null,
            &["`p`"],
        );
        expect_err(
            dg_pipeline_lora_set_default(p, ptr::null()),
            null,
            &["`stack`"],
        );
        expect_err(
            dg_params_add_lora(ptr::null_mut(), c"a".as_ptr(), 1.0),
            null,
            &["`p`"],
        );
        expect_err(dg_params_clear_loras(ptr::null_mut()), null, &["`p`"]);
        let params = fox_params();
        expect_err(
            dg_params_add_lora(params, ptr::null(), 1.0),
            null,
            &["`name`"],
        );
        dg_string_free(ptr::null_mut());
        assert_eq!(list(p)["adapters"], Value::Array(vec![]), "nothing loaded");
        dg_params_free(params);
        dg_pipeline_free(p);
    }
}

#[test]
fn bad_files_names_flags_and_strengths_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("image.safetensors");
    std::fs::copy(
        common::repo().join("tests/golden/edit/image_64x64.png"),
        &png,
    )
    .expect("copy");
    let png = cstr(png.to_str().expect("UTF-8"));
    let missing = cstr(dir.path().join("nope.safetensors").to_str().expect("UTF-8"));
    let invalid = dg_error_code_t::DG_ERROR_INVALID_ARG;
    unsafe {
        let p = tiny_sd();
        let params = fox_params();
        let base = pixels(p, params);
        let a = lora_c("sd_a.safetensors");
        expect_err(
            dg_pipeline_lora_load(p, c"x".as_ptr(), missing.as_ptr(), 0),
            dg_error_code_t::DG_ERROR_IO,
            &["nope.safetensors"],
        );
        expect_err(
            dg_pipeline_lora_load(p, c"x".as_ptr(), png.as_ptr(), 0),
            invalid,
            &["image.safetensors"],
        );
        expect_err(
            dg_pipeline_lora_load(p, c"x".as_ptr(), lora_c("sdxl_a.safetensors").as_ptr(), 0),
            invalid,
            &["different model"],
        );
        expect_err(
            dg_pipeline_lora_load(p, c"bad name!".as_ptr(), a.as_ptr(), 0),
            invalid,
            &["bad name!"],
        );
        expect_err(
            dg_pipeline_lora_load(p, c"x".as_ptr(), a.as_ptr(), 6),
            invalid,
            &["flags", "0x6"],
        );
        let bad = b"x\xff\0";
        expect_err(
            dg_pipeline_lora_load(p, bad.as_ptr().cast(), a.as_ptr(), 0),
            invalid,
            &["`name`", "UTF-8"],
        );
        expect_err(
            dg_pipeline_lora_load(p, c"x".as_ptr(), bad.as_ptr().cast(), 0),
            invalid,
            &["`path`", "UTF-8"],
        );
        expect_err(
            dg_pipeline_lora_set_default(p, bad.as_ptr().cast()),
            invalid,
            &["`stack`", "UTF-8"],
        );
        expect_err(
            dg_params_add_lora(params, bad.as_ptr().cast(), 1.0),
            invalid,
            &["`name`", "UTF-8"],
        );
        assert_eq!(
            list(p)["adapters"],
            Value::Array(vec![]),
            "failed loads leave nothing"
        );
        expect_err(
            dg_pipeline_lora_unload(p, c"x".as_ptr()),
            invalid,
            &["`x`", "loaded: none"],
        );

        ok(dg_pipeline_lora_load(p, c"a".as_ptr(), a.as_ptr(), 0));
        // Strengths and stacks: refused at once, the stack unchanged.
        for strength in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            expect_err(
                dg_params_add_lora(params, c"a".as_ptr(), strength),
                invalid,
                &["finite"],
            );
        }
        expect_err(
            dg_params_add_lora(params, c"".as_ptr(), 1.0),
            invalid,
            &["empty"],
        );
        assert!(
            pixels(p, params) == base,
            "refused adds leave the params without a stack"
        );
        ok(dg_params_add_lora(params, c"a".as_ptr(), 1.0));
        expect_err(
            dg_params_add_lora(params, c"a".as_ptr(), 0.5),
            invalid,
            &["twice"],
        );
        let full = fox_params();
        for i in 0..10 {
            let name = cstr(&format!("l{i}"));
            ok(dg_params_add_lora(full, name.as_ptr(), 1.0));
        }
        expect_err(
            dg_params_add_lora(full, c"l10".as_ptr(), 1.0),
            invalid,
            &["at most 10"],
        );
        // An unknown adapter is refused at generate time, listing the loaded ones.
        let (code, message) = generate(p, full).expect_err("unknown names");
        assert_eq!(code, invalid, "{message}");
        assert!(
            message.contains("l0") && message.contains("loaded: a"),
            "{message}"
        );
        dg_params_free(full);
        let with = pixels(p, params);
        assert!(with != base, "the pipeline still works");
        dg_params_free(params);
        dg_pipeline_free(p);
    }
}

#[test]
fn remote_pipelines_have_no_adapters() {
    unsafe {
        let mut opts = ptr::null_mut();
        ok(dg_generator_options_new(&mut opts));
        ok(dg_generator_options_set(
            opts,
            c"base_url".as_ptr(),
            c"http://127.0.0.1:9/v1".as_ptr(),
        ));
        ok(dg_generator_options_set(
            opts,
            c"api_key".as_ptr(),
            c"sk-test".as_ptr(),
        ));
        let mut p = ptr::null_mut();
        ok(dg_pipeline_new_remote(c"openai".as_ptr(), opts, &mut p));
        dg_generator_options_free(opts);
        let unsupported = dg_error_code_t::DG_ERROR_UNSUPPORTED;
        let a = lora_c("sd_a.safetensors");
        expect_err(
            dg_pipeline_lora_load(p, c"a".as_ptr(), a.as_ptr(), 0),
            unsupported,
            &["local", "openai"],
        );
        expect_err(
            dg_pipeline_lora_unload(p, c"a".as_ptr()),
            unsupported,
            &["openai"],
        );
        let mut out: *mut c_char = sentinel();
        expect_err(dg_pipeline_lora_list(p, &mut out), unsupported, &["openai"]);
        assert_eq!(out, sentinel());
        expect_err(
            dg_pipeline_lora_set_default(p, c"".as_ptr()),
            unsupported,
            &["openai"],
        );
        dg_pipeline_free(p);
    }
}
