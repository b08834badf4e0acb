//! Session pools: `sessions_per_graph` sessions run one graph concurrently, built only when needed,
//! never more than asked for, with the same results as one session.
mod common;

use std::sync::{Arc, Barrier};

use diffgentor::runtime::{Graph, Input};
use diffgentor::{ErrorCode, Pipeline, Request, Runtime, RuntimeOptions};
use ndarray::ArrayD;

fn runtime_with_sessions(n: usize) -> Arc<Runtime> {
    common::runtime();
    Runtime::new(RuntimeOptions {
        ort_library: common::ort_library(),
        sessions_per_graph: n,
        ..RuntimeOptions::default()
    })
    .expect("runtime")
}

fn unet(runtime: &Runtime) -> Graph {
    runtime
        .load_graph(
            "unet",
            &common::model_dir("tiny-sd").join("unet/model.onnx"),
        )
        .expect("tiny-sd unet")
}

/// Deterministic inputs for run `k`: a sample and text embeddings that differ per run.
fn inputs(k: usize) -> (ArrayD<f32>, ArrayD<f32>, ArrayD<f32>) {
    let sample = ArrayD::from_shape_fn(vec![2, 4, 8, 8], |i| {
        ((i[0] * 31 + i[1] * 7 + i[2] * 3 + i[3] + k) % 17) as f32 / 17.0 - 0.5
    });
    let cond = ArrayD::from_shape_fn(vec![2, 77, 32], |i| {
        ((i[1] * 5 + i[2] + 3 * k) % 13) as f32 / 13.0 - 0.5
    });
    let timestep = ArrayD::from_elem(vec![], 900.0 - 50.0 * k as f32);
    (sample, cond, timestep)
}

fn run(graph: &Graph, k: usize) -> ArrayD<f32> {
    let (sample, cond, t) = inputs(k);
    graph
        .run(
            &[
                ("sample", Input::F32(sample.view())),
                ("timestep", Input::F32(t.view())),
                ("encoder_hidden_states", Input::F32(cond.view())),
            ],
            "out_sample",
        )
        .expect("unet run")
        .0
}

#[test]
fn zero_sessions_per_graph_is_an_invalid_argument() {
    common::runtime();
    let err = Runtime::new(RuntimeOptions {
        ort_library: common::ort_library(),
        sessions_per_graph: 0,
        ..RuntimeOptions::default()
    })
    .expect_err("0 sessions");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("sessions_per_graph"), "{err}");
}

#[test]
fn a_single_user_builds_one_session_however_many_are_allowed() {
    let graph = unet(&runtime_with_sessions(4));
    for k in 0..3 {
        run(&graph, k);
    }
    let stats = graph.pool_stats();
    assert_eq!((stats.limit, stats.sessions, stats.peak_in_use), (4, 1, 1));
}

#[test]
fn concurrent_runs_use_at_most_n_sessions_and_match_one_session_bit_for_bit() {
    let single = unet(&common::runtime());
    let expected: Vec<ArrayD<f32>> = (0..8).map(|k| run(&single, k)).collect();

    let graph = unet(&runtime_with_sessions(2));
    graph.reserve_sessions(5).expect("reserve");
    assert_eq!(
        graph.pool_stats().sessions,
        2,
        "reserve is capped at the limit"
    );

    // Two threads start their runs together (the barrier); four threads then keep both sessions busy.
    let barrier = Barrier::new(4);
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (graph, expected, barrier) = (&graph, &expected, &barrier);
            scope.spawn(move || {
                barrier.wait();
                for round in 0..4 {
                    let k = (thread + round * 4) % 8;
                    assert_eq!(
                        run(graph, k),
                        expected[k],
                        "run {k} differs from one session's"
                    );
                }
            });
        }
    });
    let stats = graph.pool_stats();
    assert_eq!((stats.sessions, stats.in_use), (2, 0), "{stats:?}");
    assert!(stats.peak_in_use <= 2, "{stats:?}");
}

#[test]
fn a_pipeline_with_two_sessions_per_graph_makes_the_same_images() {
    let mut request = Request::new("a red fox");
    request.steps = 3;
    let single = common::pipeline("tiny-sd");
    let expected: Vec<Vec<u8>> = (0..4u64)
        .map(|seed| {
            request.seed = Some(seed);
            single.generate(&request).expect("generate").images[0]
                .pixels
                .clone()
        })
        .collect();

    let pipeline =
        Pipeline::load(runtime_with_sessions(2), &common::model_dir("tiny-sd")).expect("pipeline");
    std::thread::scope(|scope| {
        for first in 0..2u64 {
            let (pipeline, expected, request) = (&pipeline, &expected, &request);
            scope.spawn(move || {
                for seed in [first, first + 2] {
                    let mut request = request.clone();
                    request.seed = Some(seed);
                    let output = pipeline.generate(&request).expect("generate");
                    assert_eq!(output.images[0].pixels, expected[seed as usize]);
                }
            });
        }
    });
    let unet = pipeline.model().denoiser.graph().pool_stats();
    assert!(unet.sessions <= 2 && unet.peak_in_use <= 2, "{unet:?}");
}
