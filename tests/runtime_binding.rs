//! IO binding: fixed inputs bound once, per-step inputs bound each run, one reused output buffer;
//! bit-identical to `Graph::run`.
mod common;

use diffgentor::runtime::{Graph, Input};
use diffgentor::{ErrorCode, Runtime, RuntimeOptions};
use ndarray::{ArrayD, Zip};

fn unet(runtime: &Runtime) -> Graph {
    runtime
        .load_graph(
            "unet",
            &common::model_dir("tiny-sd").join("unet/model.onnx"),
        )
        .expect("tiny-sd unet")
}

const SHAPE: [usize; 4] = [2, 4, 8, 8];

fn embeddings() -> ArrayD<f32> {
    ArrayD::from_shape_fn(vec![2, 77, 32], |i| {
        ((i[0] * 3 + i[1] * 5 + i[2]) % 13) as f32 / 13.0 - 0.5
    })
}

fn start_sample(seed: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(SHAPE.to_vec(), |i| {
        ((i[1] * 7 + i[2] * 3 + i[3] + seed) % 11) as f32 / 11.0 - 0.5
    })
}

fn timestep(step: usize) -> ArrayD<f32> {
    ArrayD::from_elem(vec![], 981.0 - 97.0 * step as f32)
}

/// A scheduler-like update, so every step's sample depends on the previous output.
fn mix(sample: &mut ArrayD<f32>, output: ndarray::ArrayViewD<'_, f32>) {
    Zip::from(sample)
        .and(&output)
        .for_each(|s, &o| *s = 0.9 * *s + 0.1 * o);
}

/// `steps` denoising-like steps through `Graph::run`: the outputs of every step.
fn plain_steps(graph: &Graph, seed: usize, steps: usize) -> Vec<ArrayD<f32>> {
    let cond = embeddings();
    let mut sample = start_sample(seed);
    (0..steps)
        .map(|step| {
            let t = timestep(step);
            let (output, _) = graph
                .run(
                    &[
                        ("sample", Input::F32(sample.view())),
                        ("timestep", Input::F32(t.view())),
                        ("encoder_hidden_states", Input::F32(cond.view())),
                    ],
                    "out_sample",
                )
                .expect("run");
            mix(&mut sample, output.view());
            output
        })
        .collect()
}

fn bound_steps(graph: &Graph, seed: usize, steps: usize) -> Vec<ArrayD<f32>> {
    let mut binding = graph.binding("out_sample", &SHAPE).expect("binding");
    binding
        .fix("encoder_hidden_states", Input::F32(embeddings().view()))
        .expect("fix");
    let mut sample = start_sample(seed);
    (0..steps)
        .map(|step| {
            let t = timestep(step);
            let (output, _) = binding
                .run(&[
                    ("sample", Input::F32(sample.view())),
                    ("timestep", Input::F32(t.view())),
                ])
                .expect("bound run");
            let output = output.to_owned();
            mix(&mut sample, output.view());
            output
        })
        .collect()
}

#[test]
fn bound_runs_match_plain_runs_bit_for_bit_over_several_steps() {
    let graph = unet(&common::runtime());
    let plain = plain_steps(&graph, 0, 5);
    let bound = bound_steps(&graph, 0, 5);
    for (step, (p, b)) in plain.iter().zip(&bound).enumerate() {
        assert_eq!(p, b, "step {step}");
    }
    // The outputs really change from step to step (the test would be vacuous otherwise).
    assert_ne!(plain[0], plain[1]);
}

#[test]
fn every_run_writes_into_the_same_output_buffer() {
    let graph = unet(&common::runtime());
    let mut binding = graph.binding("out_sample", &SHAPE).expect("binding");
    binding
        .fix("encoder_hidden_states", Input::F32(embeddings().view()))
        .expect("fix");
    let sample = start_sample(1);
    let mut pointers = Vec::new();
    for step in 0..3 {
        let t = timestep(step);
        let (output, _) = binding
            .run(&[
                ("sample", Input::F32(sample.view())),
                ("timestep", Input::F32(t.view())),
            ])
            .expect("bound run");
        pointers.push(output.as_ptr() as usize);
    }
    assert!(pointers.windows(2).all(|w| w[0] == w[1]), "{pointers:?}");
}

#[test]
fn bindings_share_the_session_pool_across_threads() {
    common::runtime();
    let runtime = Runtime::new(RuntimeOptions {
        ort_library: common::ort_library(),
        sessions_per_graph: 2,
        ..RuntimeOptions::default()
    })
    .expect("runtime");
    let graph = unet(&runtime);
    let expected: Vec<Vec<ArrayD<f32>>> = (0..2).map(|seed| plain_steps(&graph, seed, 4)).collect();
    std::thread::scope(|scope| {
        for seed in 0..2 {
            let (graph, expected) = (&graph, &expected);
            scope.spawn(move || assert_eq!(bound_steps(graph, seed, 4), expected[seed]));
        }
    });
    // Two bindings alive on one thread with one session each run: no deadlock, both work.
    let single = unet(&common::runtime());
    let first = bound_steps(&single, 0, 2);
    let mut a = single.binding("out_sample", &SHAPE).expect("a");
    let mut b = single.binding("out_sample", &SHAPE).expect("b");
    let cond = embeddings();
    a.fix("encoder_hidden_states", Input::F32(cond.view()))
        .expect("fix a");
    b.fix("encoder_hidden_states", Input::F32(cond.view()))
        .expect("fix b");
    let (sample, t) = (start_sample(0), timestep(0));
    let step = [
        ("sample", Input::F32(sample.view())),
        ("timestep", Input::F32(t.view())),
    ];
    let from_a = a.run(&step).expect("a runs").0.to_owned();
    let from_b = b.run(&step).expect("b runs").0.to_owned();
    assert_eq!(from_a, first[0]);
    assert_eq!(from_b, first[0]);
}

#[test]
fn bad_bindings_are_errors_not_panics() {
    let graph = unet(&common::runtime());
    let err = graph
        .binding("no_such_output", &SHAPE)
        .expect_err("unknown output");
    assert_eq!(err.code(), ErrorCode::InvalidArg);

    // A per-step input missing: ONNX Runtime's error, as a backend error naming the graph.
    let mut binding = graph.binding("out_sample", &SHAPE).expect("binding");
    binding
        .fix("encoder_hidden_states", Input::F32(embeddings().view()))
        .expect("fix");
    let sample = start_sample(0);
    let err = binding
        .run(&[("sample", Input::F32(sample.view()))])
        .expect_err("timestep missing");
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(err.to_string().contains("unet"), "{err}");

    // An output buffer of the wrong shape.
    let mut wrong = graph.binding("out_sample", &[1, 4, 8, 8]).expect("binding");
    wrong
        .fix("encoder_hidden_states", Input::F32(embeddings().view()))
        .expect("fix");
    let t = timestep(0);
    let err = wrong
        .run(&[
            ("sample", Input::F32(sample.view())),
            ("timestep", Input::F32(t.view())),
        ])
        .expect_err("shape mismatch");
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
}
