//! The bounded queue in front of the generators: jobs wait in order, a fixed set of worker
//! threads runs them (an image job on the worker's replica, a chat completion on the one shared
//! VLM), and every change of a job's state is published on a watch channel that HTTP handlers,
//! SSE streams and WebSockets await.
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use diffgentor::vlm::{Vlm, VlmOutput, VlmRequest};
use diffgentor::{CancelToken, Error, Output, Request};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::error::ApiError;
use super::metrics::Metrics;
use crate::backend::Backend;

/// Where a job is.
#[derive(Debug, Clone)]
pub enum JobState {
    Queued,
    Running {
        step: usize,
        total: usize,
        stage: usize,
        stages: usize,
    },
    Done(Arc<Output>),
    /// A chat completion's answer.
    Answered(Arc<VlmOutput>),
    Failed(ApiError),
    Cancelled,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running { .. } => "running",
            JobState::Done(_) | JobState::Answered(_) => "done",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn finished(&self) -> bool {
        matches!(
            self,
            JobState::Done(_) | JobState::Answered(_) | JobState::Failed(_) | JobState::Cancelled
        )
    }
}

/// What a job asks for.
pub enum Work {
    /// Images from the diffusion model (or remote generator).
    Image(Box<Request>),
    /// A chat completion from the VLM.
    Chat(Chat),
}

/// A chat completion and, while a client streams it, where each new token's text goes.
pub struct Chat {
    pub request: VlmRequest,
    /// Taken by the worker for the run and dropped when it ends, so the receiver sees the end.
    tokens: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl Chat {
    /// A completion whose tokens are sent on `tokens` as they come (`None`: answered whole).
    pub fn new(request: VlmRequest, tokens: Option<mpsc::UnboundedSender<String>>) -> Chat {
        Chat {
            request,
            tokens: Mutex::new(tokens),
        }
    }
}

/// One request on its way through the queue.
pub struct Job {
    pub id: String,
    pub work: Work,
    /// The replica that ran it (for the `parameters` text of its images).
    replica: Mutex<Option<usize>>,
    pub created: SystemTime,
    cancel: CancelToken,
    state: watch::Sender<JobState>,
    finished_at: Mutex<Option<Instant>>,
    /// The finished images as the job API sends them, encoded once however often they are read.
    pub encoded: OnceLock<Value>,
}

impl Job {
    pub fn new(id: String, mut work: Work) -> Arc<Job> {
        let cancel = CancelToken::new();
        match &mut work {
            Work::Image(request) => request.cancel = Some(cancel.clone()),
            Work::Chat(chat) => chat.request.cancel = Some(cancel.clone()),
        }
        Arc::new(Job {
            id,
            work,
            replica: Mutex::new(None),
            created: SystemTime::now(),
            cancel,
            state: watch::Sender::new(JobState::Queued),
            finished_at: Mutex::new(None),
            encoded: OnceLock::new(),
        })
    }

    /// The image request, for an image job.
    pub fn image_request(&self) -> Option<&Request> {
        match &self.work {
            Work::Image(request) => Some(request.as_ref()),
            Work::Chat(_) => None,
        }
    }

    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    pub fn replica(&self) -> Option<usize> {
        *lock(&self.replica)
    }

    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.subscribe()
    }

    /// Ends the job unless it already ended (a cancel racing a finish keeps the first outcome).
    /// A chat completion's token stream ends with it, also when it never ran.
    fn finish(&self, state: JobState) -> bool {
        if let Work::Chat(chat) = &self.work {
            lock(&chat.tokens).take();
        }
        let changed = self.state.send_if_modified(|current| {
            if current.finished() {
                return false;
            }
            *current = state;
            true
        });
        if changed {
            *lock(&self.finished_at) = Some(Instant::now());
        }
        changed
    }

    /// How long ago it ended, for expiry.
    pub fn finished_for(&self) -> Option<Duration> {
        lock(&self.finished_at).map(|t| t.elapsed())
    }

    /// Moves a running job on, unless it has ended (a cancel or the deadline came first).
    fn progress(&self, state: JobState) {
        self.state.send_if_modified(|current| {
            let moving = !current.finished();
            if moving {
                *current = state;
            }
            moving
        });
    }
}

struct Waiting {
    jobs: VecDeque<Arc<Job>>,
    running: usize,
    closed: bool,
}

/// The queue and its workers.
pub struct Queue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    capacity: usize,
    workers: usize,
    /// Longest a generation may run (`--request-timeout`).
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// How much a queue takes on.
pub struct Limits {
    /// Generations running at once (worker threads).
    pub workers: usize,
    /// Jobs that may wait beyond those running.
    pub capacity: usize,
    /// Longest a generation may run.
    pub timeout: Duration,
}

/// Why a job was not queued.
pub enum Refusal {
    Full,
    Closed,
}

impl Queue {
    /// Starts `workers` threads over `replicas` (worker i runs image jobs on replica i mod the
    /// count; there may be none when only a VLM is served) and the VLM every worker shares.
    pub fn start(
        replicas: Arc<Vec<Backend>>,
        vlm: Option<Arc<Vlm>>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> (Arc<Queue>, Vec<JoinHandle<()>>) {
        let Limits {
            workers,
            capacity,
            timeout,
        } = limits;
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                running: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            capacity,
            workers,
            timeout,
            metrics,
        });
        let handles = (0..workers)
            .map(|i| {
                let queue = queue.clone();
                let replicas = replicas.clone();
                let vlm = vlm.clone();
                let replica = (!replicas.is_empty()).then(|| i % replicas.len());
                std::thread::Builder::new()
                    .name(format!("dg-worker-{i}"))
                    .spawn(move || queue.work(&replicas, replica, vlm.as_deref()))
            })
            .filter_map(|spawned| match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::error!("could not start a worker thread: {e}");
                    None
                }
            })
            .collect();
        (queue, handles)
    }

    /// Stops a job: a queued one leaves the queue (freeing its place) and ends now, a running one
    /// ends at its next denoising step. Whether a job is still queued is decided under the queue's
    /// lock, so a worker taking it at that moment either never sees it or sees it cancelled.
    pub fn cancel(&self, job: &Job) {
        job.cancel.cancel();
        let mut waiting = lock(&self.waiting);
        if let Some(at) = waiting.jobs.iter().position(|queued| queued.id == job.id) {
            waiting.jobs.remove(at);
            self.metrics.set_queue(waiting.jobs.len(), waiting.running);
            drop(waiting);
            job.finish(JobState::Cancelled);
        }
    }

    /// Queues a job, unless the queue is full or closed.
    pub fn submit(&self, job: Arc<Job>) -> Result<(), Refusal> {
        let mut waiting = lock(&self.waiting);
        if waiting.closed {
            return Err(Refusal::Closed);
        }
        // A free worker takes the job at once, so only jobs beyond them count toward the limit.
        if waiting.jobs.len() >= self.capacity + self.workers.saturating_sub(waiting.running) {
            return Err(Refusal::Full);
        }
        waiting.jobs.push_back(job);
        self.metrics.set_queue(waiting.jobs.len(), waiting.running);
        drop(waiting);
        self.wake.notify_one();
        Ok(())
    }

    /// A queued job's place (0 = next), `None` once it left the queue.
    pub fn position(&self, job: &Job) -> Option<usize> {
        lock(&self.waiting)
            .jobs
            .iter()
            .position(|queued| queued.id == job.id)
    }

    /// Jobs waiting and running.
    pub fn depth(&self) -> (usize, usize) {
        let waiting = lock(&self.waiting);
        (waiting.jobs.len(), waiting.running)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Takes no more jobs; queued ones are cancelled, running ones finish (or are cancelled by
    /// the caller when its deadline passes). Workers exit once idle.
    pub fn close(&self) {
        let mut waiting = lock(&self.waiting);
        waiting.closed = true;
        for job in waiting.jobs.drain(..) {
            job.finish(JobState::Failed(super::state::shutting_down()));
        }
        self.metrics.set_queue(0, waiting.running);
        drop(waiting);
        self.wake.notify_all();
    }

    fn next(&self) -> Option<Arc<Job>> {
        let mut waiting = lock(&self.waiting);
        loop {
            if let Some(job) = waiting.jobs.pop_front() {
                waiting.running += 1;
                self.metrics.set_queue(waiting.jobs.len(), waiting.running);
                let total = match &job.work {
                    Work::Image(request) => request.steps,
                    Work::Chat(chat) => chat.request.max_new_tokens,
                };
                job.progress(JobState::Running {
                    step: 0,
                    total,
                    stage: 1,
                    stages: 1,
                });
                return Some(job);
            }
            if waiting.closed {
                return None;
            }
            waiting = self.wake.wait(waiting).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn work(&self, replicas: &[Backend], replica: Option<usize>, vlm: Option<&Vlm>) {
        while let Some(job) = self.next() {
            let outcome = if job.cancel.is_cancelled() {
                // Cancelled as it was taken: it never runs.
                JobState::Cancelled
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job.work {
                    Work::Image(request) => match replica {
                        Some(i) => self.run(&job, request, &replicas[i], i),
                        None => JobState::Failed(no_model("image model")),
                    },
                    Work::Chat(chat) => match vlm {
                        Some(vlm) => self.run_chat(&job, chat, vlm),
                        None => JobState::Failed(no_model("VLM")),
                    },
                }))
                .unwrap_or_else(|_| {
                    JobState::Failed(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the generator panicked (a bug: please report it)",
                    ))
                })
            };
            // The gauges drop before the job ends, so whoever sees the answer sees them settled.
            let mut waiting = lock(&self.waiting);
            waiting.running = waiting.running.saturating_sub(1);
            self.metrics.set_queue(waiting.jobs.len(), waiting.running);
            drop(waiting);
            job.finish(outcome);
        }
    }

    /// Runs one job and says how it ended: cancelled at the next step once the caller cancels or
    /// the request timeout passes (a 504 then).
    fn run(&self, job: &Job, request: &Request, backend: &Backend, replica: usize) -> JobState {
        *lock(&job.replica) = Some(replica);
        let started = Instant::now();
        let mut timed_out = false;
        let result = backend.generator.generate(request, &mut |p| {
            job.progress(JobState::Running {
                step: p.step,
                total: p.total,
                stage: p.stage,
                stages: p.stages,
            });
            timed_out = started.elapsed() > self.timeout;
            !timed_out && !job.cancel.is_cancelled()
        });
        let outcome = match result {
            Ok(output) => {
                self.metrics.record_generation(&output, started.elapsed());
                return JobState::Done(Arc::new(output));
            }
            Err(Error::Cancelled) if timed_out => JobState::Failed(self.timed_out()),
            Err(Error::Cancelled) => JobState::Cancelled,
            Err(e) => JobState::Failed(e.into()),
        };
        self.metrics.record_failure(started.elapsed());
        outcome
    }

    /// Runs one chat completion, sending each token's text to a streaming client: cancelled at the
    /// next token once the caller cancels, the streaming client goes away or the request timeout
    /// passes (a 504 then).
    fn run_chat(&self, job: &Job, chat: &Chat, vlm: &Vlm) -> JobState {
        let started = Instant::now();
        let mut timed_out = false;
        let mut generated = 0;
        let tokens = lock(&chat.tokens).take();
        let result = vlm.generate_streaming(&chat.request, &mut |event| {
            generated = event.index;
            timed_out = started.elapsed() > self.timeout;
            if timed_out || job.cancel.is_cancelled() {
                return false;
            }
            // A streaming client that went away ends the completion too.
            tokens
                .as_ref()
                .is_none_or(|tokens| tokens.send(event.text.to_string()).is_ok())
        });
        // The streaming client's receiver ends here, before the job does.
        drop(tokens);
        let (outcome, reason) = match result {
            Ok(output) => {
                let reason = output.finish_reason.as_str();
                self.metrics.record_chat(
                    reason,
                    output.prompt_tokens,
                    output.token_ids.len(),
                    started.elapsed(),
                );
                return JobState::Answered(Arc::new(output));
            }
            Err(Error::Cancelled) if timed_out => (JobState::Failed(self.timed_out()), "timeout"),
            Err(Error::Cancelled) => (JobState::Cancelled, "cancelled"),
            Err(e) => (JobState::Failed(e.into()), "failed"),
        };
        self.metrics
            .record_chat(reason, 0, generated, started.elapsed());
        outcome
    }

    fn timed_out(&self) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the generation ran longer than {} s and was cancelled",
                self.timeout.as_secs()
            ),
        )
        .code("timeout")
    }
}

/// A job for a model this server does not run (the routes refuse them first; never expected).
fn no_model(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("this server runs no {what} (a bug: please report it)"),
    )
}

/// Locks a mutex, taking it over from a thread that panicked while holding it (every value kept
/// under these locks stays consistent between statements).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
