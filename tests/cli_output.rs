//! `dg` writing to a stdout that fails: a pipe whose reader has gone (`dg doctor | head -1`) is a
//! quiet, successful exit that still finishes the work; a real write failure (`> /dev/full`) is an
//! error. Neither may panic.
mod common;

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};

/// `dg ARGS` with stdout going to `stdout`, stderr captured.
fn dg_into(args: &[&str], stdout: impl Into<Stdio>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
    cmd.args(args).stdout(stdout).stderr(Stdio::piped());
    if let Some(lib) = common::ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd.output().expect("dg runs")
}

/// The write end of a pipe whose read end is already closed, so the first write to it fails
/// with EPIPE: what `head -1` leaves behind, without racing a reader.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_quiet_success(output: &Output, what: &str) {
    let stderr = stderr(output);
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert_ne!(output.status.code(), Some(101), "{what}: {stderr}");
    assert!(
        output.status.success(),
        "{what} into a closed pipe must exit 0, got {}: {stderr}",
        output.status
    );
    assert!(
        !stderr.contains("error"),
        "{what}: a reader going away is no error: {stderr}"
    );
}

#[test]
fn doctor_into_a_closed_pipe_exits_quietly() {
    let output = dg_into(&["doctor"], closed_pipe());
    assert_quiet_success(&output, "dg doctor");
    // With a model it has many more lines to write after the first failed one.
    let model = common::model_dir("tiny-sd").display().to_string();
    let output = dg_into(&["doctor", "--model", &model], closed_pipe());
    assert_quiet_success(&output, "dg doctor --model");
}

#[test]
fn generate_into_a_closed_pipe_still_writes_every_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fox.png");
    let model = common::model_dir("tiny-sd").display().to_string();
    let path = out.display().to_string();
    let args = [
        "generate",
        "--model",
        &model,
        "--prompt",
        "fox",
        "--steps",
        "2",
        "--num-images",
        "2",
        "--timings",
        "--output",
        &path,
    ];
    let output = dg_into(&args, closed_pipe());
    assert_quiet_success(&output, "dg generate");
    // The first `wrote` line failed; the second image must be written all the same.
    for name in ["fox_00.png", "fox_01.png"] {
        assert!(tmp.path().join(name).is_file(), "{name} missing");
    }
}

#[test]
fn montage_and_help_into_a_closed_pipe_exit_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let sheet = tmp.path().join("sheet.png");
    let input = common::repo().join("tests/golden/edit/image_64x64.png");
    let (sheet_arg, input_arg) = (sheet.display().to_string(), input.display().to_string());
    let output = dg_into(
        &[
            "montage", "--scale", "1", "--output", &sheet_arg, &input_arg,
        ],
        closed_pipe(),
    );
    assert_quiet_success(&output, "dg montage");
    assert!(sheet.is_file());
    for args in [&["--help"][..], &["generate", "--help"], &["--version"]] {
        let output = dg_into(args, closed_pipe());
        assert_quiet_success(&output, &format!("dg {}", args.join(" ")));
    }
}

#[test]
fn a_full_device_is_an_error_not_a_panic() {
    let Ok(full) = File::options().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full on this system");
        return;
    };
    let output = dg_into(&["doctor"], full);
    let stderr = stderr(&output);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: writing to stdout: No space left on device"),
        "{stderr}"
    );
}
