//! `dg t2i --input` / `dg edit --input`: tables written by pandas and pyarrow, naming rules,
//! row-level errors, kill -9 and resume, shards (docs/batch.md). Everything runs the `dg` binary
//! on models/digits with few steps, so the whole file takes seconds.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use diffgentor::Image;
use serde_json::{json, Value};

fn digits() -> String {
    common::model_dir("digits").display().to_string()
}

fn dg_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
    cmd.args(args);
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "NODE_RANK",
        "GROUP_RANK",
    ] {
        cmd.env_remove(var);
    }
    if let Some(lib) = common::ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd
}

/// Runs `dg` and returns its status code, stdout and stderr.
fn dg(args: &[&str]) -> (i32, String, String) {
    finish(dg_command(args).output().expect("dg runs"))
}

fn finish(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dg t2i` on models/digits, 2 steps, base seed 100, over `input` into `out`, plus `extra`.
fn t2i(input: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let args = t2i_args(input, out, extra);
    dg(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `dg t2i` over `input` into `out` with the tests' settings (digits, 2 steps, seed 100), then
/// `extra`.
fn t2i_args(input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let (input, out) = (input.display().to_string(), out.display().to_string());
    let mut args = vec![
        "t2i",
        "--model",
        &*digits(),
        "--input",
        &input,
        "--output-dir",
        &out,
        "--steps",
        "2",
        "--seed",
        "100",
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The parseable lines of a manifest, by row index (the last line of each row).
fn manifest(path: &Path) -> BTreeMap<u64, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["index"].as_u64().unwrap(), v))
        .collect()
}

fn error_of(manifest: &BTreeMap<u64, Value>, row: u64) -> String {
    manifest[&row]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every file under `dir` (not the manifests, logs or symlinks), by relative path, with its bytes.
fn images(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(dir).unwrap().display().to_string();
            if relative == "logs" || relative.starts_with("manifest") {
                continue;
            }
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                stack.push(path);
            } else {
                found.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// The test tables, written once by tests/batch/write_tables.py (pandas and pyarrow); `None`
/// (after `common::peers::skip`) where the Python peers cannot be installed.
fn tables() -> Option<&'static Path> {
    static TABLES: OnceLock<Option<PathBuf>> = OnceLock::new();
    TABLES
        .get_or_init(|| {
            let python = match common::peers::python() {
                Ok(python) => python,
                Err(why) => {
                    common::peers::skip("batch tables", &why);
                    return None;
                }
            };
            let dir = tempfile::tempdir().unwrap().keep();
            let script = common::repo().join("tests/batch/write_tables.py");
            let out = Command::new(python).arg(script).arg(&dir).output().unwrap();
            assert!(
                out.status.success(),
                "write_tables.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(dir)
        })
        .as_deref()
}

#[test]
fn tables_from_pandas_pyarrow_and_jsonl_read_alike() {
    let Some(tables) = tables() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = BTreeMap::new();
    for name in ["prompts.parquet", "prompts.csv", "prompts.jsonl"] {
        let out = tmp.path().join(name);
        let (code, stdout, stderr) = t2i(&tables.join(name), &out, &[]);
        assert_eq!(
            code, 1,
            "{name}: a failed row sets the exit status: {stderr}"
        );
        assert!(
            stderr.contains(
                "error: row 4: column `steps` = \"many\": invalid value `many` for parameter \
                 `steps`"
            ),
            "{name}: {stderr}"
        );
        let m = manifest(&out.join("manifest.jsonl"));
        assert_eq!(
            error_of(&m, 4),
            "column `steps` = \"many\": invalid value `many` for parameter `steps`: invalid digit \
             found in string"
        );
        // Unicode survives; row 1 has no seed, so it gets --seed plus its index; its steps
        // column (text "3") overrides --steps.
        let p = &m[&1]["parameters"];
        assert_eq!(
            p["prompt"], "ein handgeschriebenes Ziffer 1 ✓ — 数字",
            "{name}"
        );
        assert_eq!(
            (m[&1]["seed"].clone(), p["steps"].clone()),
            (json!(101), json!(3))
        );
        assert_eq!(m[&0]["seed"], 10, "{name}: the seed column wins");
        assert_eq!(
            m[&2]["parameters"]["prompt"], "",
            "{name}: an empty prompt runs"
        );
        if name == "prompts.csv" {
            // pandas writes a null as an empty cell: in CSV it is the empty prompt.
            assert_eq!(m[&3]["status"], "ok");
            assert!(stdout.contains("batch: 5 ok, 1 failed, 0 already done, of 6 rows"));
        } else {
            assert_eq!(
                error_of(&m, 3),
                "no prompt: column `prompt` is empty",
                "{name}"
            );
            assert!(stderr.contains("error: row 3: no prompt: column `prompt` is empty"));
            assert!(stdout.contains("batch: 4 ok, 2 failed, 0 already done, of 6 rows"));
        }
        // Failed rows are the data's doing, not an internal error.
        let failed = if name == "prompts.csv" { 1 } else { 2 };
        assert!(
            stderr.contains(&format!(
                "error: invalid argument: {failed} of 6 rows failed (see {}",
                out.join("manifest.jsonl").display()
            )),
            "{name}: {stderr}"
        );
        runs.insert(name, images(&out));
    }
    // The same rows give the same bytes whatever wrote the table.
    for file in ["000000.png", "000001.png", "000002.png", "000005.png"] {
        let bytes = &runs["prompts.parquet"][file];
        assert_eq!(bytes, &runs["prompts.csv"][file], "{file}");
        assert_eq!(bytes, &runs["prompts.jsonl"][file], "{file}");
    }
    assert!(!runs["prompts.parquet"].contains_key("000003.png"));

    let out = tmp.path().join("large");
    let (code, _, stderr) = t2i(&tables.join("large.parquet"), &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let m = manifest(&out.join("manifest.jsonl"));
    assert_eq!(m[&1]["parameters"]["prompt"], "digit 8");
    assert_eq!(images(&out).len(), 2);
}

#[test]
fn bad_input_files_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("t.csv");
    std::fs::write(&csv, "text,seed\nhello,1\n").unwrap();
    let garbage = tmp.path().join("t.parquet");
    std::fs::write(&garbage, b"PAR1 this is not parquet").unwrap();
    let unknown = tmp.path().join("t.xlsx");
    std::fs::write(&unknown, b"x").unwrap();
    let cases: [(&Path, &[&str], &str); 5] = [
        (
            &csv,
            &[],
            "no `prompt` column (the table has: text, seed); choose another with --prompt-column",
        ),
        (
            &csv,
            &["--prompt-column", "text", "--output-name-column", "name"],
            "no `name` column (the table has: text, seed)",
        ),
        (
            &tmp.path().join("missing.jsonl"),
            &[],
            "missing.jsonl: cannot open: No such file",
        ),
        (
            &unknown,
            &[],
            "unknown table format `.xlsx` (expected .csv, .tsv, .jsonl or .parquet)",
        ),
        (&garbage, &[], "t.parquet: "),
    ];
    for (i, (input, extra, expected)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let (code, _, stderr) = t2i(input, &out, extra);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.starts_with("error: invalid argument: --input ") && stderr.contains(expected),
            "{expected}: {stderr}"
        );
        assert!(!out.exists(), "nothing is written before the input is read");
    }
    // --prompt-column picks the column; --input without --output-dir is refused by clap.
    let out = tmp.path().join("ok");
    let (code, _, stderr) = t2i(&csv, &out, &["--prompt-column", "text"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("000000.png").is_file());
    let (code, _, stderr) = dg(&["t2i", "--model", &digits(), "--input", "x.csv"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--output-dir <DIR>"), "{stderr}");
}

/// A 16x16 RGB PNG whose pixels are `f(x, y)` grey.
fn grey_png(path: &Path, side: u32, f: impl Fn(u32, u32) -> u8) {
    let pixels = (0..side * side)
        .flat_map(|i| [f(i % side, i / side); 3])
        .collect();
    let image = Image {
        width: side,
        height: side,
        pixels,
    };
    image.save_png(path, &[]).unwrap();
}

#[test]
fn edit_rows_fail_alone_and_the_batch_goes_on() {
    let Some(tables) = tables() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("edit.parquet");
    std::fs::copy(tables.join("edit.parquet"), &input).unwrap();
    grey_png(&tmp.path().join("src.png"), 16, |x, _| (x * 16) as u8);
    grey_png(&tmp.path().join("mask.png"), 16, |x, _| {
        if x > 8 {
            255
        } else {
            0
        }
    });
    grey_png(&tmp.path().join("small_mask.png"), 8, |_, _| 255);
    std::fs::write(tmp.path().join("garbage.png"), b"not a png at all").unwrap();
    let out = tmp.path().join("out");
    let (input_arg, out_arg) = (input.display().to_string(), out.display().to_string());
    let (code, stdout, stderr) = dg(&[
        "edit",
        "--model",
        &digits(),
        "--input",
        &input_arg,
        "--output-dir",
        &out_arg,
        "--steps",
        "2",
        "--strength",
        "0.5",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("batch: 2 ok, 4 failed"), "{stdout}");
    let m = manifest(&out.join("manifest.jsonl"));
    let dir = tmp.path().display();
    let expected = [
        (
            1,
            format!("image {dir}/nope.png: No such file or directory"),
        ),
        (
            2,
            format!("image {dir}/garbage.png: not a PNG, JPEG or WebP image"),
        ),
        (3, "mask is 8x8 but the request is 16x16".to_string()),
        (
            4,
            "2 source images given, but a request takes one image".to_string(),
        ),
    ];
    for (row, error) in expected {
        assert!(
            error_of(&m, row).starts_with(&error),
            "row {row}: {}",
            error_of(&m, row)
        );
        assert!(
            stderr.contains(&format!("error: row {row}: {error}")),
            "{stderr}"
        );
    }
    assert_eq!(m[&0]["parameters"]["strength"], 0.5);
    assert_eq!(m[&5]["parameters"]["mask"], format!("{dir}/mask.png"));
    let written = images(&out);
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        ["000000.png", "000005.png"]
    );
    // Rows 0 and 5 differ only by the mask: inpainting keeps the unmasked half.
    let (a, b) = (
        Image::decode(&written["000000.png"]).unwrap(),
        Image::decode(&written["000005.png"]).unwrap(),
    );
    assert_eq!((a.width, a.height, b.width), (16, 16, 16));
}

/// Writes `rows` as JSON Lines.
fn jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn output_names_follow_the_ancestors_rules_and_never_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    std::fs::create_dir_all(out.join("inner")).unwrap();
    std::os::unix::fs::symlink(out.join("inner"), out.join("good_link")).unwrap();
    let names = [
        json!("aaa/bb/1"),
        json!("aaa/bb/2.jpg"),
        json!("c.JPEG"),
        json!("d.webp"),
        json!("/abs/x"),
        json!("a/../../x"),
        json!("nul\u{0}x"),
        json!("link/x"),
        json!("./aaa/bb/1"),
        json!(null),
        json!("good_link/y"),
        json!("zz.png"),
        json!("zz.png/x"),
        json!("d.png/q"),
        json!("d.png"),
        json!("big"),
        json!("l".repeat(150)),
    ];
    let mut rows: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"prompt": format!("a handwritten digit {i}"), "name": name}))
        .collect();
    // A huge count fails its row before any name is made for it.
    rows[15]["num_images"] = json!(1e10);
    let input = tmp.path().join("names.jsonl");
    jsonl(&input, &rows);
    // What a killed writer of the long name left: its temp file name is cut to 100 bytes.
    let stale = out.join(format!(".{}.4242.7.tmp", "l".repeat(100)));
    std::fs::write(&stale, b"half an image").unwrap();
    let (code, _, stderr) = t2i(&input, &out, &["--output-name-column", "name"]);
    assert_eq!(code, 1, "{stderr}");
    let m = manifest(&out.join("manifest.jsonl"));
    let refused = [
        (
            4,
            "output name \"/abs/x\" is absolute: it must be a path relative to the output dir",
        ),
        (
            5,
            "output name \"a/../../x\" contains `..`: it must stay inside the output dir",
        ),
        (6, "output name \"nul\\0x\" contains a NUL byte"),
        (
            7,
            "output link/x.png resolves outside the output dir through the symlink ",
        ),
        (
            8,
            "output aaa/bb/1.png is already written by row 0: two rows may not write the same \
             file",
        ),
        (9, "output name column `name` is empty"),
        (
            12,
            "output zz.png/x.png needs the folder zz.png, which row 11 writes as a file",
        ),
        (
            14,
            "output d.png is a folder row 13 writes into: a row may not write a file there",
        ),
        (15, "num_images must be between 1 and 64, got 10000000000"),
    ];
    for (row, error) in refused {
        assert!(
            error_of(&m, row).starts_with(error),
            "row {row}: {}",
            error_of(&m, row)
        );
        assert!(
            stderr.contains(&format!("error: row {row}: {error}")),
            "{stderr}"
        );
    }
    let written = images(&out);
    let long = format!("{}.png", "l".repeat(150));
    let mut expected = vec![
        "aaa/bb/1.png",
        "aaa/bb/2.jpg",
        "c.JPEG",
        "d.png/q.png",
        "d.webp.png",
        "inner/y.png",
        &long,
        "zz.png",
    ];
    expected.sort_unstable();
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        expected,
        "the stale temp file is gone"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    for (name, bytes) in &written {
        let image = Image::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((image.width, image.height), (16, 16));
    }
    assert_eq!(
        &written["aaa/bb/2.jpg"][..2],
        &[0xff, 0xd8],
        "a .jpg is a JPEG"
    );
    assert_eq!(&written["d.webp.png"][1..4], b"PNG");
    // PNGs carry dg generate's `parameters` text.
    let png = String::from_utf8_lossy(&written["aaa/bb/1.png"]).into_owned();
    assert!(png.contains("parameters") && png.contains("Steps: 2, Sampler: DDIM"));

    // Several images per prompt: _00, _01 after the name or the index.
    let out = tmp.path().join("several");
    let input = tmp.path().join("several.jsonl");
    jsonl(
        &input,
        &[
            json!({"prompt": "a", "name": "x/1"}),
            json!({"prompt": "b", "name": "y.jpg"}),
        ],
    );
    let (code, _, stderr) = t2i(
        &input,
        &out,
        &["--output-name-column", "name", "--num-images", "2"],
    );
    assert_eq!(code, 0, "{stderr}");
    let written: Vec<String> = images(&out).into_keys().collect();
    assert_eq!(
        written,
        ["x/1_00.png", "x/1_01.png", "y_00.jpg", "y_01.jpg"]
    );
    let out = tmp.path().join("indexed");
    let (code, _, stderr) = t2i(&input, &out, &["--num-images", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let written: Vec<String> = images(&out).into_keys().collect();
    assert_eq!(
        written,
        [
            "000000_00.png",
            "000000_01.png",
            "000001_00.png",
            "000001_01.png"
        ]
    );
}

/// The 40-row input of the resume and shard tests, and its uninterrupted run.
fn forty() -> &'static (PathBuf, PathBuf) {
    static FORTY: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FORTY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let input = dir.join("forty.jsonl");
        let rows: Vec<Value> = (0..40)
            .map(|i| json!({"prompt": format!("a handwritten digit {}", i % 10)}))
            .collect();
        jsonl(&input, &rows);
        let reference = dir.join("reference");
        let (code, stdout, stderr) = t2i(&input, &reference, &[]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("batch: 40 ok, 0 failed, 0 already done, of 40 rows"));
        // Not a terminal: plain progress lines.
        assert!(stderr.contains("batch: 40/40 rows, 0 failed, "), "{stderr}");
        (input, reference)
    })
}

/// A tiny xorshift, seeded from the clock (and printed): after how many rows each run is killed,
/// each in `1..=max`. Counting rows, not time, makes every kill land mid-run however fast the
/// machine is (one whose count is already reached lands at once, before the model is loaded).
fn kill_points(count: usize, max: usize) -> Vec<usize> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill points seed {state}");
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            1 + (state % max as u64) as usize
        })
        .collect()
}

/// The rows whose latest manifest line says ok.
fn ok_rows(path: &Path) -> usize {
    manifest(path)
        .values()
        .filter(|v| v["status"] == "ok")
        .count()
}

#[test]
fn kill_9_then_resume_gives_the_uninterrupted_bytes() {
    let (input, reference) = forty();
    let expected = images(reference);
    assert_eq!(expected.len(), 40);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = t2i_args(input, &out, &["--concurrency", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let manifest_path = out.join("manifest.jsonl");
    for rows in kill_points(4, 30) {
        let mut child = dg_command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while ok_rows(&manifest_path) < rows && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever was renamed into place is whole.
        for (name, bytes) in images(&out) {
            if !name.contains(".tmp") {
                assert_eq!(bytes, expected[&name], "{name} after a kill at row {rows}");
            }
        }
    }
    // The kills left some rows done and some to do, so the last run resumes.
    let done = ok_rows(&manifest_path);
    assert!(0 < done && done < 40, "{done} rows done before resuming");
    let (code, stdout, stderr) = dg(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "batch: {} ok, 0 failed, {done} already done, of 40 rows",
            40 - done
        )),
        "{stdout}"
    );
    assert_eq!(
        images(&out),
        expected,
        "no temp file is left, every image is the same"
    );
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    let mut ok: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["status"] == "ok")
        .map(|v| v["index"].as_u64().unwrap())
        .collect();
    ok.sort_unstable();
    assert_eq!(ok, (0..40).collect::<Vec<_>>(), "one success line per row");

    // A rerun has nothing left to do; --overwrite does it all again, to the same bytes (even over
    // an image spoilt since, which a rerun takes as done).
    let (code, stdout, _) = dg(&args);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("batch: 0 ok, 0 failed, 40 already done, of 40 rows"),
        "{stdout}"
    );
    std::fs::write(out.join("000003.png"), b"spoilt").unwrap();
    let (code, stdout, _) = dg(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(code, 0);
    assert!(
        stdout.contains("batch: 40 ok, 0 failed, 0 already done, of 40 rows"),
        "{stdout}"
    );
    assert_eq!(images(&out), expected);
    std::fs::remove_file(out.join("000007.png")).unwrap();
    let (_, stdout, _) = dg(&args);
    assert!(
        stdout.contains("batch: 1 ok, 0 failed, 39 already done"),
        "{stdout}"
    );
    assert_eq!(images(&out), expected);
}

#[test]
fn the_latest_manifest_line_wins_across_shard_counts_and_merges() {
    let (forty, reference) = forty();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_arg = out.display().to_string();
    // The first four rows of the forty, and the same with rows 0 and 2 spoilt.
    let rows: Vec<Value> = std::fs::read_to_string(forty)
        .unwrap()
        .lines()
        .take(4)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (input, spoilt) = (
        tmp.path().join("four.jsonl"),
        tmp.path().join("spoilt.jsonl"),
    );
    jsonl(&input, &rows);
    let mut bad = rows.clone();
    for row in [0, 2] {
        bad[row]["steps"] = json!("many");
    }
    jsonl(&spoilt, &bad);
    let merge = || {
        let (code, stdout, stderr) = dg(&["manifest", "merge", &out_arg]);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };

    // Rows 0 and 3 by a third of the shards, merged into manifest.jsonl.
    let (code, _, stderr) = t2i(&input, &out, &["--shard", "0/3"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(merge().starts_with("merged 2 rows (0 failed)"));
    // Later, half the shards over the spoilt table: rows 0 and 2 fail, in a part whose name
    // sorts before the older part-of-3.
    let (code, stdout, _) = t2i(&spoilt, &out, &["--shard", "0/2"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("batch: 0 ok, 2 failed, 0 already done, of 2 rows"),
        "{stdout}"
    );
    let stdout = merge();
    assert!(stdout.starts_with("merged 3 rows (2 failed)"), "{stdout}");
    let m = manifest(&out.join("manifest.jsonl"));
    let statuses: Vec<&str> = m.values().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["error", "error", "ok"], "rows 0, 2 and 3");
    // Row 0's image is still on disk, but its latest line failed: the whole run does it again.
    let (code, stdout, stderr) = t2i(&input, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("batch: 3 ok, 0 failed, 1 already done, of 4 rows"),
        "{stdout}"
    );
    assert!(merge().starts_with("merged 4 rows (0 failed)"));
    let mut expected = images(reference);
    expected.retain(|name, _| name.as_str() < "000004.png");
    assert_eq!(images(&out), expected);
}

#[test]
fn three_shards_write_disjoint_files_whose_union_is_the_whole_run() {
    let (input, reference) = forty();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let logs = tmp.path().join("logs");
    let logs_arg = logs.display().to_string();
    let args = t2i_args(input, &out, &["--log-dir", &logs_arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Shard 0 and 2 by flag (2 with requests in flight concurrently), shard 1 as a torchrun-style
    // launcher starts it.
    let mut shard0 = dg_command(&args);
    shard0.args(["--shard", "0/3"]);
    let mut shard1 = dg_command(&args);
    shard1.envs([("RANK", "1"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "1")]);
    let mut shard2 = dg_command(&args);
    shard2.args(["--shard", "2/3", "--concurrency", "3"]);
    let children: Vec<_> = [shard0, shard1, shard2]
        .iter_mut()
        .map(|c| {
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let (code, _, stderr) = finish(child.wait_with_output().unwrap());
        assert_eq!(code, 0, "{stderr}");
    }
    for k in 0..3u64 {
        let part = out.join(format!("manifest.part-0000{k}-of-00003.jsonl"));
        let rows: Vec<u64> = manifest(&part).into_keys().collect();
        let expected: Vec<u64> = (0..40).filter(|i| i % 3 == k).collect();
        assert_eq!(rows, expected, "shard {k} runs its own rows");
        assert!(
            logs.join(format!("node0_process{k}.log")).is_file(),
            "shard {k}'s log"
        );
    }
    let log = std::fs::read_to_string(logs.join("node0_process1.log")).unwrap();
    assert!(log.contains("row 1: wrote 000001.png"), "{log}");
    assert_eq!(images(&out), images(reference), "byte for byte");
    let (code, stdout, stderr) = dg(&["manifest", "merge", &out.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("merged 40 rows (0 failed) into "),
        "{stdout}"
    );
    let merged = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let indices: Vec<u64> = merged
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(indices, (0..40).collect::<Vec<_>>());
}

#[test]
fn a_remote_backend_runs_rows_concurrently_and_files_land_under_their_names() {
    use base64::Engine as _;
    use common::http::{Reply, TestServer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // Answers `row N` with an 8x8 image of grey N * 20, slowly, counting requests in flight.
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_flight2, most2) = (in_flight.clone(), most.clone());
    let server = TestServer::start(move |request, _| {
        let now = in_flight2.fetch_add(1, Ordering::SeqCst) + 1;
        most2.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(150));
        in_flight2.fetch_sub(1, Ordering::SeqCst);
        let prompt = request.json()["prompt"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let row: u8 = prompt.trim_start_matches("row ").parse().unwrap_or(0);
        let png = Image {
            width: 8,
            height: 8,
            pixels: vec![row * 20; 8 * 8 * 3],
        }
        .encode_png(&[])
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        Reply::json(200, &json!({"created": 1, "data": [{"b64_json": b64}]}))
    });
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("rows.jsonl");
    let rows: Vec<Value> = (0..8)
        .map(|i| json!({"prompt": format!("row {i}")}))
        .collect();
    jsonl(&input, &rows);
    let out = tmp.path().join("out");
    let url = server.url("/v1");
    let (input_arg, out_arg) = (input.display().to_string(), out.display().to_string());
    let output = dg_command(&[
        "t2i",
        "--backend",
        "openai",
        "--endpoint",
        &url,
        "--remote-model",
        "fake",
        "--input",
        &input_arg,
        "--output-dir",
        &out_arg,
        "--concurrency",
        "4",
    ])
    .env("DG_OPENAI_API_KEY", "sk-batch-test")
    .output()
    .unwrap();
    let (code, stdout, stderr) = finish(output);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("batch: 8 ok, 0 failed"), "{stdout}");
    assert!(
        most.load(Ordering::SeqCst) >= 2,
        "requests ran one at a time"
    );
    let m = manifest(&out.join("manifest.jsonl"));
    assert_eq!(m.len(), 8, "one line per row");
    for (row, entry) in &m {
        assert_eq!(
            (entry["backend"].as_str(), entry["model"].as_str()),
            (Some("openai"), Some("fake"))
        );
        let name = format!("{row:06}.png");
        assert_eq!(entry["outputs"], json!([name]));
        let image = Image::load_png(&out.join(&name)).unwrap();
        assert_eq!(
            image.pixels,
            vec![*row as u8 * 20; 8 * 8 * 3],
            "{name} has its row's image"
        );
    }
}
