//! `dg`: the diffgentor command line.
// Output goes through `output` (`outln!`, `errln!`), which never panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
mod output;

mod backend;
mod batch;
mod caption;
mod doctor;
mod edit;
mod enhance;
mod generate;
mod loras;
mod montage;
mod progress;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use diffgentor::runtime::{RuntimeConfig, TensorRtOptions};
use diffgentor::{Runtime, RuntimeOptions};

#[derive(Parser)]
#[command(
    name = "dg",
    version,
    about = "Image generation with ONNX Runtime, numerics as diffusers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a text prompt, or from every row of a table (`dg t2i --input`).
    #[command(visible_alias = "t2i")]
    Generate(Box<generate::GenerateArgs>),
    /// Edit an image: img2img, inpainting (--mask) or instruction editing (InstructPix2Pix models).
    Edit(Box<edit::EditArgs>),
    /// Describe images, or answer a question about them (--prompt), with a vision-language model.
    ///
    /// The answer streams to stdout as it is made (--json: one object at the end). Without
    /// --prompt the model is asked for one detailed caption paragraph; with --prompt and no
    /// --image the question is text only.
    Caption(Box<caption::CaptionArgs>),
    /// Rewrite an edit instruction (reading --image) or a text-to-image prompt with a VLM.
    Enhance(Box<enhance::EnhanceArgs>),
    /// Show the ONNX Runtime library, execution providers and (with --model) a package's components.
    Doctor(doctor::DoctorArgs),
    /// Tile PNG images into one contact sheet.
    ///
    /// Every cell is as large as the largest input (times --scale); an image of another size sits
    /// at the top-left of its cell, the rest of the cell white.
    Montage(montage::MontageArgs),
    /// Batch manifests: `dg manifest merge DIR` joins the parts of sharded runs.
    Manifest(batch::ManifestArgs),
    /// Serve the OpenAI Images API (and a job API) over a model or a remote backend.
    Serve(Box<serve::ServeArgs>),
}

/// Flags that choose and configure ONNX Runtime, shared by subcommands that load models.
#[derive(Args, Clone)]
struct RuntimeArgs {
    /// Execution provider: cpu, cuda[:ID] or tensorrt[:ID].
    #[arg(long, default_value = "cpu")]
    ep: String,
    /// Use CPU (and say so) if the requested execution provider cannot be registered.
    #[arg(long)]
    allow_cpu_fallback: bool,
    /// Path to libonnxruntime.so (else DG_ORT_DYLIB_PATH, ORT_DYLIB_PATH, next to dg, system).
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// Intra-op threads per session (default: ONNX Runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Stop ONNX Runtime's idle threads from spin-waiting (helps on shared or busy machines).
    #[arg(long)]
    no_spinning: bool,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    trt_fp16: bool,
    /// TensorRT: directory to cache built engines and timing data in.
    #[arg(long, value_name = "DIR")]
    trt_engine_cache: Option<PathBuf>,
    /// Any runtime option by key, as dg_runtime_options_set takes it, e.g.
    /// `sessions_per_graph=2` or `optimized_graph_cache=DIR` (repeatable; applied after the flags).
    #[arg(long = "runtime-option", value_name = "KEY=VALUE")]
    runtime_options: Vec<String>,
}

impl RuntimeArgs {
    fn build(&self) -> diffgentor::Result<Arc<Runtime>> {
        let mut config = RuntimeConfig {
            options: RuntimeOptions {
                ort_library: self.ort_lib.clone(),
                execution_provider: self.ep.parse()?,
                allow_cpu_fallback: self.allow_cpu_fallback,
                intra_threads: self.threads,
                no_spinning: self.no_spinning,
                ..RuntimeOptions::default()
            },
            tensorrt: TensorRtOptions {
                fp16: self.trt_fp16,
                engine_cache_dir: self.trt_engine_cache.clone(),
            },
        };
        for option in &self.runtime_options {
            let (key, value) = option.split_once('=').ok_or_else(|| {
                diffgentor::Error::InvalidArg(format!(
                    "--runtime-option `{option}` is not KEY=VALUE"
                ))
            })?;
            config.set(key.trim(), value.trim())?;
        }
        let runtime = Runtime::new(config.resolve())?;
        if let Some(reason) = runtime.fallback() {
            errln!("warning: falling back to CPU: {reason}");
        }
        Ok(runtime)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = output::Out::stdout();
    let result = match cli.command {
        Command::Generate(args) => generate::run(*args, &mut out),
        Command::Edit(args) => edit::run(*args, &mut out),
        Command::Caption(args) => caption::run(*args, &mut out),
        Command::Enhance(args) => enhance::run(*args, &mut out),
        Command::Doctor(args) => doctor::run(args, &mut out),
        Command::Montage(args) => montage::run(args, &mut out),
        Command::Manifest(args) => batch::manifest(args, &mut out),
        Command::Serve(args) => serve::run(*args, &mut out),
    };
    output::exit_code(result, out.finish())
}
