//! The bounded queue in front of the generators: jobs wait in order, a fixed set of worker
//! threads runs them (each on one replica), and every change of a job's state is published on a
//! watch channel that HTTP handlers, SSE streams and WebSockets await.
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use diffgentor::{CancelToken, Error, Output, Request};
use tokio::sync::watch;

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
    Failed(ApiError),
    Cancelled,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running { .. } => "running",
            JobState::Done(_) => "done",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn finished(&self) -> bool {
        matches!(
            self,
            JobState::Done(_) | JobState::Failed(_) | JobState::Cancelled
        )
    }
}

/// One request on its way through the queue.
pub struct Job {
    pub id: String,
    pub request: Request,
    /// The replica that ran it (for the `parameters` text of its images).
    replica: Mutex<Option<usize>>,
    pub created: SystemTime,
    pub cancel: CancelToken,
    state: watch::Sender<JobState>,
    finished_at: Mutex<Option<Instant>>,
}

impl Job {
    pub fn new(id: String, mut request: Request) -> Arc<Job> {
        let cancel = CancelToken::new();
        request.cancel = Some(cancel.clone());
        Arc::new(Job {
            id,
            request,
            replica: Mutex::new(None),
            created: SystemTime::now(),
            cancel,
            state: watch::Sender::new(JobState::Queued),
            finished_at: Mutex::new(None),
        })
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
    fn finish(&self, state: JobState) -> bool {
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

    /// Stops the job: a queued one ends now, a running one at its next denoising step.
    pub fn request_cancel(&self) {
        self.cancel.cancel();
        if matches!(*self.state.borrow(), JobState::Queued) {
            self.finish(JobState::Cancelled);
        }
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
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
pub enum Refusal {
    Full,
    Closed,
}

impl Queue {
    /// Starts `workers` threads over `replicas` (worker i runs on replica i mod the count).
    pub fn start(
        replicas: Arc<Vec<Backend>>,
        workers: usize,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Queue>, Vec<JoinHandle<()>>) {
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                running: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            capacity,
            workers,
            metrics,
        });
        let handles = (0..workers)
            .map(|i| {
                let queue = queue.clone();
                let replicas = replicas.clone();
                std::thread::Builder::new()
                    .name(format!("dg-worker-{i}"))
                    .spawn(move || queue.work(&replicas, i % replicas.len()))
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
                return Some(job);
            }
            if waiting.closed {
                return None;
            }
            waiting = self.wake.wait(waiting).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn work(&self, replicas: &[Backend], replica: usize) {
        while let Some(job) = self.next() {
            let outcome = if job.cancel.is_cancelled() {
                // Cancelled while it waited: it never runs.
                JobState::Cancelled
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.run(&job, &replicas[replica], replica)
                }))
                .unwrap_or_else(|_| {
                    JobState::Failed(ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "the generator panicked (a bug: please report it)",
                    ))
                })
            };
            // The gauges drop before the job ends, so whoever sees the answer sees them settled.
            let mut waiting = lock(&self.waiting);
            waiting.running -= 1;
            self.metrics.set_queue(waiting.jobs.len(), waiting.running);
            drop(waiting);
            job.finish(outcome);
        }
    }

    /// Runs one job and says how it ended.
    fn run(&self, job: &Job, backend: &Backend, replica: usize) -> JobState {
        *lock(&job.replica) = Some(replica);
        let started = Instant::now();
        job.state.send_replace(JobState::Running {
            step: 0,
            total: job.request.steps,
            stage: 1,
            stages: 1,
        });
        let mut steps = 0;
        let result = backend.generator.generate(&job.request, &mut |p| {
            steps += 1;
            job.state.send_replace(JobState::Running {
                step: p.step,
                total: p.total,
                stage: p.stage,
                stages: p.stages,
            });
            !job.cancel.is_cancelled()
        });
        let denoise: Duration = match &result {
            Ok(output) => output.timings.denoise_steps.iter().sum(),
            Err(_) => Duration::ZERO,
        };
        self.metrics.record_generation(
            result.as_ref().map_or(0, |o| o.images.len()),
            steps,
            denoise,
            started.elapsed(),
        );
        match result {
            Ok(output) => JobState::Done(Arc::new(output)),
            Err(Error::Cancelled) => JobState::Cancelled,
            Err(e) => JobState::Failed(e.into()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
