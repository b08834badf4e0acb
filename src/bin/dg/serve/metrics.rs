//! Counters for `GET /metrics`, in the Prometheus text format: requests by route and status,
//! latency, queue depth, in-flight work, images and denoising steps, chat completions and tokens.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    queued: usize,
    running: usize,
    images: u64,
    steps: u64,
    denoise: Duration,
    generations: u64,
    generation_time: Duration,
    /// Chat completions by how they ended (stop, length, cancelled, timeout, failed).
    chats: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, latency: Duration) {
        let mut c = self.lock();
        *c.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = c.latency.entry(route.to_string()).or_default();
        let seconds = latency.as_secs_f64();
        for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn set_queue(&self, queued: usize, running: usize) {
        let mut c = self.lock();
        c.queued = queued;
        c.running = running;
    }

    /// A finished generation: its images, denoising steps and their time.
    pub fn record_generation(&self, output: &diffgentor::Output, total: Duration) {
        let mut c = self.lock();
        c.images += output.images.len() as u64;
        c.steps += output.timings.denoise_steps.len() as u64;
        c.denoise += output.timings.denoise_steps.iter().sum::<Duration>();
        c.generations += 1;
        c.generation_time += total;
    }

    /// A generation that failed or was cancelled: it counts, its partial steps do not (their
    /// time is not reported, so they would skew steps per second).
    pub fn record_failure(&self, total: Duration) {
        let mut c = self.lock();
        c.generations += 1;
        c.generation_time += total;
    }

    /// A chat completion that ended (`reason`: stop, length, cancelled, timeout or failed), with
    /// its prompt tokens (0 unless it finished) and the new tokens it generated. It counts as a
    /// generation too, so the queue's retry estimate covers both kinds of work.
    pub fn record_chat(&self, reason: &'static str, prompt: usize, new: usize, total: Duration) {
        let mut c = self.lock();
        *c.chats.entry(reason).or_default() += 1;
        c.prompt_tokens += prompt as u64;
        c.completion_tokens += new as u64;
        c.generations += 1;
        c.generation_time += total;
    }

    /// The mean time of a generation so far, for `retry-after` estimates.
    pub fn mean_generation(&self) -> Option<Duration> {
        let c = self.lock();
        (c.generations > 0).then(|| {
            Duration::from_secs_f64(c.generation_time.as_secs_f64() / c.generations as f64)
        })
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let c = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP dg_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE dg_http_requests_total counter");
        for ((route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "dg_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dg_http_request_duration_seconds HTTP request latency."
        );
        let _ = writeln!(out, "# TYPE dg_http_request_duration_seconds histogram");
        for (route, h) in &c.latency {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "dg_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "dg_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "dg_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "dg_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let gauges = [
            (
                "dg_queue_depth",
                "Jobs waiting for a worker.",
                c.queued as f64,
            ),
            (
                "dg_in_flight",
                "Jobs being generated now.",
                c.running as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let steps_per_second = if c.denoise.is_zero() {
            0.0
        } else {
            c.steps as f64 / c.denoise.as_secs_f64()
        };
        let counters = [
            (
                "dg_images_generated_total",
                "Images generated.",
                c.images as f64,
            ),
            (
                "dg_generations_total",
                "Generations and chat completions run (finished or failed).",
                c.generations as f64,
            ),
            (
                "dg_denoise_steps_total",
                "Denoising steps run.",
                c.steps as f64,
            ),
            (
                "dg_denoise_seconds_total",
                "Time spent in denoising steps.",
                c.denoise.as_secs_f64(),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dg_denoise_steps_per_second Denoising steps per second of denoising time.\n\
             # TYPE dg_denoise_steps_per_second gauge\ndg_denoise_steps_per_second {steps_per_second}"
        );
        let _ = writeln!(
            out,
            "# HELP dg_chat_completions_total Chat completions by how they ended.\n\
             # TYPE dg_chat_completions_total counter"
        );
        for reason in ["stop", "length", "cancelled", "timeout", "failed"] {
            let n = c.chats.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "dg_chat_completions_total{{finish_reason=\"{reason}\"}} {n}"
            );
        }
        let tokens = [
            (
                "dg_chat_prompt_tokens_total",
                "Prompt tokens of finished chat completions (image tokens included).",
                c.prompt_tokens,
            ),
            (
                "dg_chat_completion_tokens_total",
                "New tokens generated by chat completions (cancelled and failed ones included).",
                c.completion_tokens,
            ),
        ];
        for (name, help, value) in tokens {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        super::queue::lock(&self.inner)
    }
}
