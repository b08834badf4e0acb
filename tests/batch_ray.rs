//! bindings/python/examples/ray_batch.py on a local Ray (`num_cpus=2`, started by the example):
//! the same names, manifest rows and pixels as `dg t2i` over the same Parquet rows and seeds, with
//! per-row steps and image counts (`--param-column`; `dg t2i` reads those columns by their names).
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use diffgentor::Image;
use serde_json::Value;

/// The manifest's `(index, status, outputs, error)` per row.
fn manifest(dir: &Path) -> Vec<(u64, String, Value, Value)> {
    let text = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    let mut rows: BTreeMap<u64, (u64, String, Value, Value)> = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let index = v["index"].as_u64().unwrap();
        let status = v["status"].as_str().unwrap().to_string();
        rows.insert(
            index,
            (index, status, v["outputs"].clone(), v["error"].clone()),
        );
    }
    rows.into_values().collect()
}

#[test]
fn ray_data_writes_what_dg_t2i_writes() {
    let python = match common::peers::python() {
        Ok(python) => python,
        Err(why) => return common::peers::skip("ray_batch", &why),
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let status = Command::new(&python)
        .arg(repo.join("tests/batch/write_tables.py"))
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    let input = tmp.path().join("ray.parquet");
    let model = common::model_dir("digits");
    let flags = [
        "--steps",
        "2",
        "--guidance",
        "7.5",
        "--seed",
        "100",
        "--output-name-column",
        "name",
    ];

    let dg_out = tmp.path().join("dg");
    let mut dg = Command::new(env!("CARGO_BIN_EXE_dg"));
    dg.arg("t2i")
        .arg("--model")
        .arg(&model)
        .arg("--input")
        .arg(&input);
    dg.arg("--output-dir").arg(&dg_out).args(flags);
    let ray_out = tmp.path().join("ray");
    let library = Path::new(env!("CARGO_BIN_EXE_dg")).with_file_name("libdiffgentor.so");
    let mut ray = Command::new(&python);
    ray.arg(repo.join("bindings/python/examples/ray_batch.py"))
        .arg("--model")
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output-dir")
        .arg(&ray_out)
        .args(["--num-cpus", "2", "--actors", "2", "--batch-size", "1"])
        .args(["--param-column", "steps", "--param-column", "num_images"])
        .args(flags)
        .env("PYTHONPATH", repo.join("bindings/python/src"))
        .env("DG_LIBRARY_PATH", &library);
    if let Some(lib) = common::ort_library() {
        dg.env("DG_ORT_DYLIB_PATH", &lib);
        ray.env("DG_ORT_DYLIB_PATH", &lib);
    }
    let dg = dg.output().unwrap();
    assert_eq!(dg.status.code(), Some(1), "row 3 names a file row 0 owns");
    let ray = ray.output().unwrap();
    let ray_log = String::from_utf8_lossy(&ray.stderr);
    assert_eq!(ray.status.code(), Some(1), "{ray_log}");
    assert!(
        String::from_utf8_lossy(&ray.stdout).contains("ray_batch: 3 ok, 1 failed"),
        "{ray_log}"
    );

    let (dg_rows, ray_rows) = (manifest(&dg_out), manifest(&ray_out));
    assert_eq!(dg_rows, ray_rows, "same rows, statuses, names and errors");
    assert_eq!(
        ray_rows[3].3,
        "output a/one.png is already written by row 0: two rows may not write the same file"
    );
    for (_, status, outputs, _) in &dg_rows {
        for name in outputs.as_array().unwrap() {
            let name = name.as_str().unwrap();
            let dg_image = Image::load_png(&dg_out.join(name)).unwrap();
            let ray_image = Image::load_png(&ray_out.join(name)).unwrap();
            assert_eq!(dg_image, ray_image, "{name} ({status}): the same pixels");
        }
    }
    assert_eq!(dg_rows[1].2, serde_json::json!(["b/two.png"]));
    assert_eq!(
        dg_rows[2].2,
        serde_json::json!(["three_00.png", "three_01.png"]),
        "the row's own num_images"
    );
    // The manifest was appended as rows finished, then rewritten one line per row.
    let text = std::fs::read_to_string(ray_out.join("manifest.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert!(text.contains("\"written_ns\":"), "{text}");
}
