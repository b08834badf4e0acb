//! `dg-bench`: closed-loop load on one shared pipeline; where every millisecond goes.
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use diffgentor::runtime::OptimizationLevel;
use diffgentor::{Error, ExecutionProvider, Pipeline, Request, Runtime, RuntimeOptions};

use report::{Report, Sample, Settings};

#[derive(Parser)]
#[command(
    name = "dg-bench",
    version,
    about = "Measure diffgentor throughput and latency"
)]
struct Args {
    /// Model package directory.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Backend that serves the requests (remote backends come with their own issue).
    #[arg(long, default_value = "local")]
    backend: String,
    /// Execution provider: cpu, cuda[:ID] or tensorrt[:ID].
    #[arg(long, default_value = "cpu")]
    ep: String,
    /// Path to libonnxruntime.so (else the usual discovery order).
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// Intra-op threads per session (default: ONNX Runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// ONNX Runtime graph optimisation: disable, basic, extended, layout or all.
    #[arg(long, default_value = "all")]
    opt_level: String,
    /// Stop ONNX Runtime's idle threads from spin-waiting (helps on shared or busy machines).
    #[arg(long)]
    no_spinning: bool,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Image size WxH (default: the package's).
    #[arg(long, value_name = "WxH")]
    size: Option<String>,
    /// Images per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Requests in flight at once (one thread each, all on one pipeline).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured requests.
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// Requests run before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    #[arg(long, default_value = "a photo of an astronaut riding a horse on mars")]
    prompt: String,
    /// Also write the report as JSON (schema in docs/performance.md).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_size(size: &str) -> diffgentor::Result<(u32, u32)> {
    let bad = || Error::InvalidArg(format!("--size `{size}` is not WxH"));
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

fn run(args: Args) -> diffgentor::Result<Report> {
    if args.backend != "local" {
        return Err(Error::Unsupported(format!(
            "backend `{}` (this build has only `local`)",
            args.backend
        )));
    }
    if args.concurrency == 0 || args.requests == 0 {
        return Err(Error::InvalidArg(
            "--concurrency and --requests must be at least 1".into(),
        ));
    }
    let load_started = Instant::now();
    let runtime = Runtime::new(RuntimeOptions {
        ort_library: args.ort_lib.clone(),
        execution_provider: args.ep.parse::<ExecutionProvider>()?,
        allow_cpu_fallback: false,
        intra_threads: args.threads,
        optimization: args.opt_level.parse::<OptimizationLevel>()?,
        no_spinning: args.no_spinning,
    })?;
    let pipeline = Arc::new(Pipeline::load(runtime, &args.model)?);
    let load = load_started.elapsed();

    let mut request = Request::new(args.prompt.clone());
    request.steps = args.steps;
    request.num_images = args.batch;
    request.guidance_scale = args.guidance;
    request.scheduler = args.scheduler.clone();
    if let Some(size) = &args.size {
        let (w, h) = parse_size(size)?;
        request.width = Some(w);
        request.height = Some(h);
    }
    let defaults = pipeline.defaults()?;
    let settings = Settings {
        model: args.model.display().to_string(),
        backend: args.backend.clone(),
        ep: args.ep.clone(),
        intra_threads: args.threads,
        opt_level: args.opt_level.clone(),
        no_spinning: args.no_spinning,
        steps: args.steps,
        width: request.width.unwrap_or(defaults.width),
        height: request.height.unwrap_or(defaults.height),
        batch: args.batch,
        concurrency: args.concurrency,
        requests: args.requests,
        warmup: args.warmup,
        scheduler: request.scheduler.clone().unwrap_or(defaults.scheduler),
        guidance_scale: args.guidance,
    };

    for seed in 0..args.warmup as u64 {
        request.seed = Some(seed);
        pipeline.generate(&request)?;
    }
    let (samples, wall) = closed_loop(&pipeline, &request, args.concurrency, args.requests)?;
    Ok(Report::new(settings, &samples, wall, load))
}

/// `concurrency` threads each take the next request number until `requests` are done.
fn closed_loop(
    pipeline: &Arc<Pipeline>,
    request: &Request,
    concurrency: usize,
    requests: usize,
) -> diffgentor::Result<(Vec<Sample>, Duration)> {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(requests));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> diffgentor::Result<()> {
                    let mut request = request.clone();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= requests {
                            return Ok(());
                        }
                        request.seed = Some(1000 + index as u64);
                        let begun = Instant::now();
                        let output = pipeline.generate(&request)?;
                        let sample = Sample::new(begun.elapsed(), &output);
                        samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(sample);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::Backend {
                        component: "dg-bench".into(),
                        message: "a worker thread panicked".into(),
                    })
                })
            })
            .collect::<diffgentor::Result<Vec<()>>>()
    })?;
    let wall = started.elapsed();
    Ok((
        samples.into_inner().unwrap_or_else(|p| p.into_inner()),
        wall,
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json.clone();
    let result = run(args).and_then(|report| {
        print!("{}", report.table());
        if let Some(path) = json {
            diffgentor::image::write_atomically(&path, report.json().as_bytes())?;
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
