//! `dg generate` / `dg edit` progress as a log or CI sees it: stderr is a pipe here, so dg prints
//! plain `progress:` lines (a terminal would get a live bar instead), stdout keeps only the
//! machine-readable lines, and `--quiet` silences the display.
mod common;

use std::path::Path;
use std::process::Output;

fn tiny_sd() -> String {
    common::model_dir("tiny-sd").display().to_string()
}

/// `dg COMMAND --model models/tiny-sd --prompt fox --seed 1 FLAGS... --output OUTPUT`.
fn run(command: &str, flags: &[&str], output: &Path) -> Output {
    let model = tiny_sd();
    let output = output.display().to_string();
    let mut args = vec![
        command, "--model", &model, "--prompt", "fox", "--seed", "1", "--output", &output,
    ];
    args.extend_from_slice(flags);
    common::dg(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and that stdout is exactly `wrote PATH`, as scripts read it.
fn assert_wrote_only(output: &Output, path: &Path) {
    assert!(
        output.status.success(),
        "dg failed ({}): {}",
        output.status,
        text(&output.stderr)
    );
    assert_eq!(
        text(&output.stdout),
        format!("wrote {}\n", path.display()),
        "stdout must hold only the `wrote PATH` line"
    );
    assert!(path.is_file(), "{} was not written", path.display());
}

/// The `step N/T (stage S/SS)` part of every progress line on stderr, after checking that each
/// line reads `progress: step N/T (stage S/SS), R it/s, eta E` with a positive rate.
fn progress_steps(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| line.starts_with("progress:"))
        .map(|line| {
            let rest = line.strip_prefix("progress: ").unwrap_or_default();
            let (steps, pace) = rest
                .split_once(", ")
                .unwrap_or_else(|| panic!("progress line without a speed: {line:?}"));
            let (rate, eta) = pace
                .split_once(" it/s, eta ")
                .unwrap_or_else(|| panic!("progress line without it/s and eta: {line:?}"));
            let rate: f64 = rate
                .parse()
                .unwrap_or_else(|_| panic!("rate is not a number in {line:?}"));
            assert!(rate > 0.0, "rate must be positive in {line:?}");
            assert!(
                eta.ends_with('s') || eta.ends_with('m'),
                "eta is not a duration in {line:?}"
            );
            steps.to_string()
        })
        .collect()
}

#[test]
fn generate_prints_a_line_per_step_when_there_are_few_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fox.png");
    // Euler runs exactly --steps denoising steps.
    let output = run("generate", &["--steps", "4", "--scheduler", "euler"], &out);
    assert_wrote_only(&output, &out);
    let stderr = text(&output.stderr);
    assert_eq!(
        progress_steps(&stderr),
        [
            "step 1/4 (stage 1/1)",
            "step 2/4 (stage 1/1)",
            "step 3/4 (stage 1/1)",
            "step 4/4 (stage 1/1)"
        ],
        "stderr:\n{stderr}"
    );
    let last = stderr.lines().rev().find(|l| l.starts_with("progress:"));
    assert!(
        last.is_some_and(|l| l.ends_with("eta 0s")),
        "the last step leaves nothing to wait for: {last:?}"
    );
}

#[test]
fn many_steps_print_about_ten_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fox.png");
    let output = run("generate", &["--steps", "30", "--scheduler", "euler"], &out);
    assert_wrote_only(&output, &out);
    let steps = progress_steps(&text(&output.stderr));
    // The first step, each further tenth (3, 6, ... 30).
    let expected: Vec<String> = [1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
        .iter()
        .map(|s| format!("step {s}/30 (stage 1/1)"))
        .collect();
    assert_eq!(steps, expected);
}

#[test]
fn edit_counts_the_steps_its_strength_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("edited.png");
    let image = common::repo().join("tests/golden/edit/image_64x64.png");
    let image = image.display().to_string();
    let flags = [
        "--image",
        &image,
        "--strength",
        "0.5",
        "--steps",
        "4",
        "--scheduler",
        "euler",
    ];
    let output = run("edit", &flags, &out);
    assert_wrote_only(&output, &out);
    // Strength 0.5 of 4 steps re-noises halfway: 2 steps run.
    assert_eq!(
        progress_steps(&text(&output.stderr)),
        ["step 1/2 (stage 1/1)", "step 2/2 (stage 1/1)"]
    );
}

#[test]
fn a_plan_counts_all_stages_and_names_the_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"stages": [
            {"width": 64, "height": 64, "steps": 2},
            {"width": 128, "height": 128, "steps": 4, "strength": 0.5}
        ]}"#,
    )
    .unwrap();
    let out = tmp.path().join("planned.png");
    let plan = plan.display().to_string();
    let output = run("generate", &["--scheduler", "euler", "--plan", &plan], &out);
    assert_wrote_only(&output, &out);
    assert_eq!(
        progress_steps(&text(&output.stderr)),
        [
            "step 1/4 (stage 1/2)",
            "step 2/4 (stage 1/2)",
            "step 3/4 (stage 2/2)",
            "step 4/4 (stage 2/2)"
        ]
    );
}

#[test]
fn quiet_prints_no_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("quiet.png");
    let output = run("generate", &["--steps", "3", "-q"], &out);
    assert_wrote_only(&output, &out);
    assert!(
        !text(&output.stderr).contains("progress"),
        "-q must silence progress: {}",
        text(&output.stderr)
    );

    let edited = tmp.path().join("quiet-edit.png");
    let image = out.display().to_string();
    let output = run(
        "edit",
        &["--image", &image, "--steps", "3", "--quiet"],
        &edited,
    );
    assert_wrote_only(&output, &edited);
    assert!(
        !text(&output.stderr).contains("progress"),
        "--quiet must silence progress: {}",
        text(&output.stderr)
    );
}

#[test]
fn stdout_keeps_the_seed_line_without_progress_mixed_in() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seeded.png");
    let model = tiny_sd();
    let path = out.display().to_string();
    let output = common::dg(&[
        "generate", "--model", &model, "--prompt", "fox", "--steps", "2", "--output", &path,
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "stdout: {stdout:?}");
    assert_eq!(lines[0], format!("wrote {path}"));
    let seed = lines[1].strip_prefix("seed ").map(str::parse::<u64>);
    assert!(matches!(seed, Some(Ok(_))), "second line: {:?}", lines[1]);
    assert!(text(&output.stderr).contains("progress: step 2/"));
}
