//! One log file per process, as the ancestor keeps them: `--log-dir` (default
//! `OUTPUT_DIR/logs/<yyyymmdd_hhmm>`, UTC), file `node{N}_process{M}.log` with N the node's rank
//! (`NODE_RANK` or torchrun's `GROUP_RANK`) and M the process's (`LOCAL_RANK`, else the shard).
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use diffgentor::Error;

pub struct Log {
    file: Mutex<File>,
    pub path: PathBuf,
}

impl Log {
    pub fn open(dir: Option<&Path>, output_dir: &Path, shard: usize) -> diffgentor::Result<Log> {
        let dir = dir.map_or_else(
            || {
                output_dir
                    .join("logs")
                    .join(utc_stamp(now_secs(), "_", false))
            },
            Path::to_path_buf,
        );
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create directory", &dir, e))?;
        let rank = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok()?.trim().parse::<usize>().ok())
        };
        let node = rank(&["NODE_RANK", "GROUP_RANK"]).unwrap_or(0);
        let process = rank(&["LOCAL_RANK"]).unwrap_or(shard);
        let path = dir.join(format!("node{node}_process{process}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open log", &path, e))?;
        Ok(Log {
            file: Mutex::new(file),
            path,
        })
    }

    /// Appends `[yyyy-mm-dd hh:mm:ss] text`. A log that cannot be written loses the line, not the
    /// batch.
    pub fn line(&self, text: &str) {
        let line = format!("[{}] {text}\n", utc_stamp(now_secs(), " ", true));
        if let Ok(mut file) = self.file.lock() {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `20261203_1450` (or with `seconds`, `2026-12-03 14:50:07`) for a Unix time, in UTC.
fn utc_stamp(secs: u64, separator: &str, seconds: bool) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days to a civil date (Howard Hinnant's algorithm), valid for every Unix time.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if seconds {
        format!("{year:04}-{month:02}-{day:02}{separator}{h:02}:{m:02}:{s:02}")
    } else {
        format!("{year:04}{month:02}{day:02}{separator}{h:02}{m:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_civil_utc_times() {
        assert_eq!(utc_stamp(0, "_", false), "19700101_0000");
        // 2026-12-03 14:50:07 UTC
        assert_eq!(utc_stamp(1_796_309_407, " ", true), "2026-12-03 14:50:07");
        assert_eq!(utc_stamp(951_782_400, "_", false), "20000229_0000");
    }
}
