//! `dg-bench lora`: what LoRA adapters cost on one loaded pipeline: loading them, switching stacks
//! (weights computed, or taken from the cache), memory per cached stack, and seconds per image with
//! the stack against without it (docs/performance.md, "LoRA").
use std::path::PathBuf;
use std::time::{Duration, Instant};

use diffgentor::{Error, LoraUse, Pipeline, Request, Runtime};
use serde::Serialize;

use crate::report::peak_rss_mb;
use crate::{parse_size, RuntimeArgs};

#[derive(clap::Args)]
pub struct LoraArgs {
    /// Model package directory.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// A LoRA file; repeat for a stack (up to 10), applied together at --strength each.
    #[arg(long = "lora", value_name = "FILE", required = true)]
    loras: Vec<PathBuf>,
    #[arg(long, default_value_t = 1.0)]
    strength: f32,
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Image size WxH (default: the package's).
    #[arg(long, value_name = "WxH")]
    size: Option<String>,
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Measured rounds. Two pipelines are loaded (twice the memory): one never sees an adapter; each
    /// round runs one image on it, one on the other without a stack and one with the stack, so that
    /// all three see the same machine load.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Times in milliseconds.
#[derive(Serialize)]
struct Report {
    model: String,
    loras: Vec<String>,
    steps: usize,
    width: u32,
    height: u32,
    pipeline_load_ms: f64,
    /// Loading each file (the first that touches a graph rebuilds its session once).
    adapter_load_ms: Vec<f64>,
    /// Computing W' = W + sum(dW) for the whole stack (the first request with a new stack).
    switch_uncached_ms: f64,
    /// Asking for a stack already in the cache.
    switch_cached_ms: f64,
    /// Memory the stack's replacement weights take.
    stack_mb: f64,
    /// Median seconds per image on the pipeline that never loaded an adapter.
    base_unpromoted_s: f64,
    /// Median seconds per image after loading, with no stack (promoted graphs, nothing fed).
    base_s: f64,
    /// Median seconds per image with the stack.
    stack_s: f64,
    /// base_unpromoted_s / stack_s: throughput with the stack relative to the untouched pipeline.
    stack_throughput_ratio: f64,
    peak_rss_mb: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn seconds(pipeline: &Pipeline, request: &Request) -> diffgentor::Result<f64> {
    let started = Instant::now();
    pipeline.generate(request)?;
    Ok(started.elapsed().as_secs_f64())
}

pub fn main(args: LoraArgs) -> diffgentor::Result<()> {
    if args.rounds == 0 {
        return Err(Error::InvalidArg("--rounds must be at least 1".into()));
    }
    let started = Instant::now();
    let runtime = Runtime::new(args.runtime.options(1)?)?;
    let pipeline = Pipeline::load(runtime, &args.model)?;
    let pipeline_load_ms = ms(started.elapsed());
    let defaults = pipeline.defaults()?;
    let (width, height) = match &args.size {
        Some(size) => parse_size(size)?,
        None => (defaults.width, defaults.height),
    };
    let mut base = Request::new("a photo of an astronaut riding a horse on mars");
    base.steps = args.steps;
    base.guidance_scale = args.guidance;
    base.seed = Some(1);
    (base.width, base.height) = (Some(width), Some(height));
    base.loras = Some(Vec::new());

    let untouched = Pipeline::load(pipeline.runtime().clone(), &args.model)?;
    seconds(&untouched, &base)?;

    let mut adapter_load_ms = Vec::new();
    let mut stack = Vec::new();
    for (i, file) in args.loras.iter().enumerate() {
        let name = format!("l{i}");
        let started = Instant::now();
        pipeline.load_lora(&name, file)?;
        adapter_load_ms.push(ms(started.elapsed()));
        stack.push(LoraUse::new(name, args.strength));
    }
    let started = Instant::now();
    let stack_bytes = pipeline.prepare_loras(&stack)?;
    let switch_uncached_ms = ms(started.elapsed());
    let started = Instant::now();
    pipeline.prepare_loras(&stack)?;
    let switch_cached_ms = ms(started.elapsed());

    let with_stack = Request {
        loras: Some(stack),
        ..base.clone()
    };
    seconds(&pipeline, &with_stack)?;
    seconds(&pipeline, &base)?;
    let (mut unpromoted, mut promoted, mut stacked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        unpromoted.push(seconds(&untouched, &base)?);
        promoted.push(seconds(&pipeline, &base)?);
        stacked.push(seconds(&pipeline, &with_stack)?);
    }
    let (base_unpromoted_s, stack_s) = (median(unpromoted), median(stacked));
    let report = Report {
        model: args.model.display().to_string(),
        loras: args.loras.iter().map(|p| p.display().to_string()).collect(),
        steps: args.steps,
        width,
        height,
        pipeline_load_ms,
        adapter_load_ms,
        switch_uncached_ms,
        switch_cached_ms,
        stack_mb: stack_bytes as f64 / (1024.0 * 1024.0),
        base_unpromoted_s,
        base_s: median(promoted),
        stack_s,
        stack_throughput_ratio: base_unpromoted_s / stack_s,
        peak_rss_mb: peak_rss_mb(),
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::InvalidArg(format!("report: {e}")))?;
        text.push('\n');
        diffgentor::image::write_atomically(path, text.as_bytes())?;
    }
    Ok(())
}

impl Report {
    fn table(&self) -> String {
        let loads: Vec<String> = self
            .adapter_load_ms
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect();
        format!(
            "model            {} ({}x{}, {} steps)\n\
             loras            {}\n\
             pipeline load    {:.0} ms\n\
             adapter loads    {} ms\n\
             switch uncached  {:.1} ms\n\
             switch cached    {:.3} ms\n\
             stack weights    {:.1} MiB\n\
             s/image          {:.3} never loaded, {:.3} loaded without stack, {:.3} with stack\n\
             throughput       {:.3}x of the untouched pipeline with the stack\n\
             peak rss         {:.0} MiB\n",
            self.model,
            self.width,
            self.height,
            self.steps,
            self.loras.join(", "),
            self.pipeline_load_ms,
            loads.join(", "),
            self.switch_uncached_ms,
            self.switch_cached_ms,
            self.stack_mb,
            self.base_unpromoted_s,
            self.base_s,
            self.stack_s,
            self.stack_throughput_ratio,
            self.peak_rss_mb,
        )
    }
}
