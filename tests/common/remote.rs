//! Helpers shared by the remote-generator tests: deterministic images, generators pointed at a
//! local server with short limits, and checked remote failures.
#![allow(dead_code)]

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use diffgentor::generators::{remote, Generator, GeneratorOptions};
use diffgentor::{Error, ErrorCode, Image, Output, RemoteError, Request};

/// A `width` x `height` image with distinct pixels, so a wrong decode shows.
pub fn test_image(width: u32, height: u32) -> Image {
    let pixels = (0..width * height * 3)
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    Image {
        width,
        height,
        pixels,
    }
}

/// An image as base64 PNG, the way image APIs send them.
pub fn png_b64(image: &Image) -> String {
    STANDARD.encode(image.encode_png(&[]).unwrap())
}

/// A `backend` generator for `base_url` with `key`, a 5 s timeout and one retry; `extra` adds or
/// overrides options.
pub fn generator(
    backend: &str,
    base_url: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> Arc<dyn Generator> {
    let mut options = GeneratorOptions::new();
    options
        .set("base_url", base_url)
        .set("api_key", key)
        .set("timeout_s", "5")
        .set("max_retries", "1");
    for (name, value) in extra {
        options.set(name, value);
    }
    remote(backend, &options).unwrap_or_else(|e| panic!("the {backend} generator is made: {e}"))
}

pub fn run(generator: &dyn Generator, request: &Request) -> Result<Output, Error> {
    generator.generate(request, &mut |_| true)
}

pub fn sized(prompt: &str, width: u32, height: u32) -> Request {
    Request {
        width: Some(width),
        height: Some(height),
        ..Request::new(prompt)
    }
}

/// The remote error of a failed call, with its code checked: (message, structure).
pub fn remote_failure(result: Result<Output, Error>, code: ErrorCode) -> (String, RemoteError) {
    let err = result.expect_err("the call fails");
    assert_eq!(err.code(), code, "{err}");
    let remote = err.remote().expect("a remote error").clone();
    (err.to_string(), remote)
}
