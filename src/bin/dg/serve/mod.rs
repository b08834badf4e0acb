//! `dg serve`: an OpenAI-compatible image server (and a native job API) over any generator, and
//! chat completions over a vision-language model (`--vlm`), with a bounded queue, progress
//! streams, health, metrics, an API key and graceful shutdown. docs/serve.md shows every endpoint.
mod chat;
mod error;
mod images;
mod jobs;
mod loras;
mod metrics;
mod middleware;
mod openai;
mod ops;
mod params;
mod queue;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use clap::Args;
use diffgentor::vlm::Vlm;
use diffgentor::Error;

use self::error::ApiError;
use self::images::FileStore;
use self::loras::{LoraFlags, Loras};
use self::metrics::Metrics;
use self::params::Policy;
use self::queue::{Limits, Queue};
use self::state::{AppState, Mode, ServedVlm, Settings};
use crate::backend::{Backend, BackendArgs};
use crate::output::Out;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Vision-language model package to serve `POST /v1/chat/completions` with (alone, or next
    /// to the image model); it runs on the --ep given, one copy shared by every worker.
    #[arg(long, value_name = "DIR")]
    vlm: Option<PathBuf>,
    /// Let chat `image_url` parts name http(s) URLs, which the server then fetches (10 s, at
    /// most --max-body-mib, 3 redirects). Off by default: only `data:` URLs are taken.
    #[arg(long)]
    allow_remote_images: bool,
    /// Address to listen on (only this machine by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed either way).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Which endpoints run: t2i (generations), edit (edits) or all.
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Generations and chat completions run at once (default: one per replica for local models,
    /// 4 for remote ones, 1 with only --vlm).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Requests that may wait for a worker; past it the server answers 429.
    #[arg(long, default_value_t = 64, value_name = "N")]
    queue_size: usize,
    /// Local models: pipelines loaded, each with its own sessions (one per --devices entry).
    #[arg(long, default_value_t = 1, value_name = "N")]
    replicas: usize,
    /// GPU ids the replicas run on, comma-separated (with --ep cuda or tensorrt): replica i
    /// runs on the i-th id.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    devices: Vec<u32>,
    /// Bearer key every request must send (else DG_SERVE_API_KEY; none: no check).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Largest request body in MiB (larger: 413).
    #[arg(long, default_value_t = 32, value_name = "MIB")]
    max_body_mib: usize,
    /// Largest image side a request may ask for or upload, in pixels (larger: 400). Past what a
    /// model was trained for, memory grows with the square of the area, so keep it near the model's.
    #[arg(long, default_value_t = 2048, value_name = "PX")]
    max_side: u32,
    /// Seconds a generation may run before it is cancelled at its next step (504); time in the
    /// queue does not count.
    #[arg(long, default_value_t = 600, value_name = "S")]
    request_timeout: u64,
    /// Seconds finished jobs and image URLs are kept (at most 30 days; the oldest go first when
    /// more than 1024 jobs or 512 MiB of images are kept).
    #[arg(long, default_value_t = 3600, value_name = "S",
          value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    job_ttl: u64,
    /// Seconds in-flight work may take to finish after SIGTERM/SIGINT before it is cancelled.
    #[arg(long, default_value_t = 30, value_name = "S")]
    shutdown_timeout: u64,
    /// The directory LoRA files are loaded from at runtime: `POST /v1/set_lora` takes paths
    /// inside it only. Without it the LoRA endpoints are refused.
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<PathBuf>,
    /// Load a LoRA file at start as adapter NAME, applied to every request that names no stack
    /// (repeatable: the adapters stack in order; strength 1 by default).
    #[arg(long = "lora", value_name = "NAME=FILE[:STRENGTH]")]
    loras: Vec<String>,
    /// Load LoRA files with keys that match no weight of the model (skipping those keys) instead
    /// of refusing them: for --lora, and set_lora's default.
    #[arg(long)]
    lora_allow_partial: bool,
}

pub fn run(args: ServeArgs, out: &mut Out) -> diffgentor::Result<()> {
    init_logging();
    let replicas = Arc::new(load_replicas(&args)?);
    let loras = Loras::start(
        LoraFlags {
            dir: args.lora_dir.as_deref(),
            preload: &args.loras,
            allow_partial: args.lora_allow_partial,
        },
        &replicas,
    )?;
    let vlm = match &args.vlm {
        Some(dir) => Some(load_vlm(&args, dir)?),
        None => None,
    };
    let description = replicas.first().map(|r| r.generator.describe());
    let default_workers = match replicas.first() {
        Some(replica) if replica.local.is_some() => replicas.len(),
        Some(_) => 4,
        None => 1,
    };
    let workers = args.concurrency.unwrap_or(default_workers).max(1);
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("DG_SERVE_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let metrics = Arc::new(Metrics::default());
    let limits = Limits {
        workers,
        capacity: args.queue_size,
        timeout: Duration::from_secs(args.request_timeout),
    };
    let (queue, workers) = Queue::start(
        replicas.clone(),
        vlm.as_ref().map(|v| v.vlm.clone()),
        limits,
        metrics.clone(),
    );
    let ttl = Duration::from_secs(args.job_ttl);
    let state = Arc::new(AppState {
        replicas,
        description,
        vlm,
        queue: queue.clone(),
        jobs: Mutex::new(HashMap::new()),
        files: FileStore::new(ttl),
        metrics,
        settings: Settings {
            mode: args.mode,
            api_key,
            policy: Policy::from_env(args.max_side)?,
            max_body: args.max_body_mib.saturating_mul(1 << 20),
            ttl,
            allow_remote_images: args.allow_remote_images,
        },
        loras,
        shutting_down: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArg(format!("cannot start the server's runtime: {e}")))?;
    runtime.block_on(serve(state.clone(), &args, out))?;
    queue.close();
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// Listens until SIGTERM or SIGINT, then stops accepting, lets in-flight work finish until the
/// shutdown timeout and cancels what is left.
async fn serve(state: Arc<AppState>, args: &ServeArgs, out: &mut Out) -> diffgentor::Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| {
            Error::InvalidArg(format!("cannot listen on {}:{}: {e}", args.host, args.port))
        })?;
    let address: SocketAddr = listener
        .local_addr()
        .map_err(|e| Error::InvalidArg(format!("no local address: {e}")))?;
    outln!(out, "listening on http://{address}");
    tracing::info!(
        model = state.description.as_ref().map_or("", |d| &d.name),
        backend = state.description.as_ref().map_or("", |d| d.kind),
        vlm = state.vlm.as_ref().map_or("", |v| &v.name),
        replicas = state.replicas.len(),
        workers = state.queue.workers(),
        "serving on http://{address}"
    );
    let sweeper = tokio::spawn({
        let state = state.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                state.sweep();
            }
        }
    });
    let deadline = Duration::from_secs(args.shutdown_timeout);
    let stopping = state.clone();
    let shutdown = async move {
        stop_signal().await;
        tracing::info!(
            "shutting down: no new requests, {} s for in-flight work",
            deadline.as_secs()
        );
        stopping.shutting_down.store(true, Ordering::Release);
        stopping.queue.close();
        let cancelling = stopping.clone();
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            tracing::warn!("shutdown deadline passed: cancelling in-flight work");
            cancelling.cancel_all();
        });
    };
    // Without TCP_NODELAY a small answer waits on the client's delayed ACK (docs/backends.md).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    served.map_err(|e| Error::InvalidArg(format!("the server failed: {e}")))
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/files/{name}", get(openai::file))
        .route("/v1/jobs", post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/ws", get(jobs::websocket))
        .route("/v1/set_lora", post(loras::set_lora))
        .route("/v1/merge_lora_weights", post(loras::merge))
        .route("/v1/unmerge_lora_weights", post(loras::unmerge))
        .route("/v1/list_loras", get(loras::list))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").code("not_found")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
                .code("method_not_allowed")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .layer(DefaultBodyLimit::max(state.settings.max_body))
        .with_state(state)
}

/// The pipelines (or the one remote generator) behind the queue; none when only a VLM is
/// served.
fn load_replicas(args: &ServeArgs) -> diffgentor::Result<Vec<Backend>> {
    if args.backend.backend != "local" {
        return Ok(vec![args.backend.load()?]);
    }
    if args.backend.model.is_none() && args.vlm.is_some() {
        return Ok(Vec::new());
    }
    let count = if args.devices.is_empty() {
        args.replicas.max(1)
    } else {
        args.devices.len()
    };
    // CPU replicas share the cores rather than each spawning a pool as large as the machine.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..count)
        .map(|i| {
            let mut backend = args.backend.clone();
            if let Some(device) = args.devices.get(i) {
                let ep = backend
                    .runtime
                    .ep
                    .split(':')
                    .next()
                    .unwrap_or("cpu")
                    .to_string();
                backend.runtime.ep = format!("{ep}:{device}");
            } else if count > 1 && backend.runtime.threads.is_none() {
                backend.runtime.threads = Some((cores / count).max(1));
            }
            backend.load()
        })
        .collect()
}

/// The VLM every worker shares, named by its folder.
fn load_vlm(args: &ServeArgs, dir: &std::path::Path) -> diffgentor::Result<ServedVlm> {
    let vlm = Vlm::load(args.backend.runtime.build()?, dir)?;
    let name = dir
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(|d| d.file_name())
        .map_or_else(|| "vlm".to_string(), |n| n.to_string_lossy().into_owned());
    Ok(ServedVlm {
        vlm: Arc::new(vlm),
        name,
    })
}

/// Logs to stderr; `DG_LOG` (or `RUST_LOG`) filters, `info` by default.
fn init_logging() {
    let filter = std::env::var("DG_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
