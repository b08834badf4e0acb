//! The `dg` command line as a user runs it: files written, metadata, errors and exit codes.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use diffgentor::{npy, Image};

fn dg(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
    cmd.args(args);
    if let Some(lib) = common::ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd.output().expect("dg runs")
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "dg failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "dg should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn tiny_sd() -> String {
    common::model_dir("tiny-sd").display().to_string()
}

/// `dg COMMAND --model MODEL FLAGS... --output OUTPUT`, FLAGS split on whitespace.
fn run(command: &str, model: &str, flags: &str, output: &Path) -> Output {
    let mut args: Vec<String> = vec![command.into(), "--model".into(), model.into()];
    args.extend(flags.split_whitespace().map(String::from));
    args.extend(["--output".into(), output.display().to_string()]);
    dg(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `dg generate --model models/tiny-sd FLAGS... --output OUTPUT`.
fn generate(flags: &str, output: &Path) -> Output {
    run("generate", &tiny_sd(), flags, output)
}

/// `dg edit --model models/tiny-sd FLAGS... --output OUTPUT`.
fn edit(flags: &str, output: &Path) -> Output {
    run("edit", &tiny_sd(), flags, output)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn generate_writes_png_with_a1111_parameters_into_a_new_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("new/nested/cat.png");
    let model = tiny_sd();
    let mut args = vec!["generate", "--model", &model, "--prompt", "a cat"];
    args.extend([
        "--negative-prompt",
        "blurry",
        "--steps",
        "3",
        "--seed",
        "42",
    ]);
    args.extend([
        "--scheduler",
        "euler_a",
        "--guidance",
        "6",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stdout = ok(&dg(&args));
    assert!(stdout.contains("wrote"), "{stdout}");
    let image = Image::load_png(&out).unwrap();
    assert_eq!((image.width, image.height), (64, 64));
    let text = common::png::text_chunks(&out);
    let (key, params) = &text[0];
    assert_eq!(key, "parameters");
    let expected =
        "a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, Scheduler: euler_a, \
                    CFG scale: 6, Seed: 42, Size: 64x64, Model: tiny-sd";
    assert!(params.starts_with(expected), "{params}");
    assert_eq!(
        files_in(out.parent().unwrap()),
        vec!["cat.png"],
        "no temp files left"
    );
}

#[test]
fn several_images_are_numbered_and_latents_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("final.npy");
    let flags = format!(
        "--prompt birds --steps 2 --seed 3 --num-images 2 --save-latents {}",
        saved.display()
    );
    ok(&generate(&flags, &tmp.path().join("batch.png")));
    assert_eq!(
        files_in(tmp.path()),
        vec!["batch_00.png", "batch_01.png", "final.npy"]
    );
    assert_eq!(npy::read_f32(&saved).unwrap().shape(), &[2, 4, 8, 8]);
    let a = Image::load_png(&tmp.path().join("batch_00.png")).unwrap();
    let b = Image::load_png(&tmp.path().join("batch_01.png")).unwrap();
    assert_ne!(a.pixels, b.pixels, "each image has its own noise");
}

#[test]
fn supplied_latents_make_the_seed_irrelevant() {
    let tmp = tempfile::tempdir().unwrap();
    let latents = tmp.path().join("start.npy");
    npy::write_f32(&latents, &ndarray::ArrayD::from_elem(vec![1, 4, 8, 8], 0.5)).unwrap();
    let run = |seed: &str, name: &str| {
        let out = tmp.path().join(name);
        let flags = format!(
            "--prompt x --steps 2 --scheduler ddim --seed {seed} --latents {}",
            latents.display()
        );
        ok(&generate(&flags, &out));
        Image::load_png(&out).unwrap()
    };
    assert_eq!(run("1", "a.png").pixels, run("2", "b.png").pixels);
}

#[test]
fn timings_list_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = "--prompt x --steps 3 --seed 1 --timings --scheduler euler";
    let stdout = ok(&generate(flags, &tmp.path().join("t.png")));
    for stage in [
        "tokenize",
        "text encode",
        "step 1/3",
        "step 3/3",
        "decode",
        "onnx runtime",
        "total",
    ] {
        assert!(stdout.contains(stage), "missing {stage}: {stdout}");
    }
}

#[test]
fn unwritable_output_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, "a file where a directory should be").unwrap();
    let stderr = failed(&generate(
        "--prompt x --steps 1 --seed 1",
        &blocker.join("img.png"),
    ));
    assert!(
        stderr.contains("cannot create directory") && stderr.contains("not-a-dir"),
        "{stderr}"
    );
    assert_eq!(files_in(tmp.path()), vec!["not-a-dir"]);
}

#[test]
fn unavailable_execution_provider_is_an_error_not_a_silent_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpu.png");
    let stderr = failed(&generate("--prompt x --steps 1 --ep cuda:0", &out));
    assert!(
        stderr.contains("execution provider cuda:0 is unavailable"),
        "{stderr}"
    );
    assert!(!out.exists());

    let fallback = generate(
        "--prompt x --steps 1 --seed 1 --ep tensorrt --allow-cpu-fallback",
        &out,
    );
    let stderr = String::from_utf8_lossy(&fallback.stderr);
    assert!(stderr.contains("warning: falling back to CPU"), "{stderr}");
    assert!(out.exists());
}

#[test]
fn bad_arguments_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    for (flags, message) in [
        (
            "--prompt x --width 65",
            "width 65 must be a positive multiple of 16 (the VAE factor 8 x 2^1",
        ),
        ("--prompt x --rng dice", "--rng"),
        ("--prompt x --scheduler-option nokey", "is not KEY=VALUE"),
        ("--prompt x --steps 0", "steps must be between 1 and 1000"),
        ("--prompt x --ep npu", "unknown execution provider `npu`"),
        (
            "--prompt x --ort-lib /nonexistent/libort.so",
            "/nonexistent/libort.so (from explicit path",
        ),
    ] {
        let stderr = failed(&generate(flags, &out));
        assert!(stderr.contains(message), "{flags}: {stderr}");
    }
    assert!(files_in(tmp.path()).is_empty());
}

#[test]
fn doctor_reports_library_providers_and_package() {
    let stdout = ok(&dg(&["doctor", "--model", &tiny_sd()]));
    assert!(
        stdout.contains("onnxruntime 1.31.1 loaded from"),
        "{stdout}"
    );
    assert!(stdout.contains("CPUExecutionProvider"), "{stdout}");
    assert!(stdout.contains("vae factor 8"), "{stdout}");
    assert!(stdout.contains("scheduler pndm"), "{stdout}");
    assert!(
        stdout.contains("unet (sample: float32[?, 4, ?, ?], timestep: float32[]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("family stable-diffusion (UNet input channels: 4 latent + 0"),
        "{stdout}"
    );
    assert!(stdout.contains("vae_encoder (sample: float32"), "{stdout}");
    let stdout = ok(&dg(&[
        "doctor",
        "--model",
        &common::model_dir("tiny-sd-inpaint").display().to_string(),
    ]));
    assert!(
        stdout.contains("family stable-diffusion-inpaint (UNet input channels: 4 latent + 5"),
        "{stdout}"
    );
    let stdout = ok(&dg(&[
        "doctor",
        "--model",
        &common::model_dir("tiny-ip2p").display().to_string(),
    ]));
    assert!(stdout.contains("family instruct-pix2pix"), "{stdout}");
}

fn edit_golden(file: &str) -> String {
    common::repo()
        .join("tests/golden/edit")
        .join(file)
        .display()
        .to_string()
}

#[test]
fn edit_writes_img2img_and_inpainting_results_with_their_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("i2i.png");
    let image = edit_golden("image_64x64.png");
    let o = edit(
        &format!("--image {image} --prompt fox --strength 0.5 --steps 6 --seed 3"),
        &out,
    );
    ok(&o);
    let text = common::png::text_chunks(&out);
    assert!(text[0].1.contains("Denoising strength: 0.5"), "{text:?}");
    assert_eq!((Image::load_png(&out).unwrap().width), 64);

    let masked = tmp.path().join("inpaint.png");
    let inpaint = common::model_dir("tiny-sd-inpaint").display().to_string();
    let mask = edit_golden("mask_64x64.png");
    let flags = format!("--image {image} --mask {mask} --prompt fox --steps 4 --seed 3");
    let o = run("edit", &inpaint, &flags, &masked);
    ok(&o);
    assert!(masked.is_file());
}

#[test]
fn edit_errors_leave_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never.png");
    let image = edit_golden("image_64x64.png");
    let o = edit("--prompt x", &out);
    assert!(failed(&o).contains("--image"), "a source is required");
    let o = edit(&format!("--image {image} --prompt x --strength 1.5"), &out);
    assert!(failed(&o).contains("strength must be in (0, 1]"));
    let mask = edit_golden("mask_96x64_soft.png");
    let o = edit(&format!("--image {image} --mask {mask} --prompt x"), &out);
    assert!(failed(&o).contains("mask is 96x64 but the request is 64x64"));
    let missing = tmp.path().join("missing.png");
    let o = edit(&format!("--image {} --prompt x", missing.display()), &out);
    assert!(failed(&o).contains("missing.png"));
    assert!(
        files_in(tmp.path()).is_empty(),
        "{:?}",
        files_in(tmp.path())
    );
}

#[test]
fn plan_file_equals_the_stages_run_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"stages": [
            {"width": 64, "height": 64, "steps": 4, "scheduler": "euler_a"},
            {"width": 128, "height": 128, "steps": 4, "strength": 0.5, "upscale": "bilinear"}
        ]}"#,
    )
    .unwrap();
    let planned = tmp.path().join("planned.png");
    ok(&generate(
        &format!("--prompt fox --seed 9 --plan {}", plan.display()),
        &planned,
    ));
    assert!(common::png::text_chunks(&planned)[0]
        .1
        .contains("Plan stages: 2"));

    let stage1 = tmp.path().join("s1.npy");
    ok(&generate(
        &format!("--prompt fox --seed 9 --width 64 --height 64 --steps 4 --scheduler euler_a --save-latents {}", stage1.display()),
        &tmp.path().join("s1.png"),
    ));
    let by_hand = tmp.path().join("by-hand.png");
    ok(&edit(
        &format!(
            "--init-latents {} --width 128 --height 128 --upscale bilinear --strength 0.5 \
             --steps 4 --prompt fox --seed 9",
            stage1.display()
        ),
        &by_hand,
    ));
    let (a, b) = (
        Image::load_png(&planned).unwrap(),
        Image::load_png(&by_hand).unwrap(),
    );
    assert_eq!((a.width, a.height), (128, 128));
    assert_eq!(
        a, b,
        "the plan gives the same pixels as its stages run one by one"
    );

    std::fs::write(&plan, r#"{"stages": []}"#).unwrap();
    let o = generate(
        &format!("--prompt fox --plan {}", plan.display()),
        &tmp.path().join("x.png"),
    );
    assert!(failed(&o).contains("between 1 and"));
}

#[test]
fn montage_tiles_images() {
    let tmp = tempfile::tempdir().unwrap();
    let tile = |name: &str, value: u8| {
        let path = tmp.path().join(name);
        Image {
            width: 2,
            height: 2,
            pixels: vec![value; 12],
        }
        .save_png(&path, &[])
        .unwrap();
        path.display().to_string()
    };
    let (a, b, c) = (tile("a.png", 10), tile("b.png", 20), tile("c.png", 30));
    let sheet = tmp.path().join("sheet.png");
    ok(&dg(&[
        "montage",
        "--columns",
        "2",
        "--scale",
        "3",
        "--output",
        sheet.to_str().unwrap(),
        &a,
        &b,
        &c,
    ]));
    let image = Image::load_png(&sheet).unwrap();
    assert_eq!((image.width, image.height), (12, 12));
    let px = |x: u32, y: u32| image.pixels[((y * 12 + x) * 3) as usize];
    assert_eq!((px(0, 0), px(6, 0), px(0, 6), px(6, 6)), (10, 20, 30, 255));
}
