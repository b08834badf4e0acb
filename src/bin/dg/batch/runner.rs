//! Running the rows: `concurrency` threads take the next row, load its sources and generate; the
//! caller's thread writes each result's images (atomically: temp file, fsync, rename) and reports
//! it, in whatever order rows finish. Writing on another thread than generating hides the fsyncs
//! behind the next request, and one thread owns the manifest.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diffgentor::{Image, Output, Request};

use super::naming::Format;
use super::rows::{bare, Sources};
use crate::backend::Backend;
use crate::generate::parameters_text;

/// JPEG quality of outputs named `.jpg`/`.jpeg`.
const JPEG_QUALITY: u8 = 95;

/// One row to run.
pub struct Job {
    pub index: usize,
    pub request: Request,
    pub sources: Sources,
    /// Where its images go, relative to the output dir.
    pub outputs: Vec<PathBuf>,
}

/// What a finished row reports.
pub struct Outcome {
    pub result: Result<Output, String>,
    pub generate: Duration,
    pub write: Duration,
}

/// A generated row on its way to the writer: the request as it ran (sources loaded) and its output.
struct Generated {
    job: usize,
    request: Request,
    result: Result<Output, String>,
    took: Duration,
}

/// Runs every job, writing its images and calling `finished` on this thread as each one ends;
/// once `finished` returns false no further job starts.
pub fn run(
    jobs: &[Job],
    concurrency: usize,
    backend: &Backend,
    dir: &Path,
    mut finished: impl FnMut(&Job, Outcome) -> bool,
) {
    let workers = concurrency.clamp(1, jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Bounded, so generating never runs far ahead of writing (outputs hold whole images).
    let (tx, rx) = mpsc::sync_channel(workers);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                if tx.send(generate(i, job, backend)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for generated in rx {
            let job = &jobs[generated.job];
            let start = Instant::now();
            let result = generated
                .result
                .and_then(|output| write_images(job, &generated.request, output, backend, dir));
            let outcome = Outcome {
                result,
                generate: generated.took,
                write: start.elapsed(),
            };
            if !finished(job, outcome) {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
}

fn generate(i: usize, job: &Job, backend: &Backend) -> Generated {
    let mut request = job.request.clone();
    let start = Instant::now();
    let result = job.sources.load_into(&mut request).and_then(|()| {
        backend
            .generator
            .generate(&request, &mut |_| true)
            .map_err(bare)
    });
    Generated {
        job: i,
        request,
        result,
        took: start.elapsed(),
    }
}

/// Writes the row's images with the `parameters` text `dg generate` writes (PNG only).
fn write_images(
    job: &Job,
    request: &Request,
    output: Output,
    backend: &Backend,
    dir: &Path,
) -> Result<Output, String> {
    if output.images.len() != job.outputs.len() {
        return Err(format!(
            "the backend returned {} images for the {} asked",
            output.images.len(),
            job.outputs.len()
        ));
    }
    let parameters = parameters_text(request, &output, backend);
    for (image, relative) in output.images.iter().zip(&job.outputs) {
        let path = dir.join(relative);
        save(image, &path, &parameters).map_err(bare)?;
    }
    Ok(output)
}

fn save(image: &Image, path: &Path, parameters: &str) -> diffgentor::Result<()> {
    match Format::of(path) {
        Format::Png => image.save_png(path, &[("parameters", parameters)]),
        Format::Jpeg => image.save_jpeg(path, JPEG_QUALITY),
    }
}

/// Removes the temporary files a killed run left next to the outputs of `jobs` (the rows still to
/// run, which include every row that was in flight). `write_atomically` names them
/// `.NAME.PID.N.tmp`; only those of these outputs go, so shards sharing a folder never touch each
/// other's.
pub fn remove_stale_temps(dir: &Path, jobs: &[Job]) {
    let mut names: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for relative in jobs.iter().flat_map(|job| &job.outputs) {
        let path = dir.join(relative);
        if let (Some(folder), Some(name)) = (path.parent(), path.file_name()) {
            let name = name.to_string_lossy().into_owned();
            names.entry(folder.to_path_buf()).or_default().insert(name);
        }
    }
    for (folder, names) in names {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else {
                continue;
            };
            // NAME.PID.N: the name is what is left after the last two dots.
            let name = rest.rsplitn(3, '.').nth(2);
            if name.is_some_and(|name| names.contains(name)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_temp_files_of_rows_to_run_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            ".000001.png.123.4.tmp",
            ".000002.png.123.5.tmp",
            "000001.png",
            ".hidden.tmp",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let job = Job {
            index: 1,
            request: Request::new(""),
            sources: Sources::default(),
            outputs: vec![PathBuf::from("000001.png")],
        };
        remove_stale_temps(dir.path(), &[job]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".000002.png.123.5.tmp", ".hidden.tmp", "000001.png"]);
    }
}
