//! Shared test setup: the runtime (ONNX Runtime from `make ort`) and paths into the repository.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use diffgentor::{Pipeline, Runtime, RuntimeOptions};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn model_dir(name: &str) -> PathBuf {
    repo().join("models").join(name)
}

/// `make test` exports DG_ORT_DYLIB_PATH; a bare `cargo test` after `make ort` finds .ort/lib.
pub fn ort_library() -> Option<PathBuf> {
    if std::env::var_os("DG_ORT_DYLIB_PATH").is_some() {
        return None;
    }
    let bundled = repo().join(".ort/lib/libonnxruntime.so.1.31.1");
    bundled.is_file().then_some(bundled)
}

pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Runtime::new(RuntimeOptions {
                ort_library: ort_library(),
                ..RuntimeOptions::default()
            })
            .unwrap_or_else(|e| panic!("ONNX Runtime must load (run `make ort`): {e}"))
        })
        .clone()
}

pub fn pipeline(name: &str) -> Pipeline {
    Pipeline::load(runtime(), &model_dir(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// Copies a model package into a temp dir so a test can damage one file of it.
pub fn copy_model(name: &str, into: &Path) -> PathBuf {
    let dst = into.join(name);
    copy_dir(&model_dir(name), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
