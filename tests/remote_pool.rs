//! The endpoint pool behind remote generators, with three local endpoints: one failing, one slow,
//! one quick. Every request succeeds, the breaker takes the failing one out and lets it back in,
//! load spreads over the healthy ones, and a key whose quota is gone is never tried again.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::http::{Reply, TestServer};
use diffgentor::generators::{remote, Generator, GeneratorOptions};
use diffgentor::{ErrorCode, Image, Request};
use serde_json::json;

fn ok() -> Reply {
    let png = Image::from_raw(&[9; 4 * 4 * 3], 4, 4, 3, 12)
        .unwrap()
        .encode_png(&[])
        .unwrap();
    Reply::json(
        200,
        &json!({"created": 1, "data": [{"b64_json": STANDARD.encode(png)}]}),
    )
}

fn failing() -> Reply {
    Reply::json(
        500,
        &json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}),
    )
}

/// An OpenAI generator over the endpoints of a pool file; the keys come from the environment
/// variable names the file gives, so the file holds no secret.
fn pooled(
    servers: &[&TestServer],
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Arc<dyn Generator> {
    let endpoints: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"base_url": s.url("/v1"), "api_key": format!("sk-pool-key-{i}")}))
        .collect();
    let file = dir.join("pool.json");
    std::fs::write(&file, json!({"endpoints": endpoints}).to_string()).unwrap();
    let mut options = GeneratorOptions::new();
    options
        .set("pool_file", file.to_str().unwrap())
        .set("model", "sd-turbo")
        .set("timeout_s", "5")
        .set("max_retries", "3")
        .set("backoff_s", "0.01")
        .set("max_backoff_s", "0.02");
    for (k, v) in extra {
        options.set(k, v);
    }
    remote("openai", &options).expect("pool")
}

fn request() -> Request {
    Request::new("a fox")
}

#[test]
fn failing_endpoint_is_routed_around_and_the_breaker_opens_and_closes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let bad = TestServer::start(move |_, _| {
        if flag.load(Ordering::Relaxed) {
            ok()
        } else {
            failing()
        }
    });
    let slow = TestServer::start(|_, _| ok().delayed(Duration::from_millis(150)));
    let quick = TestServer::start(|_, _| ok());
    let dir = tempfile::tempdir().unwrap();
    let generator = pooled(
        &[&bad, &slow, &quick],
        dir.path(),
        &[("breaker_failures", "2"), ("breaker_cooldown_s", "2.5")],
    );

    // Twelve requests from four threads: all succeed though one endpoint always fails.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..3 {
                    generator
                        .generate(&request(), &mut |_| true)
                        .expect("retries reach a healthy endpoint");
                }
            });
        }
    });
    let (b, s, q) = (
        bad.requests().len(),
        slow.requests().len(),
        quick.requests().len(),
    );
    assert_eq!(
        s + q,
        12,
        "every request was answered by a healthy endpoint"
    );
    assert!(s >= 1 && q >= 1, "load spreads: slow {s}, quick {q}");
    // The breaker opened after two failures in a row: the failing endpoint saw few calls.
    assert!((1..=3).contains(&b), "failing endpoint called {b} times");

    // While open it is skipped...
    for _ in 0..4 {
        generator.generate(&request(), &mut |_| true).unwrap();
    }
    assert_eq!(bad.requests().len(), b, "an open breaker is not called");

    // ...after the cool-down one trial call goes through; a healthy answer closes it.
    healthy.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(2600));
    for _ in 0..6 {
        generator.generate(&request(), &mut |_| true).unwrap();
    }
    assert!(
        bad.requests().len() >= b + 2,
        "the recovered endpoint takes calls again ({} then {})",
        b,
        bad.requests().len()
    );
}

#[test]
fn a_key_without_quota_is_never_retried() {
    let dead = TestServer::start(|_, _| {
        Reply::json(
            429,
            &json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                              "param": null, "code": "insufficient_quota"}}),
        )
    });
    let live = TestServer::start(|_, _| ok());
    let dir = tempfile::tempdir().unwrap();
    let generator = pooled(&[&dead, &live], dir.path(), &[]);
    for _ in 0..6 {
        generator.generate(&request(), &mut |_| true).unwrap();
    }
    assert_eq!(dead.requests().len(), 1, "the dead key was tried once");
    assert_eq!(live.requests().len(), 6);

    // With no live key left the error says so, and names no key.
    let alone = pooled(&[&dead], dir.path(), &[]);
    let err = alone.generate(&request(), &mut |_| true).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RateLimited, "{err}");
    assert!(err.to_string().contains("quota"), "{err}");
    assert!(!format!("{err} {err:?} {alone:?}").contains("sk-pool-key"));
}

/// One endpoint with `options`, for the tests below.
fn single(server: &TestServer, extra: &[(&str, &str)]) -> Arc<dyn Generator> {
    let mut options = vec![
        ("model", "sd-turbo"),
        ("backoff_s", "0.01"),
        ("max_backoff_s", "0.02"),
    ];
    options.extend_from_slice(extra);
    common::remote::generator("openai", &server.url("/v1"), "sk-single-key", &options)
}

fn rate_limited(retry_after: (&str, &str)) -> Reply {
    Reply::json(
        429,
        &json!({"error": {"message": "Rate limit reached", "type": "requests",
                          "param": null, "code": "rate_limit_exceeded"}}),
    )
    .header(retry_after.0, retry_after.1)
}

#[test]
fn an_absurd_retry_after_fails_the_call_and_frees_the_slot() {
    let server = TestServer::start(|_, index| {
        if index == 0 {
            rate_limited(("retry-after", "1e20"))
        } else {
            ok()
        }
    });
    let generator = single(&server, &[("max_in_flight", "1"), ("timeout_s", "2")]);
    let err = generator.generate(&request(), &mut |_| true).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RateLimited, "{err}");
    assert!(err.to_string().contains("asks to retry after"), "{err}");
    // The only slot is free again: the next call goes straight through.
    generator.generate(&request(), &mut |_| true).unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn rate_limits_are_retried_but_never_open_the_breaker() {
    let server = TestServer::start(|_, _| rate_limited(("retry-after-ms", "10")));
    let generator = single(&server, &[("breaker_failures", "2"), ("max_retries", "3")]);
    for _ in 0..3 {
        let err = generator.generate(&request(), &mut |_| true).unwrap_err();
        assert_eq!(err.code(), ErrorCode::RateLimited, "{err}");
        assert!(err.to_string().contains("(after 4 attempts)"), "{err}");
    }
    assert_eq!(server.requests().len(), 12);
}

#[test]
fn a_request_cancelled_while_waiting_for_a_slot_is_never_sent() {
    let server = TestServer::start(|_, _| ok().delayed(Duration::from_millis(800)));
    let generator = single(&server, &[("max_in_flight", "1")]);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| generator.generate(&request(), &mut |_| true));
        std::thread::sleep(Duration::from_millis(100));
        let token = diffgentor::CancelToken::new();
        let mut waiting = request();
        waiting.cancel = Some(token.clone());
        let canceller = scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            token.cancel();
        });
        let started = std::time::Instant::now();
        let err = generator.generate(&waiting, &mut |_| true).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Cancelled, "{err}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "stopped waiting soon after the cancel, not when the slot freed"
        );
        canceller.join().unwrap();
        first.join().unwrap().expect("the first call completes");
    });
    assert_eq!(
        server.requests().len(),
        1,
        "the cancelled call was never sent"
    );
}

#[test]
fn an_oversized_error_answer_is_final() {
    let server = TestServer::start(|_, _| Reply::raw(500, "text/plain", vec![b'x'; 2 << 20]));
    let generator = single(&server, &[("max_retries", "2")]);
    let err = generator.generate(&request(), &mut |_| true).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote, "{err}");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    assert_eq!(server.requests().len(), 1, "not downloaded again");
}

#[test]
fn a_refused_key_leaves_the_rotation() {
    let refused = TestServer::start(|_, _| {
        Reply::json(
            401,
            &json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                              "param": null, "code": "invalid_api_key"}}),
        )
    });
    let live = TestServer::start(|_, _| ok());
    let dir = tempfile::tempdir().unwrap();
    let generator = pooled(&[&refused, &live], dir.path(), &[]);
    for _ in 0..6 {
        generator.generate(&request(), &mut |_| true).unwrap();
    }
    assert_eq!(
        refused.requests().len(),
        1,
        "the refused key was tried once"
    );
    assert_eq!(live.requests().len(), 6);
    // Alone, its error is the service's own: REMOTE with the 401, not a rate limit.
    let alone = pooled(&[&refused], dir.path(), &[]);
    let err = alone.generate(&request(), &mut |_| true).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote, "{err}");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
}
