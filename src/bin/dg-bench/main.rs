//! `dg-bench`: closed-loop load on one shared pipeline; where every millisecond goes.
mod lora;
mod report;
mod unet;
mod vlm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use diffgentor::generators::{self, Generator, GeneratorOptions};
use diffgentor::runtime::OptimizationLevel;
use diffgentor::{Error, ExecutionProvider, Pipeline, Request, Runtime, RuntimeOptions};

use report::{Report, Sample, Settings};

#[derive(Parser)]
#[command(
    name = "dg-bench",
    version,
    about = "Measure diffgentor throughput and latency",
    long_about = "Measure diffgentor throughput and latency. Without a subcommand it measures image \
                  generation (flags below); `dg-bench vlm` measures a vision-language model.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Command {
    /// A vision-language model: time to first token, decode tokens/s and peak memory of greedy
    /// generations (docs/performance.md, "VLM").
    Vlm(vlm::VlmArgs),
    /// LoRA adapters: load and stack-switch times, memory per cached stack, and seconds per image
    /// with a stack against without (docs/performance.md, "LoRA").
    Lora(lora::LoraArgs),
}

/// ONNX Runtime settings, the same for every command.
#[derive(clap::Args)]
struct RuntimeArgs {
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
    /// Directory for ONNX Runtime's optimized graphs (written on the first load, read on later ones).
    #[arg(long, value_name = "DIR")]
    optimized_cache: Option<PathBuf>,
}

impl RuntimeArgs {
    fn options(&self, sessions_per_graph: usize) -> diffgentor::Result<RuntimeOptions> {
        Ok(RuntimeOptions {
            ort_library: self.ort_lib.clone(),
            execution_provider: self.ep.parse::<ExecutionProvider>()?,
            allow_cpu_fallback: false,
            intra_threads: self.threads,
            optimization: self.opt_level.parse::<OptimizationLevel>()?,
            no_spinning: self.no_spinning,
            sessions_per_graph,
            optimized_graph_cache: self.optimized_cache.clone(),
        })
    }
}

/// Image generation (the default command).
#[derive(clap::Args)]
struct Args {
    /// Model package directory (the local backend).
    #[arg(long, value_name = "DIR", required_if_eq("backend", "local"))]
    model: Option<PathBuf>,
    /// Backend that serves the requests: local, openai or gemini (keys from DG_<BACKEND>_API_KEY or
    /// the pool file; see docs/backends.md).
    #[arg(long, default_value = "local")]
    backend: String,
    /// Remote backends: the base URL (e.g. http://127.0.0.1:8000/v1); else DG_<BACKEND>_BASE_URL.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Remote backends: the model name the service runs.
    #[arg(long, value_name = "NAME")]
    remote_model: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Sessions per graph: concurrent requests run the same graph at once on up to N sessions (each
    /// holds its own weights). dg-bench builds min(N, concurrency) per graph before measuring.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Measure the UNet alone: each request is --steps UNet runs on the CFG batch with fixed text
    /// embeddings (no tokenizer, text encoder, scheduler or VAE).
    #[arg(long)]
    unet_only: bool,
    /// With --unet-only: run the steps through an IO binding (embeddings bound once, one reused
    /// output buffer) instead of plain runs.
    #[arg(long, requires = "unet_only")]
    io_binding: bool,
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
    if args.concurrency == 0 || args.requests == 0 {
        return Err(Error::InvalidArg(
            "--concurrency and --requests must be at least 1".into(),
        ));
    }
    let mut request = Request::new(args.prompt.clone());
    request.num_images = args.batch;
    // Remote services take these too when they read diffusion fields (`dg serve` with the OpenAI
    // backend's diffusion_fields option); others ignore them (dg-bench runs best effort).
    request.steps = args.steps;
    request.guidance_scale = args.guidance;
    request.scheduler = args.scheduler.clone();
    if let Some(size) = &args.size {
        let (w, h) = parse_size(size)?;
        request.width = Some(w);
        request.height = Some(h);
    }
    match (&args.model, args.backend.as_str()) {
        (Some(model), "local") => run_local(&args, model, request),
        // clap's required_if_eq does not fire for a defaulted --backend.
        (None, "local") => Err(diffgentor::Error::InvalidArg(
            "--model DIR is required with the local backend (or pass --backend openai|gemini)"
                .into(),
        )),
        _ => run_remote(&args, request),
    }
}

fn run_local(args: &Args, model: &std::path::Path, request: Request) -> diffgentor::Result<Report> {
    let load_started = Instant::now();
    let runtime = Runtime::new(args.runtime.options(args.sessions)?)?;
    let pipeline = Pipeline::load(runtime, model)?;
    // Sessions the measured loop would otherwise build on first contention.
    for graph in pipeline.model().graphs() {
        graph.reserve_sessions(args.concurrency)?;
    }
    let load = load_started.elapsed();

    let defaults = pipeline.defaults()?;
    let mut settings = settings(args, model.display().to_string());
    settings.width = request.width.unwrap_or(defaults.width);
    settings.height = request.height.unwrap_or(defaults.height);
    settings.scheduler = request.scheduler.clone().unwrap_or(defaults.scheduler);

    let work = if args.unet_only {
        Work::Unet(unet::UnetLoop::new(
            &pipeline,
            settings.width,
            settings.height,
            args.batch,
            args.steps,
            args.guidance > 1.0,
            args.io_binding,
        )?)
    } else {
        Work::Generate(&pipeline, Box::new(request))
    };
    let (samples, wall) = measure(&work, args)?;
    let graphs = pipeline
        .model()
        .graphs()
        .map(report::GraphReport::new)
        .collect();
    Ok(Report::new(settings, &samples, wall, load, graphs))
}

/// Remote calls at the given concurrency: latency is the whole call (upload, service, download).
fn run_remote(args: &Args, request: Request) -> diffgentor::Result<Report> {
    if args.unet_only {
        return Err(Error::InvalidArg(
            "--unet-only needs the local backend".into(),
        ));
    }
    let mut options = GeneratorOptions::new();
    if let Some(url) = &args.endpoint {
        options.set("base_url", url);
    }
    if let Some(model) = &args.remote_model {
        options.set("model", model);
    }
    // Enough connections for the measured concurrency on a single endpoint.
    options.set("max_in_flight", &args.concurrency.to_string());
    let generator = generators::remote(&args.backend, &options)?;
    let description = generator.describe();
    let mut settings = settings(args, description.name.clone());
    settings.width = request.width.unwrap_or(0);
    settings.height = request.height.unwrap_or(0);
    settings.scheduler = String::new();
    let work = Work::Generate(generator.as_ref(), Box::new(request));
    let (samples, wall) = measure(&work, args)?;
    Ok(Report::new(
        settings,
        &samples,
        wall,
        Duration::ZERO,
        Vec::new(),
    ))
}

/// The run's settings as the report prints them; size and scheduler are filled in by the caller.
fn settings(args: &Args, model: String) -> Settings {
    Settings {
        model,
        backend: args.backend.clone(),
        ep: args.runtime.ep.clone(),
        intra_threads: args.runtime.threads,
        opt_level: args.runtime.opt_level.clone(),
        no_spinning: args.runtime.no_spinning,
        sessions_per_graph: args.sessions,
        optimized_cache: args
            .runtime
            .optimized_cache
            .as_ref()
            .map(|d| d.display().to_string()),
        unet_only: args.unet_only,
        io_binding: args.io_binding,
        steps: args.steps,
        width: 0,
        height: 0,
        batch: args.batch,
        concurrency: args.concurrency,
        requests: args.requests,
        warmup: args.warmup,
        scheduler: String::new(),
        guidance_scale: args.guidance,
    }
}

/// Warm-up requests run at the measured concurrency (so every session the loop uses has run),
/// then the measured ones.
fn measure(work: &Work<'_>, args: &Args) -> diffgentor::Result<(Vec<Sample>, Duration)> {
    if args.warmup > 0 {
        closed_loop(work, args.concurrency, args.warmup, 0)?;
    }
    closed_loop(work, args.concurrency, args.requests, 1000)
}

/// What one measured request does.
enum Work<'p> {
    Generate(&'p dyn Generator, Box<Request>),
    Unet(unet::UnetLoop<'p>),
}

impl Work<'_> {
    fn run(&self, seed: u64) -> diffgentor::Result<Sample> {
        let begun = Instant::now();
        match self {
            Work::Generate(generator, request) => {
                let mut request = request.clone();
                request.seed = Some(seed);
                // A seed is exact locally; a remote service without seeds ignores it.
                request.best_effort = true;
                let output = generator.generate(&request, &mut |_| true)?;
                Ok(Sample::new(begun.elapsed(), &output))
            }
            Work::Unet(unet) => unet.run(seed),
        }
    }
}

/// `concurrency` threads each take the next request number until `requests` are done; request `i`
/// uses seed `first_seed + i`.
fn closed_loop(
    work: &Work<'_>,
    concurrency: usize,
    requests: usize,
    first_seed: u64,
) -> diffgentor::Result<(Vec<Sample>, Duration)> {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(requests));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> diffgentor::Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= requests {
                            return Ok(());
                        }
                        let sample = work.run(first_seed + index as u64)?;
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
                    Err(Error::Internal {
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
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Vlm(args)) => vlm::main(args),
        Some(Command::Lora(args)) => lora::main(args),
        None => {
            let args = cli.args;
            let json = args.json.clone();
            run(args).and_then(|report| {
                print!("{}", report.table());
                if let Some(path) = json {
                    diffgentor::image::write_atomically(&path, report.json().as_bytes())?;
                }
                Ok(())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
