//! Running the rows: `concurrency` threads take the next row, load its sources and generate; the
//! caller's thread writes each result's images (atomically: temp file, fsync, rename) and reports
//! it, in whatever order rows finish. Writing on another thread than generating hides the fsyncs
//! behind the next request, and one thread owns the manifest.
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diffgentor::image::temp_name_prefix;
use diffgentor::{Image, Output, Request};

use super::naming::{Claims, Format};
use super::rows::{bare, Sources};
use crate::backend::Backend;
use crate::generate::parameters_text;

/// JPEG quality of outputs named `.jpg`/`.jpeg`.
const JPEG_QUALITY: u8 = 95;

/// The error of a row whose generator panicked.
const GENERATOR_PANICKED: &str = "the generator panicked (a bug: please report it)";

/// One row to run.
pub struct Job {
    pub index: usize,
    pub request: Request,
    pub sources: Sources,
    /// Where its images go, relative to the output dir.
    pub outputs: Vec<PathBuf>,
    /// The file of each LoRA adapter its stack names, for the manifest.
    pub lora_files: Vec<(String, PathBuf)>,
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
        // A panic is a bug in the generator, but it fails its row, not the whole batch (the scope
        // would re-raise it on the main thread). Should it leave the generator unusable, the next
        // rows fail with errors of their own.
        let generated = std::panic::catch_unwind(AssertUnwindSafe(|| {
            backend.generator.generate(&request, &mut |_| true)
        }));
        match generated {
            Ok(result) => result.map_err(bare),
            Err(_) => Err(GENERATOR_PANICKED.to_string()),
        }
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
/// run, which include every row that was in flight; nothing of this process is in flight yet).
/// `write_atomically` names them `PREFIX` + `PID.N.tmp`, PREFIX cut from the output's name, so
/// outputs with long names that begin alike share one. A temp file goes only when every file of
/// the table (`claims`, all shards) that could have made it belongs to a row of `jobs`: shards
/// sharing a folder never touch a temp another one may be writing.
pub fn remove_stale_temps(dir: &Path, jobs: &[Job], claims: &Claims) {
    let to_run: HashSet<usize> = jobs.iter().map(|job| job.index).collect();
    // Per folder, per prefix: whether only rows still to run here write files with it.
    let mut prefixes: HashMap<PathBuf, HashMap<String, bool>> = HashMap::new();
    for (relative, owner) in claims.files() {
        let path = dir.join(relative);
        if let (Some(folder), Some(name)) = (path.parent(), path.file_name()) {
            let ours = prefixes
                .entry(folder.to_path_buf())
                .or_default()
                .entry(temp_name_prefix(name))
                .or_insert(true);
            *ours &= to_run.contains(&owner);
        }
    }
    for (folder, prefixes) in prefixes {
        if !prefixes.values().any(|&ours| ours) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let ours = prefixes
                .iter()
                .any(|(prefix, &ours)| ours && is_temp_of(&file, prefix));
            if ours {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether `file` is `prefix` + `PID.N.tmp`, a temp file of `write_atomically`.
fn is_temp_of(file: &str, prefix: &str) -> bool {
    let numbers = file
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .and_then(|rest| rest.split_once('.'));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    numbers.is_some_and(|(pid, n)| digits(pid) && digits(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffgentor::generators::{Description, Generator, Sizes};
    use diffgentor::Progress;
    use std::sync::Arc;

    fn job(index: usize, output: &str) -> Job {
        Job {
            index,
            request: Request::new(format!("row {index}")),
            sources: Sources::default(),
            outputs: vec![PathBuf::from(output)],
            lora_files: Vec::new(),
        }
    }

    /// Sorted names of the files in `dir`.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_the_temp_files_of_rows_to_run_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Three long names that begin alike: their temp files share one prefix.
        let long = |tail: &str| format!("{}{tail}.png", "l".repeat(120));
        let cut = format!(".{}.", "l".repeat(100));
        let names = [
            ".000001.png.123.4.tmp".to_string(),
            ".000002.png.123.5.tmp".to_string(),
            ".000001.png.png.123.6.tmp".to_string(),
            "000001.png".to_string(),
            ".hidden.tmp".to_string(),
            format!("{cut}123.7.tmp"),
        ];
        for name in &names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let mut claims = Claims::default();
        let table = [
            (1, "000001.png".to_string()),
            (2, "000002.png".to_string()),
            (3, "000001.png.png".to_string()),
            (4, long("a")),
            (5, long("b")),
        ];
        for (index, name) in &table {
            claims.claim(*index, &[PathBuf::from(name)]).unwrap();
        }
        // Row 5, run elsewhere, may be writing the long-named temp: it stays.
        remove_stale_temps(
            dir.path(),
            &[job(1, "000001.png"), job(4, &long("a"))],
            &claims,
        );
        let mut expected = vec![
            ".000001.png.png.123.6.tmp".to_string(),
            ".000002.png.123.5.tmp".to_string(),
            ".hidden.tmp".to_string(),
            "000001.png".to_string(),
            format!("{cut}123.7.tmp"),
        ];
        expected.sort();
        assert_eq!(files(dir.path()), expected);
        // Once every row with that prefix is to run here, it goes.
        remove_stale_temps(
            dir.path(),
            &[job(4, &long("a")), job(5, &long("b"))],
            &claims,
        );
        expected.retain(|name| !name.starts_with(&cut));
        assert_eq!(files(dir.path()), expected);
    }

    /// Panics on the prompt `row 1`; draws a 2x2 image otherwise.
    #[derive(Debug)]
    struct Panicky;

    impl Generator for Panicky {
        fn describe(&self) -> Description {
            Description {
                name: "panicky".into(),
                kind: "local",
                tasks: Vec::new(),
                sizes: Sizes::Any,
                honours_seed: true,
                negative_prompt: false,
            }
        }

        fn generate(
            &self,
            request: &Request,
            _: &mut dyn FnMut(&Progress) -> bool,
        ) -> diffgentor::Result<Output> {
            assert_ne!(request.prompt, "row 1", "a bug");
            let image = Image {
                width: 2,
                height: 2,
                pixels: vec![7; 12],
            };
            Ok(Output::from_images(
                vec![image],
                Default::default(),
                Duration::ZERO,
            ))
        }
    }

    #[test]
    fn a_panicking_generator_fails_its_row_and_the_batch_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend {
            generator: Arc::new(Panicky),
            local: None,
        };
        let jobs = [job(0, "0.png"), job(1, "1.png"), job(2, "2.png")];
        let mut results = Vec::new();
        run(&jobs, 2, &backend, dir.path(), |job, outcome| {
            results.push((job.index, outcome.result.err()));
            true
        });
        results.sort();
        assert_eq!(
            results,
            [
                (0, None),
                (1, Some(GENERATOR_PANICKED.to_string())),
                (2, None)
            ]
        );
        assert_eq!(files(dir.path()), ["0.png", "2.png"]);
    }
}
