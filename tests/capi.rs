//! The C ABI called the way C calls it: raw pointers, NUL-terminated strings, out-params.
mod common;

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use common::capi::*;
use diffgentor::capi::*;
use diffgentor::{Image, Request};

unsafe fn load(name: &str) -> *mut dg_pipeline_t {
    let dir = cstr(common::model_dir(name).to_str().unwrap());
    let mut p = ptr::null_mut();
    ok(dg_pipeline_load(runtime(), dir.as_ptr(), &mut p));
    p
}

/// seed 42, 3 euler steps on tiny-sd, set through typed and string-keyed setters.
unsafe fn euler_params() -> *mut dg_params_t {
    let mut params = ptr::null_mut();
    ok(dg_params_new(&mut params));
    ok(dg_params_set_prompt(params, c"a red apple".as_ptr()));
    ok(dg_params_set_negative_prompt(params, c"blurry".as_ptr()));
    ok(dg_params_set_steps(params, 3));
    ok(dg_params_set_seed(params, 42));
    ok(dg_params_set_scheduler(params, c"euler".as_ptr()));
    ok(dg_params_set(
        params,
        c"guidance_scale".as_ptr(),
        c"6.5".as_ptr(),
    ));
    params
}

fn euler_request() -> Request {
    let mut request = Request::new("a red apple");
    request.negative_prompt = Some("blurry".into());
    request.steps = 3;
    request.seed = Some(42);
    request.scheduler = Some("euler".into());
    request.guidance_scale = 6.5;
    request
}

unsafe fn generate(
    p: *const dg_pipeline_t,
    params: *const dg_params_t,
    progress: dg_progress_fn,
    user_data: *mut c_void,
    cancel: *const dg_cancel_token_t,
) -> Result<*mut dg_images_t, (dg_error_code_t, String)> {
    let mut out = sentinel();
    let err = dg_pipeline_generate(p, params, progress, user_data, cancel, &mut out);
    if err.is_null() {
        Ok(out)
    } else {
        assert_eq!(out, sentinel(), "out-param written on error");
        Err(take(err))
    }
}

unsafe fn pixels(img: *const dg_image_t) -> Vec<u8> {
    let len = dg_image_stride(img) * dg_image_height(img) as usize;
    std::slice::from_raw_parts(dg_image_pixels(img), len).to_vec()
}

unsafe fn buffer(buf: *mut dg_buffer_t) -> Vec<u8> {
    let bytes = std::slice::from_raw_parts(dg_buffer_data(buf), dg_buffer_len(buf)).to_vec();
    dg_buffer_free(buf);
    bytes
}

#[test]
fn version_matches_cargo() {
    let version = unsafe { CStr::from_ptr(dg_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        version,
        format!("{DG_VERSION_MAJOR}.{DG_VERSION_MINOR}.{DG_VERSION_PATCH}")
    );
    assert_eq!(dg_abi_version(), DG_VERSION_MAJOR);
}

#[test]
fn null_handles_and_out_params_are_null_arg() {
    unsafe {
        expect_err(
            dg_params_new(ptr::null_mut()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`out`"],
        );
        expect_err(
            dg_runtime_options_new(ptr::null_mut()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`out`"],
        );
        expect_err(
            dg_cancel_token_new(ptr::null_mut()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`out`"],
        );
        expect_err(
            dg_runtime_new(ptr::null(), ptr::null_mut()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`out`"],
        );
        expect_err(
            dg_params_set_prompt(ptr::null_mut(), c"x".as_ptr()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`p`"],
        );
        expect_err(
            dg_runtime_options_set_execution_provider(ptr::null_mut(), c"cpu".as_ptr()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`opts`"],
        );

        let mut params = ptr::null_mut();
        ok(dg_params_new(&mut params));
        expect_err(
            dg_params_set_prompt(params, ptr::null()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`prompt`"],
        );
        expect_err(
            dg_params_set(params, c"steps".as_ptr(), ptr::null()),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`value`"],
        );
        ok(dg_params_set_negative_prompt(params, ptr::null()));

        let mut pipeline = sentinel();
        expect_err(
            dg_pipeline_load(ptr::null(), c"models/tiny-sd".as_ptr(), &mut pipeline),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`rt`"],
        );
        assert_eq!(pipeline, sentinel());
        assert_eq!(
            generate(ptr::null(), params, None, ptr::null_mut(), ptr::null()).unwrap_err(),
            (
                dg_error_code_t::DG_ERROR_NULL_ARG,
                "`p` must not be NULL".to_string()
            )
        );
        let mut buf = sentinel();
        expect_err(
            dg_image_encode_png(ptr::null(), &mut buf),
            dg_error_code_t::DG_ERROR_NULL_ARG,
            &["`img`"],
        );
        assert_eq!(buf, sentinel());
        dg_params_free(params);

        // Infallible calls on NULL: 0 / NULL / "", never a crash.
        assert_eq!(dg_error_code(ptr::null()), dg_error_code_t::DG_ERROR_OK);
        assert_eq!(
            CStr::from_ptr(dg_error_message(ptr::null())).to_bytes(),
            b""
        );
        assert_eq!(dg_images_count(ptr::null()), 0);
        assert!(dg_images_get(ptr::null(), 0).is_null());
        assert_eq!(dg_images_seed(ptr::null()), 0);
        assert_eq!(dg_image_width(ptr::null()), 0);
        assert_eq!(dg_image_height(ptr::null()), 0);
        assert_eq!(dg_image_channels(ptr::null()), 0);
        assert_eq!(dg_image_stride(ptr::null()), 0);
        assert!(dg_image_pixels(ptr::null()).is_null());
        assert!(dg_buffer_data(ptr::null()).is_null());
        assert_eq!(dg_buffer_len(ptr::null()), 0);
        dg_cancel_token_cancel(ptr::null());
        dg_error_free(ptr::null_mut());
        dg_runtime_options_free(ptr::null_mut());
        dg_runtime_free(ptr::null_mut());
        dg_pipeline_free(ptr::null_mut());
        dg_params_free(ptr::null_mut());
        dg_cancel_token_free(ptr::null_mut());
        dg_images_free(ptr::null_mut());
        dg_buffer_free(ptr::null_mut());
    }
}

#[test]
fn invalid_utf8_is_invalid_arg_naming_the_parameter() {
    let bad = b"caf\xe9\0";
    unsafe {
        let mut params = ptr::null_mut();
        ok(dg_params_new(&mut params));
        expect_err(
            dg_params_set_prompt(params, bad.as_ptr().cast::<c_char>()),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["`prompt`", "UTF-8", "offset 3"],
        );
        expect_err(
            dg_params_set(params, c"prompt".as_ptr(), bad.as_ptr().cast()),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["`value`", "UTF-8"],
        );
        dg_params_free(params);

        let mut opts = ptr::null_mut();
        ok(dg_runtime_options_new(&mut opts));
        expect_err(
            dg_runtime_options_set_ort_library(opts, bad.as_ptr().cast()),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["`path`"],
        );
        expect_err(
            dg_runtime_options_set_execution_provider(opts, c"gpu".as_ptr()),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["gpu"],
        );
        dg_runtime_options_free(opts);
    }
}

#[test]
fn params_set_checks_keys_and_values() {
    unsafe {
        let mut params = ptr::null_mut();
        ok(dg_params_new(&mut params));
        for (key, value) in [
            ("steps", "20"),
            ("width", "64"),
            ("rng", "fast"),
            ("eta", "0.3"),
            ("scheduler.use_karras_sigmas", "true"),
            ("scheduler.timestep_spacing", "trailing"),
        ] {
            ok(dg_params_set(
                params,
                cstr(key).as_ptr(),
                cstr(value).as_ptr(),
            ));
        }
        expect_err(
            dg_params_set(params, c"stepz".as_ptr(), c"3".as_ptr()),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["stepz"],
        );
        expect_err(
            dg_params_set(params, c"steps".as_ptr(), c"three".as_ptr()),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["steps", "three"],
        );
        dg_params_free(params);
    }
}

#[test]
fn generate_matches_the_rust_api() {
    let expected = common::pipeline("tiny-sd")
        .generate(&euler_request())
        .expect("Rust API generate");
    unsafe {
        let pipeline = load("tiny-sd");
        let params = euler_params();
        let images = generate(pipeline, params, None, ptr::null_mut(), ptr::null()).unwrap();
        assert_eq!(dg_images_count(images), 1);
        assert_eq!(dg_images_seed(images), 42);
        let img = dg_images_get(images, 0);
        let want = &expected.images[0];
        assert_eq!(dg_image_width(img), want.width);
        assert_eq!(dg_image_height(img), want.height);
        assert_eq!(dg_image_channels(img), 3);
        assert_eq!(dg_image_stride(img), 3 * want.width as usize);
        assert!(
            pixels(img) == want.pixels,
            "pixels differ from Pipeline::generate"
        );
        assert!(dg_images_get(images, 1).is_null());
        assert!(dg_images_get(images, usize::MAX).is_null());
        dg_images_free(images);
        dg_params_free(params);
        dg_pipeline_free(pipeline);
    }
}

struct Calls {
    steps: Vec<(u32, u32, u32)>,
    stop_after: u32,
    raise: *const dg_cancel_token_t,
}

unsafe extern "C" fn on_progress(progress: *const dg_progress_t, user_data: *mut c_void) -> bool {
    let calls = &mut *user_data.cast::<Calls>();
    let p = &*progress;
    calls.steps.push((p.struct_size, p.step, p.total));
    assert!(p.elapsed_seconds >= 0.0);
    if !calls.raise.is_null() {
        dg_cancel_token_cancel(calls.raise);
    }
    p.step < calls.stop_after
}

#[test]
fn progress_callback_reports_and_cancels() {
    let size = size_of::<dg_progress_t>() as u32;
    unsafe {
        let pipeline = load("tiny-sd");
        let params = euler_params();

        let mut calls = Calls {
            steps: Vec::new(),
            stop_after: u32::MAX,
            raise: ptr::null(),
        };
        let user_data = ptr::from_mut(&mut calls).cast();
        let images = generate(pipeline, params, Some(on_progress), user_data, ptr::null()).unwrap();
        dg_images_free(images);
        assert_eq!(calls.steps, [(size, 1, 3), (size, 2, 3), (size, 3, 3)]);

        let mut calls = Calls {
            steps: Vec::new(),
            stop_after: 2,
            raise: ptr::null(),
        };
        let user_data = ptr::from_mut(&mut calls).cast();
        let err = generate(pipeline, params, Some(on_progress), user_data, ptr::null());
        assert_eq!(err.unwrap_err().0, dg_error_code_t::DG_ERROR_CANCELLED);
        assert_eq!(calls.steps.len(), 2, "no step after the callback said stop");

        dg_params_free(params);
        dg_pipeline_free(pipeline);
    }
}

#[test]
fn cancel_token_stops_generate() {
    unsafe {
        let pipeline = load("tiny-sd");
        let params = euler_params();

        // Raised from another thread before the request starts.
        let mut token = ptr::null_mut();
        ok(dg_cancel_token_new(&mut token));
        let shared = Shared(token);
        std::thread::spawn(move || dg_cancel_token_cancel(shared.get()))
            .join()
            .unwrap();
        let err = generate(pipeline, params, None, ptr::null_mut(), token);
        assert_eq!(err.unwrap_err().0, dg_error_code_t::DG_ERROR_CANCELLED);
        dg_cancel_token_free(token);

        // Raised during the first step: the request stops before the second.
        let mut token = ptr::null_mut();
        ok(dg_cancel_token_new(&mut token));
        let mut calls = Calls {
            steps: Vec::new(),
            stop_after: u32::MAX,
            raise: token,
        };
        let user_data = ptr::from_mut(&mut calls).cast();
        let err = generate(pipeline, params, Some(on_progress), user_data, token);
        assert_eq!(err.unwrap_err().0, dg_error_code_t::DG_ERROR_CANCELLED);
        assert_eq!(calls.steps.len(), 1);
        dg_cancel_token_free(token);

        dg_params_free(params);
        dg_pipeline_free(pipeline);
    }
}

#[test]
fn generate_errors_leave_out_untouched() {
    unsafe {
        let pipeline = load("tiny-sd");
        let params = euler_params();
        ok(dg_params_set_size(params, 30, 64));
        let (code, message) =
            generate(pipeline, params, None, ptr::null_mut(), ptr::null()).unwrap_err();
        assert_eq!(code, dg_error_code_t::DG_ERROR_INVALID_ARG);
        assert!(message.contains("width 30"), "{message}");
        dg_params_free(params);

        let mut p = sentinel();
        expect_err(
            dg_pipeline_load(runtime(), c"/nonexistent/model".as_ptr(), &mut p),
            dg_error_code_t::DG_ERROR_MODEL,
            &["/nonexistent/model"],
        );
        assert_eq!(p, sentinel());
        dg_pipeline_free(pipeline);
    }
}

#[test]
fn concurrent_generate_and_any_free_order() {
    unsafe {
        // A runtime of our own, freed before its pipeline.
        let rt = new_runtime();
        let dir = cstr(common::model_dir("tiny-sd").to_str().unwrap());
        let mut pipeline = ptr::null_mut();
        ok(dg_pipeline_load(rt, dir.as_ptr(), &mut pipeline));
        dg_runtime_free(rt);

        let params = euler_params();
        let (p, q) = (Shared(pipeline), Shared(params));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let images =
                        generate(p.get(), q.get(), None, ptr::null_mut(), ptr::null()).unwrap();
                    let out = pixels(dg_images_get(images, 0));
                    dg_images_free(images);
                    out
                })
            })
            .collect();
        let results: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results[0] == results[1], "same request, same pixels");
        dg_params_free(params);
        dg_pipeline_free(pipeline);
    }
}

#[test]
fn images_encode_and_write() {
    let dir = tempfile::tempdir().unwrap();
    unsafe {
        let pipeline = load("tiny-sd");
        let params = euler_params();
        ok(dg_params_set_num_images(params, 2));
        let images = generate(pipeline, params, None, ptr::null_mut(), ptr::null()).unwrap();
        assert_eq!(dg_images_count(images), 2);
        let img = dg_images_get(images, 1);

        let mut buf = ptr::null_mut();
        ok(dg_image_encode_png(img, &mut buf));
        let png = buffer(buf);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

        ok(dg_image_encode_jpeg(img, 90, &mut buf));
        let jpeg = buffer(buf);
        assert_eq!(&jpeg[..3], b"\xff\xd8\xff");

        let mut buf = sentinel();
        expect_err(
            dg_image_encode_jpeg(img, 0, &mut buf),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["quality"],
        );
        assert_eq!(buf, sentinel());

        let png_path = dir.path().join("missing/dirs/out.png");
        ok(dg_image_write_png(
            img,
            cstr(png_path.to_str().unwrap()).as_ptr(),
        ));
        let back = Image::load_png(&png_path).unwrap();
        assert!(back.pixels == pixels(img));

        let jpeg_path = dir.path().join("other/out.jpg");
        let jpeg_path = cstr(jpeg_path.to_str().unwrap());
        ok(dg_image_write_jpeg(img, jpeg_path.as_ptr(), 85));
        let bytes = std::fs::read(jpeg_path.to_str().unwrap()).unwrap();
        assert_eq!(&bytes[..3], b"\xff\xd8\xff");
        expect_err(
            dg_image_write_jpeg(img, jpeg_path.as_ptr(), 101),
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            &["101"],
        );

        dg_images_free(images);
        dg_params_free(params);
        dg_pipeline_free(pipeline);
    }
}

#[test]
fn thread_counts_over_the_limit_fail_runtime_creation() {
    unsafe {
        for (key, value) in [("intra_threads", "100000"), ("sessions_per_graph", "65")] {
            let mut opts = ptr::null_mut();
            ok(dg_runtime_options_new(&mut opts));
            let (key, value) = (cstr(key), cstr(value));
            ok(dg_runtime_options_set(opts, key.as_ptr(), value.as_ptr()));
            let mut rt = sentinel();
            expect_err(
                dg_runtime_new(opts, &mut rt),
                dg_error_code_t::DG_ERROR_INVALID_ARG,
                &[key.to_str().unwrap(), "between 1 and"],
            );
            assert_eq!(rt, sentinel(), "the out-param is untouched");
            dg_runtime_options_free(opts);
        }
    }
}
