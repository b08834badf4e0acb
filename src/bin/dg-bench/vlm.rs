//! `dg-bench vlm`: one loaded vision-language model, greedy generations one after another; time to
//! first token, decode tokens/s and peak memory per run and as medians (docs/performance.md, "VLM").
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diffgentor::vlm::{Vlm, VlmOutput, VlmRequest};
use diffgentor::{Error, Image, Runtime};
use serde::Serialize;

use crate::report::{peak_rss_mb, percentile};
use crate::RuntimeArgs;

#[derive(clap::Args)]
pub struct VlmArgs {
    /// VLM package directory (docs/vlm.md: onnxruntime-genai, transformers.js or optimum layout).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// An image file (PNG, JPEG or WebP); repeat for several images in one prompt, none for text only.
    #[arg(long = "image", value_name = "IMG")]
    images: Vec<PathBuf>,
    /// The user's text (default: the caption prompt `dg caption` uses).
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    /// Most new tokens per run (a run also ends at an end-of-sequence token).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Measured runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Write the report as JSON: to FILE (the table still goes to stdout), or with no FILE to stdout
    /// instead of the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    json: Option<Option<PathBuf>>,
}

/// One measured generation. Times in milliseconds.
#[derive(Serialize, Clone)]
struct Run {
    new_tokens: usize,
    finish_reason: &'static str,
    /// From the start of the request to the first new token: template, tokenizer, image
    /// preprocessing, vision encoder, embedding and decoder over the prompt, first token picked.
    ttft_ms: f64,
    /// Chat template, tokenizer and image preprocessing (part of ttft).
    preprocess_ms: f64,
    /// Vision encoder runs (part of ttft).
    vision_ms: f64,
    /// The rest of ttft: embedding and decoder over the prompt (prefill) and the first pick.
    prefill_ms: f64,
    /// From the first new token to the last.
    decode_ms: f64,
    /// New tokens after the first / decode_ms.
    tokens_per_second: f64,
    /// decode_ms per token after the first.
    ms_per_token: f64,
    /// Gaps between consecutive tokens as the streaming callback saw them.
    inter_token_ms: Gaps,
    /// CPU time of the calling thread per token after the first. At `--threads 1` ONNX Runtime runs
    /// every op on that thread, so this is all the work of a token, whatever else the machine runs.
    cpu_ms_per_token: f64,
    total_ms: f64,
}

#[derive(Serialize, Clone, Copy, Default)]
struct Gaps {
    p50: f64,
    p90: f64,
    max: f64,
}

/// Medians over the measured runs.
#[derive(Serialize)]
struct Medians {
    new_tokens: f64,
    ttft_ms: f64,
    preprocess_ms: f64,
    vision_ms: f64,
    prefill_ms: f64,
    decode_ms: f64,
    tokens_per_second: f64,
    ms_per_token: f64,
    inter_token_p50_ms: f64,
    cpu_ms_per_token: f64,
    total_ms: f64,
}

#[derive(Serialize)]
struct Settings {
    model: String,
    layout: &'static str,
    images: Vec<String>,
    prompt: String,
    max_new_tokens: usize,
    runs: usize,
    warmup: usize,
    ep: String,
    intra_threads: Option<usize>,
    opt_level: String,
    no_spinning: bool,
    sampling: &'static str,
}

#[derive(Serialize)]
struct Report {
    settings: Settings,
    load_ms: f64,
    /// Tokens of the prompt as the model reads it (image tokens included).
    prompt_tokens: usize,
    /// The prompt's ids (image pads expanded), for comparing with another runtime's.
    prompt_ids: Vec<i64>,
    /// New token ids of the first run (the first warm-up run when there is one).
    token_ids: Vec<i64>,
    /// Whether every run (warm-up included) produced `token_ids`.
    same_tokens_every_run: bool,
    /// Peak resident memory of the process (VmHWM), in MiB.
    peak_rss_mb: f64,
    median: Medians,
    runs: Vec<Run>,
}

pub fn main(args: VlmArgs) -> diffgentor::Result<()> {
    let report = run(&args)?;
    let json = || {
        let mut text = serde_json::to_string_pretty(&report)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    };
    match &args.json {
        Some(None) => print!("{}", json()),
        Some(Some(path)) => {
            print!("{}", report.table());
            diffgentor::image::write_atomically(path, json().as_bytes())?;
        }
        None => print!("{}", report.table()),
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn read_image(path: &Path) -> diffgentor::Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    Image::decode(&bytes).map_err(|e| match e {
        Error::InvalidArg(message) => Error::InvalidArg(format!("{}: {message}", path.display())),
        other => other,
    })
}

fn run(args: &VlmArgs) -> diffgentor::Result<Report> {
    if args.runs == 0 {
        return Err(Error::InvalidArg("--runs must be at least 1".into()));
    }
    let images = args
        .images
        .iter()
        .map(|p| read_image(p))
        .collect::<diffgentor::Result<Vec<_>>>()?;
    let load_started = Instant::now();
    let runtime = Runtime::new(args.runtime.options(1)?)?;
    let vlm = Vlm::load(runtime, &args.model)?;
    let load = load_started.elapsed();

    let mut request = VlmRequest::caption(images, args.prompt.as_deref());
    request.max_new_tokens = args.max_new_tokens;
    let prompt_ids = vlm.prompt_ids(&request)?;

    let mut first_ids: Option<Vec<i64>> = None;
    let mut same = true;
    let mut runs = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let (output, stream) = generate(&vlm, &request)?;
        match &first_ids {
            Some(ids) => same &= *ids == output.token_ids,
            None => first_ids = Some(output.token_ids.clone()),
        }
        if i >= args.warmup {
            runs.push(Run::new(&output, &stream));
        }
    }
    let token_ids = first_ids.unwrap_or_default();
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => diffgentor::vlm::DEFAULT_CAPTION_PROMPT.to_string(),
    };
    Ok(Report {
        settings: Settings {
            model: args.model.display().to_string(),
            layout: vlm.layout(),
            images: args
                .images
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            prompt,
            max_new_tokens: args.max_new_tokens,
            runs: args.runs,
            warmup: args.warmup,
            ep: args.runtime.ep.clone(),
            intra_threads: args.runtime.threads,
            opt_level: args.runtime.opt_level.clone(),
            no_spinning: args.runtime.no_spinning,
            sampling: "greedy",
        },
        load_ms: ms(load),
        prompt_tokens: prompt_ids.len(),
        prompt_ids,
        token_ids,
        same_tokens_every_run: same,
        peak_rss_mb: peak_rss_mb(),
        median: Medians::of(&runs),
        runs,
    })
}

/// CPU time the calling thread has used so far (zero where the clock is unavailable).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live, writable one.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// What the streaming callback saw: token gaps, and the calling thread's CPU time between the
/// first token and the last.
struct Stream {
    gaps: Gaps,
    decode_cpu: Duration,
}

/// One generation, with the time each token reached the streaming callback.
fn generate(vlm: &Vlm, request: &VlmRequest) -> diffgentor::Result<(VlmOutput, Stream)> {
    let mut arrivals = Vec::with_capacity(request.max_new_tokens);
    let mut cpu = (Duration::ZERO, Duration::ZERO);
    let output = vlm.generate_streaming(request, &mut |event| {
        arrivals.push(Instant::now());
        let now = thread_cpu_time();
        if event.index == 1 {
            cpu.0 = now;
        }
        cpu.1 = now;
        true
    })?;
    let mut gaps: Vec<f64> = arrivals.windows(2).map(|w| ms(w[1] - w[0])).collect();
    gaps.sort_by(f64::total_cmp);
    let gaps = Gaps {
        p50: percentile(&gaps, 50.0),
        p90: percentile(&gaps, 90.0),
        max: gaps.last().copied().unwrap_or(0.0),
    };
    let decode_cpu = cpu.1.saturating_sub(cpu.0);
    Ok((output, Stream { gaps, decode_cpu }))
}

impl Run {
    fn new(output: &VlmOutput, stream: &Stream) -> Run {
        let t = &output.timings;
        let n = output.token_ids.len();
        let ttft = ms(t.first_token);
        let preprocess = ms(t.preprocess);
        let vision = ms(t.vision);
        let per_token = |d: Duration| if n > 1 { ms(d) / (n - 1) as f64 } else { 0.0 };
        Run {
            new_tokens: n,
            finish_reason: output.finish_reason.as_str(),
            ttft_ms: ttft,
            preprocess_ms: preprocess,
            vision_ms: vision,
            prefill_ms: (ttft - preprocess - vision).max(0.0),
            decode_ms: ms(t.decode),
            tokens_per_second: t.tokens_per_second(n),
            ms_per_token: per_token(t.decode),
            inter_token_ms: stream.gaps,
            cpu_ms_per_token: per_token(stream.decode_cpu),
            total_ms: ms(t.total),
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl Medians {
    fn of(runs: &[Run]) -> Medians {
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        Medians {
            new_tokens: m(|r| r.new_tokens as f64),
            ttft_ms: m(|r| r.ttft_ms),
            preprocess_ms: m(|r| r.preprocess_ms),
            vision_ms: m(|r| r.vision_ms),
            prefill_ms: m(|r| r.prefill_ms),
            decode_ms: m(|r| r.decode_ms),
            tokens_per_second: m(|r| r.tokens_per_second),
            ms_per_token: m(|r| r.ms_per_token),
            inter_token_p50_ms: m(|r| r.inter_token_ms.p50),
            cpu_ms_per_token: m(|r| r.cpu_ms_per_token),
            total_ms: m(|r| r.total_ms),
        }
    }
}

impl Report {
    fn table(&self) -> String {
        let s = &self.settings;
        let m = &self.median;
        let threads = s
            .intra_threads
            .map_or_else(|| "default".to_string(), |t| t.to_string());
        let images = if s.images.is_empty() {
            "no image".to_string()
        } else {
            s.images.join(", ")
        };
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
        row("model", format!("{} ({})", s.model, s.layout));
        row(
            "settings",
            format!(
                "{} threads {}, {}, max {} new tokens, {} runs (+{} warmup)",
                s.ep, threads, s.sampling, s.max_new_tokens, s.runs, s.warmup
            ),
        );
        row("images", images);
        row("prompt tokens", self.prompt_tokens.to_string());
        row(
            "new tokens",
            format!(
                "{} (median){}",
                m.new_tokens,
                if self.same_tokens_every_run {
                    ", the same ids every run"
                } else {
                    ", ids DIFFER between runs"
                }
            ),
        );
        row(
            "first token",
            format!(
                "{:.2} ms (preprocess {:.2}, vision {:.2}, prefill {:.2})",
                m.ttft_ms, m.preprocess_ms, m.vision_ms, m.prefill_ms
            ),
        );
        row(
            "decode",
            format!(
                "{:.2} tokens/s ({:.3} ms/token, inter-token p50 {:.3} ms; calling thread's CPU {:.3} \
                 ms/token)",
                m.tokens_per_second, m.ms_per_token, m.inter_token_p50_ms, m.cpu_ms_per_token
            ),
        );
        row("total", format!("{:.2} ms", m.total_ms));
        row("load", format!("{:.1} ms", self.load_ms));
        row("peak rss", format!("{:.1} MiB", self.peak_rss_mb));
        out.push_str("run  tokens  ttft ms  tokens/s  ms/token  total ms\n");
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&format!(
                "{:>3}  {:>6}  {:>7.2}  {:>8.2}  {:>8.3}  {:>8.2}\n",
                i + 1,
                r.new_tokens,
                r.ttft_ms,
                r.tokens_per_second,
                r.ms_per_token,
                r.total_ms
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
