//! The optimized-graph cache: written once, hit afterwards with identical results, and never the
//! reason a load fails (a corrupt entry falls back to the source graph and is replaced).
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use diffgentor::runtime::{CacheStatus, Graph, Input, OptimizationLevel, TensorRtOptions};
use diffgentor::{ErrorCode, ExecutionProvider, Pipeline, Request, Runtime, RuntimeOptions};
use ndarray::ArrayD;

fn cached_runtime(dir: &Path, level: OptimizationLevel, sessions: usize) -> Arc<Runtime> {
    common::runtime();
    Runtime::new(RuntimeOptions {
        ort_library: common::ort_library(),
        optimized_graph_cache: Some(dir.to_path_buf()),
        optimization: level,
        sessions_per_graph: sessions,
        ..RuntimeOptions::default()
    })
    .expect("runtime")
}

fn unet_path() -> PathBuf {
    common::model_dir("tiny-sd").join("unet/model.onnx")
}

fn load(runtime: &Runtime) -> Graph {
    runtime
        .load_graph("unet", &unet_path())
        .expect("unet loads")
}

fn unet_output(graph: &Graph) -> ArrayD<f32> {
    let sample = ArrayD::from_shape_fn(vec![2, 4, 8, 8], |i| {
        ((i[1] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 11.0 - 0.5
    });
    let cond = ArrayD::from_shape_fn(vec![2, 77, 32], |i| ((i[1] + i[2]) % 5) as f32 / 5.0);
    let t = ArrayD::from_elem(vec![], 500.0f32);
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

/// The one entry directory the cache holds (temporary directories must not be left behind).
fn only_entry(cache: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = fs::read_dir(cache)
        .expect("cache dir exists")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0]
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("unet-")),
        "{entries:?}"
    );
    entries[0].clone()
}

#[test]
fn the_first_load_writes_an_entry_and_later_loads_hit_it_with_identical_results() {
    let reference = unet_output(&load(&common::runtime()));
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = cached_runtime(dir.path(), OptimizationLevel::All, 1);

    let first = load(&runtime);
    assert_eq!(first.cache_status(), &CacheStatus::Written);
    let entry = only_entry(dir.path());
    for file in ["model.onnx", "model.onnx_data", "manifest.txt"] {
        assert!(
            entry.join(file).is_file(),
            "{file} missing in {}",
            entry.display()
        );
    }
    assert_eq!(unet_output(&first), reference);

    let second = load(&runtime);
    assert_eq!(second.cache_status(), &CacheStatus::Hit);
    assert_eq!(unet_output(&second), reference);
}

#[test]
fn a_corrupt_entry_falls_back_to_the_source_graph_and_is_replaced() {
    let reference = unet_output(&load(&common::runtime()));
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = cached_runtime(dir.path(), OptimizationLevel::All, 1);
    load(&runtime);
    let model = only_entry(dir.path()).join("model.onnx");

    // Garbage of the same length: the manifest's sizes still match, ONNX Runtime rejects the file.
    let len = fs::metadata(&model).expect("model").len() as usize;
    fs::write(&model, vec![0xA5u8; len]).expect("overwrite");
    let graph = load(&runtime);
    assert!(
        matches!(graph.cache_status(), CacheStatus::Replaced { .. }),
        "{:?}",
        graph.cache_status()
    );
    assert_eq!(unet_output(&graph), reference);
    assert_eq!(
        load(&runtime).cache_status(),
        &CacheStatus::Hit,
        "the entry was rewritten"
    );

    // A truncated weights file (a crash mid-copy by someone else) is caught by the manifest.
    let data = only_entry(dir.path()).join("model.onnx_data");
    let bytes = fs::read(&data).expect("data");
    fs::write(&data, &bytes[..bytes.len() / 2]).expect("truncate");
    let graph = load(&runtime);
    match graph.cache_status() {
        CacheStatus::Replaced { reason } => assert!(reason.contains("model.onnx_data"), "{reason}"),
        other => panic!("expected Replaced, got {other:?}"),
    }
    assert_eq!(unet_output(&graph), reference);

    // A missing manifest (an entry from a writer that was not this code) is replaced too.
    fs::remove_file(only_entry(dir.path()).join("manifest.txt")).expect("remove manifest");
    let graph = load(&runtime);
    assert!(matches!(graph.cache_status(), CacheStatus::Replaced { .. }));
    assert_eq!(load(&runtime).cache_status(), &CacheStatus::Hit);
}

#[test]
fn each_optimisation_level_has_its_own_entry_and_disable_uses_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    load(&cached_runtime(dir.path(), OptimizationLevel::All, 1));
    let graph = load(&cached_runtime(dir.path(), OptimizationLevel::Extended, 1));
    assert_eq!(graph.cache_status(), &CacheStatus::Written);
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 2);

    let graph = load(&cached_runtime(dir.path(), OptimizationLevel::Disable, 1));
    assert_eq!(graph.cache_status(), &CacheStatus::Off);
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 2);
}

#[test]
fn an_unwritable_cache_never_fails_a_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file where the cache directory should be.
    let blocked = dir.path().join("cache");
    fs::write(&blocked, b"not a directory").expect("write");
    let graph = load(&cached_runtime(&blocked, OptimizationLevel::All, 1));
    assert!(
        matches!(graph.cache_status(), CacheStatus::WriteFailed { .. }),
        "{:?}",
        graph.cache_status()
    );
    assert_eq!(unet_output(&graph), unet_output(&load(&common::runtime())));
}

#[test]
fn extra_sessions_load_from_the_entry_with_identical_results() {
    let reference = unet_output(&load(&common::runtime()));
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = load(&cached_runtime(dir.path(), OptimizationLevel::All, 2));
    graph.reserve_sessions(2).expect("second session");
    assert_eq!(graph.pool_stats().sessions, 2);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..3 {
                    assert_eq!(unet_output(&graph), reference);
                }
            });
        }
    });
}

#[test]
fn a_cached_pipeline_makes_the_same_images() {
    let mut request = Request::new("a lighthouse at dusk");
    request.steps = 3;
    request.seed = Some(5);
    let expected = common::pipeline("tiny-sd")
        .generate(&request)
        .expect("generate");
    let dir = tempfile::tempdir().expect("tempdir");
    for expected_status in [CacheStatus::Written, CacheStatus::Hit] {
        let runtime = cached_runtime(dir.path(), OptimizationLevel::All, 1);
        let pipeline = Pipeline::load(runtime, &common::model_dir("tiny-sd")).expect("pipeline");
        let model = pipeline.model();
        for graph in model.graphs() {
            assert_eq!(
                graph.cache_status(),
                &expected_status,
                "{}",
                graph.component()
            );
        }
        let output = pipeline.generate(&request).expect("generate");
        assert_eq!(output.images[0].pixels, expected.images[0].pixels);
    }
}

#[test]
fn tensorrt_with_the_cache_is_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::runtime();
    let err = Runtime::new(RuntimeOptions {
        ort_library: common::ort_library(),
        execution_provider: ExecutionProvider::TensorRt {
            device_id: 0,
            options: TensorRtOptions::default(),
        },
        optimized_graph_cache: Some(dir.path().to_path_buf()),
        ..RuntimeOptions::default()
    })
    .expect_err("TensorRT cannot use the cache");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(err.to_string().contains("engine cache"), "{err}");
}
