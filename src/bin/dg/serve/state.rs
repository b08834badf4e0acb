//! What every handler shares: the replicas, the VLM, the queue, the jobs by id, the file store,
//! metrics and the server's settings.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use diffgentor::generators::{Description, Task};
use diffgentor::vlm::Vlm;
use diffgentor::Request;

use super::error::{ApiError, ApiResult};
use super::images::{random_id, FileStore};
use super::loras::Loras;
use super::metrics::Metrics;
use super::params::Policy;
use super::queue::{lock, Job, Queue, Refusal, Work};
use crate::backend::Backend;

/// Which endpoints a server takes (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Text-to-image only.
    T2i,
    /// Edits only.
    Edit,
    /// Both.
    All,
}

pub struct Settings {
    pub mode: Mode,
    pub api_key: Option<String>,
    pub policy: Policy,
    /// Largest request body (and WebSocket message), in bytes.
    pub max_body: usize,
    /// How long finished jobs (and url images) are kept.
    pub ttl: Duration,
    /// Whether chat `image_url` parts may name http(s) URLs this server fetches.
    pub allow_remote_images: bool,
}

/// The vision-language model behind `/v1/chat/completions`, shared by every worker.
pub struct ServedVlm {
    pub vlm: Arc<Vlm>,
    /// Its id in `/v1/models` and in answers: the package's folder name.
    pub name: String,
}

pub struct AppState {
    /// The image generators (none when only a VLM is served).
    pub replicas: Arc<Vec<Backend>>,
    /// What the image generators do (`None` when only a VLM is served).
    pub description: Option<Description>,
    pub vlm: Option<ServedVlm>,
    pub queue: Arc<Queue>,
    pub jobs: Mutex<HashMap<String, Arc<Job>>>,
    pub files: FileStore,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// LoRA adapters: `--lora-dir`, the active stack.
    pub loras: Loras,
    pub shutting_down: AtomicBool,
}

impl AppState {
    /// The image model, or a 404 when this server runs only a VLM.
    pub fn image_model(&self) -> ApiResult<&Description> {
        self.description.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this server runs only a vision-language model (--vlm) and makes no images; \
                 start it with --model DIR (or --backend) for the image endpoints",
            )
            .code("model_not_served")
        })
    }

    /// The VLM, or a 404 when this server was started without `--vlm`.
    pub fn chat_model(&self) -> ApiResult<&ServedVlm> {
        self.vlm.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this server runs no vision-language model; start it with --vlm DIR for chat \
                 completions",
            )
            .code("model_not_served")
        })
    }

    /// Queues an image request as a new job (see [`AppState::submit_work`]), with the LoRA stack
    /// it runs with: its own, else the active one.
    pub fn submit(&self, mut request: Request) -> ApiResult<Arc<Job>> {
        self.loras.prepare(&self.replicas, &mut request)?;
        self.submit_work(Work::Image(Box::new(request)))
    }

    /// Queues work as a new job: 429 with a retry estimate when the queue is full, 503 once the
    /// server is shutting down.
    pub fn submit_work(&self, work: Work) -> ApiResult<Arc<Job>> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(shutting_down());
        }
        let job = Job::new(random_id(12)?, work);
        match self.queue.submit(job.clone()) {
            Ok(()) => {
                let mut jobs = lock(&self.jobs);
                jobs.insert(job.id.clone(), job.clone());
                forget_oldest_finished(&mut jobs);
                Ok(job)
            }
            Err(Refusal::Closed) => Err(shutting_down()),
            Err(Refusal::Full) => {
                let (waiting, _) = self.queue.depth();
                let per_job = self
                    .metrics
                    .mean_generation()
                    .unwrap_or(Duration::from_secs(1));
                let wait = per_job * (waiting / self.queue.workers().max(1) + 1) as u32;
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("the queue is full ({waiting} requests waiting); retry later"),
                )
                .code("queue_full")
                .retry_after(wait.as_secs().max(1)))
            }
        }
    }

    /// An image job by id, unless it is unknown or ended longer ago than the TTL (the sweep that
    /// frees it runs every few seconds; a lookup never sees it past its time). Chat completions
    /// are kept only while their client waits, and the job API does not show them.
    pub fn job(&self, id: &str) -> ApiResult<Arc<Job>> {
        lock(&self.jobs)
            .get(id)
            .filter(|job| job.image_request().is_some())
            .filter(|job| job.finished_for().is_none_or(|age| age < self.settings.ttl))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no job `{id}` (jobs expire)"),
                )
                .code("job_not_found")
            })
    }

    /// Forgets a job whose caller has its answer.
    pub fn forget(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    /// Forgets jobs that ended longer ago than the TTL, and expired files.
    pub fn sweep(&self) {
        let ttl = self.settings.ttl;
        lock(&self.jobs).retain(|_, job| job.finished_for().is_none_or(|age| age < ttl));
        self.files.sweep();
    }

    /// Cancels every job not yet finished (the shutdown deadline passed).
    pub fn cancel_all(&self) {
        for job in lock(&self.jobs).values() {
            self.queue.cancel(job);
        }
    }

    /// Refuses generations or edits when `--mode` turned them off (404, as for a missing route):
    /// checked before an edit's body is read.
    pub fn check_mode(&self, editing: bool) -> ApiResult<()> {
        let allowed = match self.settings.mode {
            Mode::All => true,
            Mode::T2i => !editing,
            Mode::Edit => editing,
        };
        if allowed {
            return Ok(());
        }
        let what = if editing { "edits" } else { "generations" };
        // The flag's own spelling, as clap parses it.
        let mode = clap::ValueEnum::to_possible_value(&self.settings.mode)
            .map(|value| value.get_name().to_string())
            .unwrap_or_default();
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this server runs with --mode {mode} and takes no {what}"),
        )
        .code("mode_disabled"))
    }

    /// Refuses a task this server (its `--mode`) or its generator does not take.
    pub fn check_task(&self, request: &Request) -> ApiResult<()> {
        let task = Task::of(request);
        let editing = task != Task::TextToImage;
        self.check_mode(editing)?;
        let description = self.image_model()?;
        let tasks = &description.tasks;
        // An instruction-editing model takes an image for any edit it is asked.
        if tasks.contains(&task) || (editing && tasks.contains(&Task::Edit)) {
            return Ok(());
        }
        Err(ApiError::invalid(
            if task == Task::Inpaint {
                "mask"
            } else {
                "image"
            },
            format!(
                "{} cannot do {task} (it does {})",
                description.name,
                tasks
                    .iter()
                    .map(Task::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .code("unsupported_task"))
    }
}

/// Most jobs kept at once: past it the longest-finished go first, so a busy server's memory stays
/// bounded whatever `--job-ttl` says (a finished job holds its images).
const MAX_KEPT_JOBS: usize = 1024;

fn forget_oldest_finished(jobs: &mut HashMap<String, Arc<Job>>) {
    while jobs.len() > MAX_KEPT_JOBS {
        let oldest = jobs
            .iter()
            .filter_map(|(id, job)| Some((job.finished_for()?, id)))
            .max()
            .map(|(_, id)| id.clone());
        match oldest {
            Some(id) => jobs.remove(&id),
            // Every job kept is queued or running: the queue's own limit bounds them.
            None => break,
        };
    }
}

pub fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
    )
    .code("shutting_down")
    .retry_after(5)
}
