//! Real Python peers for the tests (the official clients, contract checkers, table writers): one
//! venv under the target dir with tests/peers/requirements.txt installed, made once and reused.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A skip the environment causes; `DG_CONTRACT_REQUIRED=1` (set by `make test`) turns it into a
/// failure, so CI never passes by skipping.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("DG_CONTRACT_REQUIRED").is_none(),
        "{test} required but: {why}"
    );
    eprintln!("skipping {test}: {why}");
}

/// The venv's python. Its folder is named for a hash of the requirements, so a changed list makes
/// a new venv; it is built under a private name and renamed into place, so concurrent test
/// processes never see (or delete) a half-made one.
pub fn python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    let requirements = super::repo().join("tests/peers/requirements.txt");
    let text =
        std::fs::read(&requirements).map_err(|e| format!("{}: {e}", requirements.display()))?;
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("no target dir")?
        .to_path_buf();
    let venv = target.join(format!("peers-venv-{:016x}", fnv1a(&text)));
    let ready = |dir: &Path| dir.join(".ready").is_file();
    if ready(&venv) {
        return Ok(venv.join("bin/python"));
    }
    let building = target.join(format!("peers-venv.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let built = run(Command::new("python3").args(["-m", "venv"]).arg(&building))
        .and_then(|()| {
            run(Command::new(building.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements))
        })
        .and_then(|()| std::fs::write(building.join(".ready"), b"").map_err(|e| e.to_string()));
    if let Err(why) = built {
        let _ = std::fs::remove_dir_all(&building);
        return Err(why);
    }
    // A stale, unfinished venv from an interrupted older run is replaced.
    if venv.exists() && !ready(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
    }
    if std::fs::rename(&building, &venv).is_err() {
        // Another process finished first; use its venv.
        let _ = std::fs::remove_dir_all(&building);
    }
    if ready(&venv) {
        Ok(venv.join("bin/python"))
    } else {
        Err(format!("{} was not made", venv.display()))
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// FNV-1a: a stable hash of the requirements (std's hasher is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
