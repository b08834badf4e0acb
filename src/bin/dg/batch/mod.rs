//! Batch synthesis: `dg t2i --input TABLE --output-dir DIR` (and `dg edit --input`) runs one
//! request per table row with any generator and writes a dataset: images named by fixed rules,
//! a durable manifest, resumable after a kill, sharded across processes (docs/batch.md).
mod display;
mod input;
mod logs;
mod manifest;
mod naming;
mod rows;
mod runner;
mod shard;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use diffgentor::{Error, Output, Request};
use serde_json::{json, Value};

use crate::backend::{Backend, BackendArgs};
use crate::loras::{LoraArgs, RowLoras};
use crate::output::Out;
use crate::progress::Mode;
use display::RowsDisplay;
use logs::Log;
use manifest::{Entry, Manifest};
use naming::Claims;
use rows::{Columns, Reader};
use runner::{Job, Outcome};
use shard::Shard;

pub use rows::Task;

/// The flags of a batch run, shared by `dg t2i` (`dg generate`) and `dg edit`.
#[derive(Args, Clone)]
#[command(next_help_heading = "Batch (docs/batch.md)")]
pub struct BatchArgs {
    /// A table of requests, one per row: .csv, .tsv, .jsonl or .parquet; images go to --output-dir.
    #[arg(
        long,
        value_name = "FILE",
        requires = "output_dir",
        conflicts_with_all = ["prompt", "output", "latents", "save_latents", "timings"]
    )]
    pub input: Option<PathBuf>,
    /// Where a batch writes its images, manifest.jsonl and logs.
    #[arg(long, value_name = "DIR", requires = "input")]
    output_dir: Option<PathBuf>,
    /// The column holding each row's prompt.
    #[arg(long, default_value = "prompt", value_name = "NAME")]
    prompt_column: String,
    /// The column holding each row's negative prompt.
    #[arg(long, default_value = "negative_prompt", value_name = "NAME")]
    negative_prompt_column: String,
    /// The column holding each row's seed (else --seed plus the row index, else drawn).
    #[arg(long, default_value = "seed", value_name = "NAME")]
    seed_column: String,
    /// dg edit: the column of source image paths (relative to the input file's folder).
    #[arg(long, default_value = "image", value_name = "NAME")]
    image_column: String,
    /// dg edit: the column of inpainting mask paths.
    #[arg(long, default_value = "mask", value_name = "NAME")]
    mask_column: String,
    /// Name each row's images after this column (a path under --output-dir) instead of its index.
    #[arg(long, value_name = "NAME")]
    output_name_column: Option<String>,
    /// Run only shard K of N (rows with index % N == K); default from RANK/WORLD_SIZE.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Requests in flight at once (remote backends, or a session pool).
    #[arg(long, default_value_t = 1, value_name = "N")]
    concurrency: usize,
    /// Generate every row again, even those already done.
    #[arg(long)]
    overwrite: bool,
    /// Where the log file goes (default: OUTPUT_DIR/logs/<yyyymmdd_hhmm>).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

impl BatchArgs {
    fn columns(&self) -> Columns {
        Columns {
            prompt: self.prompt_column.clone(),
            negative_prompt: self.negative_prompt_column.clone(),
            seed: self.seed_column.clone(),
            image: self.image_column.clone(),
            mask: self.mask_column.clone(),
            output_name: self.output_name_column.clone(),
        }
    }
}

/// Runs a batch: every row of `--input` as `base` (the command's flags) plus the row's values.
pub fn run(
    batch: &BatchArgs,
    backend: &BackendArgs,
    lora: &LoraArgs,
    quiet: bool,
    base: Request,
    task: Task,
    out: &mut Out,
) -> diffgentor::Result<()> {
    let (Some(input), Some(dir)) = (&batch.input, &batch.output_dir) else {
        return Err(Error::InvalidArg(
            "a batch needs --input and --output-dir".into(),
        ));
    };
    let started = Instant::now();
    let table = input::read(input)?;
    let reader = Reader::new(batch.columns(), task, &table.columns, input)?;
    let shard = Shard::resolve(batch.shard.as_deref())?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    let done = if batch.overwrite {
        HashSet::new()
    } else {
        manifest::completed(dir)?
    };
    let root = dir
        .canonicalize()
        .map_err(|e| Error::io("cannot resolve", dir, e))?;
    let mut plan = plan(&table.rows, &reader, &base, shard, (dir, &root), &done);
    let log = Log::open(batch.log_dir.as_deref(), dir, shard.index)?;
    let manifest_path = dir.join(shard.manifest_name());
    let owned = plan.jobs.len() + plan.refused.len() + plan.skipped;
    log.line(&format!(
        "start: {} rows in {}, shard {}/{}: {} to run, {} already done",
        table.rows.len(),
        input.display(),
        shard.index,
        shard.count,
        owned - plan.skipped,
        plan.skipped
    ));
    // Loaded before any line is recorded, so a wrong flag or model costs no manifest lines.
    let backend = if plan.jobs.is_empty() {
        None
    } else {
        Some(with_local_rank_device(backend).load()?)
    };
    if let Some(backend) = &backend {
        let flags = lora.load(backend, quiet)?;
        let mut loras = RowLoras::new(backend, &flags, lora.options(), quiet);
        resolve_loras(&mut plan, &mut loras, reader.base_dir());
    }
    // Only the first process of a node draws progress, as torchrun-style launches start several.
    // Started after loading, so images/s is the rate of generating and writing.
    let first_on_node = std::env::var("LOCAL_RANK").map_or(true, |r| r.trim() == "0");
    let display = RowsDisplay::new(
        Mode::detect(quiet || !first_on_node),
        plan.jobs.len() + plan.refused.len(),
    );
    let mut recorder = Recorder {
        manifest: Manifest::open(&manifest_path)?,
        log,
        display,
        ok: 0,
        failed: 0,
        broken: None,
    };
    for (index, error) in plan.refused {
        recorder.record(Entry::failed(index, error));
    }
    if let Some(backend) = backend {
        runner::remove_stale_temps(dir, &plan.jobs, &plan.claims);
        runner::run(
            &plan.jobs,
            batch.concurrency,
            &backend,
            dir,
            |job, outcome| recorder.record(Entry::finished(job, outcome, &backend)),
        );
    }
    recorder.display.finish();
    if let Some(err) = recorder.broken {
        return Err(err);
    }
    let summary = format!(
        "batch: {} ok, {} failed, {} already done, of {owned} rows (shard {}/{}) in {:.1}s, {:.2} \
         images/s; manifest {}",
        recorder.ok,
        recorder.failed,
        plan.skipped,
        shard.index,
        shard.count,
        started.elapsed().as_secs_f64(),
        recorder.display.rate(),
        manifest_path.display()
    );
    recorder.log.line(&summary);
    outln!(out, "{summary}");
    // Rows fail mostly for their data (a bad cell, a missing image, a request the generator
    // refuses), not for a bug here; each row's own error is in the manifest and the log.
    if recorder.failed > 0 {
        return Err(Error::InvalidArg(format!(
            "{} of {owned} rows failed (see {} and {})",
            recorder.failed,
            manifest_path.display(),
            recorder.log.path.display()
        )));
    }
    Ok(())
}

/// Where every finished row goes: a manifest line, a log line, an error on stderr, the counts.
struct Recorder {
    manifest: Manifest,
    log: Log,
    display: RowsDisplay,
    ok: usize,
    failed: usize,
    /// The manifest could not be written: the batch stops, as nothing more would be recorded.
    broken: Option<Error>,
}

impl Recorder {
    /// Records `entry`; false once the manifest cannot be written.
    fn record(&mut self, mut entry: Entry) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if let Some(error) = &entry.error {
            let text = format!("row {}: {error}", entry.index);
            self.display.message(&format!("error: {text}"));
            self.log.line(&format!("error: {text}"));
            self.failed += 1;
        } else {
            let outputs = entry.outputs.join(", ");
            self.log
                .line(&format!("row {}: wrote {outputs}", entry.index));
            self.ok += 1;
        }
        if let Err(err) = self.manifest.append(&mut entry) {
            self.broken = Some(err);
            return false;
        }
        self.display.row(entry.outputs.len(), entry.error.is_some());
        true
    }
}

/// The rows this shard runs, refuses (with the reason) or skips as already done, and which row
/// of the whole table writes each file.
struct Plan {
    jobs: Vec<Job>,
    refused: Vec<(usize, String)>,
    skipped: usize,
    claims: Claims,
}

/// Builds every row's request and output names. Names are claimed over the whole table in input
/// order, so every shard agrees on which of two rows naming the same file is refused.
fn plan(
    rows: &[input::Row],
    reader: &Reader,
    base: &Request,
    shard: Shard,
    (dir, canonical_dir): (&Path, &Path),
    done: &HashSet<usize>,
) -> Plan {
    let mut plan = Plan {
        jobs: Vec::new(),
        refused: Vec::new(),
        skipped: 0,
        claims: Claims::default(),
    };
    for (index, row) in rows.iter().enumerate() {
        let named = reader.request(base, row, index).and_then(|request| {
            let name = reader.output_name(row).transpose()?;
            let outputs = naming::relative_paths(index, name.as_deref(), request.num_images)?;
            plan.claims.claim(index, &outputs)?;
            Ok((request, outputs))
        });
        if !shard.owns(index) {
            continue;
        }
        let job = named.and_then(|(request, outputs)| {
            for output in &outputs {
                naming::check_inside(dir, canonical_dir, output)?;
            }
            Ok(Job {
                index,
                request,
                sources: reader.sources(row)?,
                outputs,
                lora_files: Vec::new(),
            })
        });
        match job {
            Ok(_) if done.contains(&index) => plan.skipped += 1,
            Ok(job) => plan.jobs.push(job),
            Err(error) => plan.refused.push((index, error)),
        }
    }
    plan
}

/// Loads the LoRA files the rows to run name (each once) and names their adapters in the rows'
/// stacks; a row whose LoRA cannot be used is refused with the reason, the others go on.
fn resolve_loras(plan: &mut Plan, loras: &mut RowLoras, base_dir: &Path) {
    let jobs = std::mem::take(&mut plan.jobs);
    for mut job in jobs {
        let Some(stack) = job.request.loras.as_mut() else {
            plan.jobs.push(job);
            continue;
        };
        match loras.resolve(stack, base_dir) {
            Ok(files) => {
                job.lora_files = files;
                plan.jobs.push(job);
            }
            Err(error) => plan.refused.push((job.index, error)),
        }
    }
}

/// `--ep cuda` (or tensorrt) without a device id runs on device `LOCAL_RANK` when a launcher set
/// it, so the processes of one node share its GPUs.
fn with_local_rank_device(backend: &BackendArgs) -> BackendArgs {
    let mut backend = backend.clone();
    let rank = std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|r| r.trim().parse::<usize>().ok());
    if let Some(rank) = rank {
        let ep = &mut backend.runtime.ep;
        if matches!(ep.as_str(), "cuda" | "tensorrt") {
            *ep = format!("{ep}:{rank}");
        }
    }
    backend
}

impl Entry {
    fn failed(index: usize, error: String) -> Entry {
        Entry {
            index,
            status: "error".into(),
            error: Some(error),
            ..Entry::default()
        }
    }

    fn finished(job: &Job, outcome: Outcome, backend: &Backend) -> Entry {
        let description = backend.generator.describe();
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let timings = json!({"generate_ms": ms(outcome.generate), "write_ms": ms(outcome.write)});
        let mut entry = Entry {
            index: job.index,
            backend: description.kind.to_string(),
            model: description.name,
            timings,
            ..Entry::default()
        };
        match outcome.result {
            Ok(output) => {
                entry.status = "ok".into();
                entry.outputs = job
                    .outputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                entry.seed = Some(output.seed);
                entry.parameters = parameters(job, Some(&output));
            }
            Err(error) => {
                entry.status = "error".into();
                entry.parameters = parameters(job, None);
                entry.error = Some(error);
            }
        }
        entry
    }
}

/// The request as it ran (the output's size and scheduler when it finished).
fn parameters(job: &Job, output: Option<&Output>) -> Value {
    let r = &job.request;
    let mut p = json!({
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "width": output.map_or(r.width, |o| Some(o.width)),
        "height": output.map_or(r.height, |o| Some(o.height)),
        "scheduler": output.map_or(r.scheduler.clone(), |o| Some(o.scheduler.clone())),
        "num_images": r.num_images,
    });
    if !job.sources.images.is_empty() {
        p["image"] = json!(job.sources.images);
        p["mask"] = json!(job.sources.mask);
        p["strength"] = json!(r.strength);
        p["image_guidance_scale"] = json!(r.image_guidance_scale);
    }
    if let Some(stack) = r.loras.as_deref().filter(|s| !s.is_empty()) {
        let file = |name: &str| {
            job.lora_files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, path)| path.display().to_string())
        };
        p["loras"] = stack
            .iter()
            .map(|u| {
                json!({
                    "name": u.name,
                    "strength": crate::loras::strength_json(u.strength),
                    "file": file(&u.name),
                })
            })
            .collect();
    }
    if r.lora_prompt_tags {
        p["lora_prompt_tags"] = json!(true);
    }
    if let Some(ignored) = output.and_then(|o| o.metadata.get("ignored")) {
        p["ignored"] = ignored.clone();
    }
    p
}

/// `dg manifest`: work on the manifests of a batch's output dir.
#[derive(Args)]
pub struct ManifestArgs {
    #[command(subcommand)]
    command: ManifestCommand,
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Join manifest.jsonl and the shards' manifest.part-*.jsonl into manifest.jsonl: one line per
    /// row (the latest), in input order.
    Merge {
        /// The batch's --output-dir.
        dir: PathBuf,
    },
}

pub fn manifest(args: ManifestArgs, out: &mut Out) -> diffgentor::Result<()> {
    match args.command {
        ManifestCommand::Merge { dir } => {
            let (rows, failed) = manifest::merge(&dir)?;
            outln!(
                out,
                "merged {rows} rows ({failed} failed) into {}",
                dir.join("manifest.jsonl").display()
            );
            Ok(())
        }
    }
}
