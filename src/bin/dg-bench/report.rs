//! What dg-bench measured, as a table for people and JSON for tools (schema: docs/performance.md).
use std::time::Duration;

use diffgentor::runtime::Graph;
use diffgentor::Output;
use serde::Serialize;

/// One measured request.
pub struct Sample {
    latency: Duration,
    images: usize,
    tokenize: Duration,
    text_encode: Duration,
    steps: Vec<Duration>,
    decode: Duration,
    ort_run: Duration,
}

impl Sample {
    pub fn new(latency: Duration, output: &Output) -> Sample {
        let t = &output.timings;
        Sample {
            latency,
            images: output.images.len(),
            tokenize: t.tokenize,
            text_encode: t.text_encode,
            steps: t.denoise_steps.clone(),
            decode: t.decode,
            ort_run: t.ort_run,
        }
    }

    /// A request that ran only denoising steps (`--unet-only`).
    pub fn from_steps(
        latency: Duration,
        images: usize,
        steps: Vec<Duration>,
        ort_run: Duration,
    ) -> Sample {
        Sample {
            latency,
            images,
            tokenize: Duration::ZERO,
            text_encode: Duration::ZERO,
            steps,
            decode: Duration::ZERO,
            ort_run,
        }
    }
}

/// One graph's sessions and optimized-graph cache outcome after the run.
#[derive(Serialize)]
pub struct GraphReport {
    component: String,
    /// Sessions built (at most `sessions_per_graph`).
    sessions: usize,
    /// Most sessions running at once.
    peak_in_use: usize,
    /// Runs that waited for a busy session.
    waits: u64,
    /// off, hit, written, replaced or write-failed.
    cache: String,
    /// Why the cache entry was replaced or could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_note: Option<String>,
}

impl GraphReport {
    pub fn new(graph: &Graph) -> GraphReport {
        let stats = graph.pool_stats();
        let status = graph.cache_status();
        let note = match status {
            diffgentor::runtime::CacheStatus::Replaced { reason }
            | diffgentor::runtime::CacheStatus::WriteFailed { reason } => Some(reason.clone()),
            _ => None,
        };
        GraphReport {
            component: graph.component().to_string(),
            sessions: stats.sessions,
            peak_in_use: stats.peak_in_use,
            waits: stats.waits,
            cache: status.label().to_string(),
            cache_note: note,
        }
    }
}

#[derive(Serialize)]
pub struct Settings {
    pub model: String,
    pub backend: String,
    pub ep: String,
    pub intra_threads: Option<usize>,
    pub opt_level: String,
    pub no_spinning: bool,
    pub sessions_per_graph: usize,
    pub optimized_cache: Option<String>,
    pub unet_only: bool,
    pub io_binding: bool,
    pub steps: usize,
    pub width: u32,
    pub height: u32,
    pub batch: usize,
    pub concurrency: usize,
    pub requests: usize,
    pub warmup: usize,
    pub scheduler: String,
    pub guidance_scale: f32,
}

#[derive(Serialize)]
pub struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Mean milliseconds per request (denoise_step: per step).
#[derive(Serialize)]
pub struct Stages {
    tokenize: f64,
    text_encode: f64,
    denoise_step: f64,
    denoise_total: f64,
    decode: f64,
}

#[derive(Serialize)]
pub struct Report {
    images_per_second: f64,
    requests_per_second: f64,
    latency_ms: Latency,
    stages_ms: Stages,
    ort_run_ms_total: f64,
    end_to_end_ms_total: f64,
    /// end_to_end_ms_total / ort_run_ms_total: 1.0 means no time outside ONNX Runtime.
    overhead_ratio: f64,
    wall_ms: f64,
    load_ms: f64,
    peak_rss_mb: f64,
    /// Per graph: sessions built and used, and what the optimized-graph cache did.
    graphs: Vec<GraphReport>,
    settings: Settings,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Peak resident set size of this process (VmHWM), in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

impl Report {
    pub fn new(
        settings: Settings,
        samples: &[Sample],
        wall: Duration,
        load: Duration,
        graphs: Vec<GraphReport>,
    ) -> Report {
        let n = samples.len().max(1) as f64;
        let mut latencies: Vec<f64> = samples.iter().map(|s| ms(s.latency)).collect();
        latencies.sort_by(f64::total_cmp);
        let mean =
            |f: &dyn Fn(&Sample) -> Duration| samples.iter().map(|s| ms(f(s))).sum::<f64>() / n;
        let step_count = samples.iter().map(|s| s.steps.len()).sum::<usize>().max(1) as f64;
        let denoise_total: f64 = samples.iter().flat_map(|s| &s.steps).map(|d| ms(*d)).sum();
        let ort = samples.iter().map(|s| ms(s.ort_run)).sum::<f64>();
        let end_to_end = latencies.iter().sum::<f64>();
        let images: usize = samples.iter().map(|s| s.images).sum();
        let seconds = wall.as_secs_f64().max(f64::EPSILON);
        Report {
            images_per_second: images as f64 / seconds,
            requests_per_second: samples.len() as f64 / seconds,
            latency_ms: Latency {
                p50: percentile(&latencies, 50.0),
                p90: percentile(&latencies, 90.0),
                p99: percentile(&latencies, 99.0),
                max: latencies.last().copied().unwrap_or(0.0),
            },
            stages_ms: Stages {
                tokenize: mean(&|s| s.tokenize),
                text_encode: mean(&|s| s.text_encode),
                denoise_step: denoise_total / step_count,
                denoise_total: denoise_total / n,
                decode: mean(&|s| s.decode),
            },
            ort_run_ms_total: ort,
            end_to_end_ms_total: end_to_end,
            overhead_ratio: if ort > 0.0 { end_to_end / ort } else { 0.0 },
            wall_ms: ms(wall),
            load_ms: ms(load),
            peak_rss_mb: peak_rss_mb(),
            graphs,
            settings,
        }
    }

    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    }

    pub fn table(&self) -> String {
        let s = &self.settings;
        let l = &self.latency_ms;
        let st = &self.stages_ms;
        let rows = [
            ("model", s.model.clone()),
            (
                "settings",
                format!(
                    "{} {}x{}, {} steps, {}, batch {}, concurrency {}, {} session(s)/graph, {} requests (+{} warmup){}",
                    s.ep,
                    s.width,
                    s.height,
                    s.steps,
                    s.scheduler,
                    s.batch,
                    s.concurrency,
                    s.sessions_per_graph,
                    s.requests,
                    s.warmup,
                    match (s.unet_only, s.io_binding) {
                        (true, true) => ", UNet only, IO binding",
                        (true, false) => ", UNet only",
                        _ => "",
                    }
                ),
            ),
            (
                "throughput",
                format!("{:.2} images/s", self.images_per_second),
            ),
            (
                "latency ms",
                format!(
                    "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                    l.p50, l.p90, l.p99, l.max
                ),
            ),
            ("tokenize", format!("{:.3} ms", st.tokenize)),
            ("text encode", format!("{:.3} ms", st.text_encode)),
            ("denoise step", format!("{:.3} ms mean", st.denoise_step)),
            ("decode", format!("{:.3} ms", st.decode)),
            (
                "onnx runtime",
                format!(
                    "{:.1} ms of {:.1} ms end to end (overhead ratio {:.4})",
                    self.ort_run_ms_total, self.end_to_end_ms_total, self.overhead_ratio
                ),
            ),
            ("load", format!("{:.1} ms", self.load_ms)),
            (
                "graphs",
                self.graphs
                    .iter()
                    .map(|g| {
                        format!(
                            "{} {} session(s), peak {}, cache {}",
                            g.component, g.sessions, g.peak_in_use, g.cache
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ("peak rss", format!("{:.1} MiB", self.peak_rss_mb)),
        ];
        rows.iter().map(|(k, v)| format!("{k:<14}{v}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
