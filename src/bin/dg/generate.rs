//! `dg generate`: one text-to-image request (or progressive plan), written as PNG files with
//! A1111-style metadata. The request flags are shared with `dg edit`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use diffgentor::generators::Task;
use diffgentor::request::{format_stack, Plan};
use diffgentor::rng::RngMode;
use diffgentor::vlm::enhance::EnhanceStyle;
use diffgentor::{npy, Error, Output, Request};
use serde_json::Value;

use crate::backend::{Backend, BackendArgs};
use crate::batch::{self, BatchArgs};
use crate::enhance::{enhance_request, style_parser, Enhancement};
use crate::loras::{self, LoraArgs};
use crate::output::Out;
use crate::progress::{Mode, ProgressDisplay};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub request: RequestArgs,
}

/// The flags every request takes, for `dg generate` and `dg edit`: one request (`--prompt`,
/// `--output`) or one per row of a table (`--input`, `--output-dir`).
#[derive(Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Remote backends: ignore request fields the service cannot honour (listed in the PNG's
    /// metadata) instead of failing.
    #[arg(long)]
    best_effort: bool,
    #[arg(long, required_unless_present = "input")]
    prompt: Option<String>,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (<= 1 disables it).
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Image width (default: the UNet's sample_size x VAE factor).
    #[arg(long)]
    width: Option<u32>,
    /// Image height (default: the UNet's sample_size x VAE factor).
    #[arg(long)]
    height: Option<u32>,
    /// Seed (default: drawn from the clock and printed); a batch row without a seed gets this
    /// plus its index.
    #[arg(long)]
    seed: Option<u64>,
    /// Random generator: torch (bit-exact with torch.randn on CPU) or fast.
    #[arg(long, default_value = "torch")]
    rng: String,
    /// Scheduler name (ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, heun, lcm,
    /// flow_match_euler) or diffusers class name (default: the package's).
    #[arg(long)]
    scheduler: Option<String>,
    /// Override a scheduler_config.json key for this run, e.g. `timestep_spacing=trailing` (repeatable).
    #[arg(long = "scheduler-option", value_name = "KEY=VALUE")]
    scheduler_options: Vec<String>,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    /// Images per prompt; several are written as PATH_00.png, PATH_01.png ...
    #[arg(long, default_value_t = 1)]
    num_images: usize,
    /// Initial latents (.npy float32 [n, c, h/f, w/f]) instead of drawing them.
    #[arg(long, value_name = "FILE.npy")]
    latents: Option<PathBuf>,
    /// Also write the final latents (before VAE decoding) as .npy.
    #[arg(long, value_name = "FILE.npy")]
    save_latents: Option<PathBuf>,
    /// SDXL refiners' aesthetic score of the prompt.
    #[arg(long, default_value_t = 6.0)]
    aesthetic_score: f32,
    /// SDXL refiners' aesthetic score of the unconditional pass.
    #[arg(long, default_value_t = 2.5)]
    negative_aesthetic_score: f32,
    /// T5 tokens of SD3 and FLUX prompts (default: 256 for SD3, 512 for FLUX, as diffusers).
    #[arg(long, value_name = "N")]
    max_sequence_length: Option<usize>,
    /// Progressive generation: a JSON plan of stages (docs/editing.md, "Progressive plans"), each
    /// img2img over the upscaled latents of the one before.
    #[arg(long, value_name = "FILE.json")]
    plan: Option<PathBuf>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Rewrite the prompt with a vision-language model before generating: a VLM package directory
    /// or `openai:MODEL` (as `dg enhance --model`); `dg edit` shows it the image. The PNG records
    /// both prompts.
    #[arg(long, value_name = "DIR|openai:MODEL", conflicts_with = "input")]
    enhance_prompt: Option<String>,
    /// The rewrite's style (default: qwen_image_edit when editing an image, t2i otherwise).
    #[arg(
        long,
        value_name = "STYLE",
        value_parser = style_parser(),
        requires = "enhance_prompt"
    )]
    enhance_style: Option<EnhanceStyle>,
    /// Print the time of every stage.
    #[arg(long)]
    timings: bool,
    /// No progress display on stderr (a bar on a terminal, else about ten `progress:` lines);
    /// warnings and errors still print.
    #[arg(long, short)]
    quiet: bool,
    /// Output PNG path.
    #[arg(long, short, required_unless_present = "input")]
    output: Option<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
}

pub fn run(args: GenerateArgs, out: &mut Out) -> diffgentor::Result<()> {
    let args = args.request;
    let mut request = args.build_request()?;
    if args.batch.input.is_some() {
        return args.run_batch(request, batch::Task::TextToImage, out);
    }
    let enhancement = args.enhance(&mut request)?;
    let backend = args.backend.load()?;
    args.load_loras(&backend)?;
    args.run(&backend, &request, enhancement.as_ref(), out)
}

impl RequestArgs {
    /// Runs one row of `--input` per request, `base` (these flags) plus the row's values.
    pub fn run_batch(
        &self,
        base: Request,
        task: batch::Task,
        out: &mut Out,
    ) -> diffgentor::Result<()> {
        batch::run(
            &self.batch,
            &self.backend,
            &self.lora,
            self.quiet,
            base,
            task,
            out,
        )
    }

    /// Loads the `--lora` files into the backend (the request names them already; with
    /// `--lora-prompt-tags` the pipeline lets a tag set the strength of a `--lora` adapter).
    pub fn load_loras(&self, backend: &Backend) -> diffgentor::Result<()> {
        self.lora.load(backend, self.quiet).map(drop)
    }

    /// With --enhance-prompt: rewrites the request's prompt (before any generator loads, so the
    /// two models are not in memory together) and says what was done.
    pub fn enhance(&self, request: &mut Request) -> diffgentor::Result<Option<Enhancement>> {
        self.enhance_prompt
            .as_deref()
            .map(|spec| {
                enhance_request(
                    spec,
                    self.enhance_style,
                    &self.backend.runtime,
                    request,
                    self.quiet,
                )
            })
            .transpose()
    }

    /// Runs the request and writes its images (and latents when asked); `enhancement`, the
    /// prompt's rewrite, is recorded in every PNG.
    pub fn run(
        &self,
        backend: &Backend,
        request: &Request,
        enhancement: Option<&Enhancement>,
        out: &mut Out,
    ) -> diffgentor::Result<()> {
        let args = self;
        // clap requires --output without --input, and batches never get here.
        let output_path = args
            .output
            .as_deref()
            .ok_or_else(|| Error::InvalidArg("--output PATH.png is required".into()))?;
        if args.save_latents.is_some() && backend.local.is_none() {
            return Err(Error::InvalidArg(format!(
                "--save-latents: the {} backend returns images, not latents",
                args.backend.backend
            )));
        }
        let mut display = ProgressDisplay::new(Mode::detect(args.quiet));
        let output = backend.generator.generate(request, &mut |progress| {
            display.update(progress);
            true
        })?;
        display.finish();
        let parameters = parameters_text_with(request, &output, backend, enhancement);
        let mut text = vec![("parameters", parameters.as_str())];
        if let Some(e) = enhancement {
            text.extend([
                ("original_prompt", e.original.as_str()),
                ("enhanced_prompt", e.enhanced.as_str()),
                ("prompt_enhancer", e.enhancer.as_str()),
                ("prompt_enhancer_style", e.style.as_str()),
            ]);
        }
        let paths = output_paths(output_path, output.images.len());
        for (image, path) in output.images.iter().zip(&paths) {
            image.save_png(path, &text)?;
            outln!(out, "wrote {}", path.display());
        }
        if let Some(path) = &args.save_latents {
            npy::write_f32(path, &output.latents)?;
        }
        if let Some(ignored) = output.metadata.get("ignored") {
            errln!(
                "warning: the {} backend ignored {ignored}",
                args.backend.backend
            );
        }
        if request.seed.is_none() && backend.local.is_some() {
            outln!(out, "seed {}", output.seed);
        }
        if args.timings {
            print_timings(&output, out);
        }
        Ok(())
    }

    /// The request these flags ask for; a batch's rows fill in the prompt.
    pub fn build_request(&self) -> diffgentor::Result<Request> {
        let args = self;
        let mut request = Request::new(args.prompt.clone().unwrap_or_default());
        request.negative_prompt = args.negative_prompt.clone();
        request.steps = args.steps;
        request.guidance_scale = args.guidance;
        request.width = args.width;
        request.height = args.height;
        request.seed = args.seed;
        request.rng = args
            .rng
            .parse::<RngMode>()
            .map_err(|e| Error::InvalidArg(format!("--rng: {e}")))?;
        request.scheduler = args.scheduler.clone();
        request.eta = args.eta;
        request.num_images = args.num_images;
        request.best_effort = args.best_effort;
        for option in &args.scheduler_options {
            let (key, value) = option.split_once('=').ok_or_else(|| {
                Error::InvalidArg(format!("--scheduler-option `{option}` is not KEY=VALUE"))
            })?;
            // JSON values (true, 3.0, "x") keep their type; anything else is taken as a string.
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            request
                .scheduler_overrides
                .insert(key.trim().to_string(), value);
        }
        if let Some(path) = &args.latents {
            request.latents = Some(npy::read_f32(path)?);
        }
        request.max_sequence_length = args.max_sequence_length;
        request.aesthetic_score = args.aesthetic_score;
        request.negative_aesthetic_score = args.negative_aesthetic_score;
        if let Some(path) = &args.plan {
            request.plan = Some(Plan::load(path)?);
        }
        // The files are checked here; they load once the backend is (`LoraArgs::load`).
        let files = args.lora.resolve()?;
        if !files.is_empty() {
            request.loras = Some(loras::stack(&files));
        }
        request.lora_prompt_tags = args.lora.lora_prompt_tags;
        Ok(request)
    }
}

/// PATH.png for one image; PATH_00.png, PATH_01.png ... for several.
fn output_paths(path: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..count)
        .map(|i| path.with_file_name(format!("{stem}_{i:02}.{ext}")))
        .collect()
}

/// The sampler names AUTOMATIC1111-style tools display for our schedulers.
fn a1111_sampler(scheduler: &str) -> &str {
    match scheduler {
        "ddim" => "DDIM",
        "pndm" => "PLMS",
        "euler" | "flow_match_euler" => "Euler",
        "euler_a" => "Euler a",
        "dpmpp_2m" => "DPM++ 2M",
        "dpmpp_2m_karras" => "DPM++ 2M Karras",
        "heun" => "Heun",
        "lcm" => "LCM",
        other => other,
    }
}

/// Most characters of each prompt kept in the `parameters` text, so the settings line after it
/// always fits the PNG text chunk (which the library bounds).
const PROMPT_CHARS_IN_METADATA: usize = 2000;

/// The `parameters` text chunk in the layout AUTOMATIC1111 writes and PNG-info readers parse.
pub fn parameters_text(request: &Request, output: &Output, backend: &Backend) -> String {
    parameters_text_with(request, output, backend, None)
}

/// A value of the settings line as AUTOMATIC1111 writes it: JSON-quoted when it holds a comma,
/// a colon or a line break, which would end it early.
fn a1111_value(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::Value::from(value).to_string()
    } else {
        value.to_string()
    }
}

/// [`parameters_text`], with the prompt's enhancer and style (when it was rewritten) in the
/// settings line; the prompt line is the enhanced prompt, the one the model ran. The PNG keeps
/// the original in its `original_prompt` chunk.
pub fn parameters_text_with(
    request: &Request,
    output: &Output,
    backend: &Backend,
    enhancement: Option<&Enhancement>,
) -> String {
    let clip = |text: &str| -> String { text.chars().take(PROMPT_CHARS_IN_METADATA).collect() };
    let description = backend.generator.describe();
    let model = &description.name;
    let mut text = clip(&request.prompt);
    if let Some(negative) = &request.negative_prompt {
        text.push_str(&format!("\nNegative prompt: {}", clip(negative)));
    }
    if backend.local.is_none() {
        text.push_str(&format!(
            "\nSize: {}x{}, Model: {model}, Backend: {}",
            output.width, output.height, description.kind
        ));
        if let Some(ignored) = output.metadata.get("ignored") {
            text.push_str(&format!(", Ignored: {ignored}"));
        }
    } else {
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, Scheduler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {model}",
            request.steps,
            a1111_sampler(&output.scheduler),
            output.scheduler,
            request.guidance_scale,
            output.seed,
            output.width,
            output.height,
        ));
        if let Some(strength) = request.strength {
            text.push_str(&format!(", Denoising strength: {strength}"));
        }
        if description.tasks == [Task::Edit] {
            text.push_str(&format!(
                ", Image CFG scale: {}",
                request.image_guidance_scale
            ));
        }
        if let Some(plan) = &request.plan {
            text.push_str(&format!(", Plan stages: {}", plan.stages.len()));
        }
        if let Some(stack) = request.loras.as_deref().filter(|s| !s.is_empty()) {
            text.push_str(&format!(", LoRA: {}", a1111_value(&format_stack(stack))));
        }
    }
    if let Some(e) = enhancement {
        // The original prompt has its own text chunk: here it could push the line past the
        // chunk's bound.
        text.push_str(&format!(
            ", Prompt enhancer: {}, Enhance style: {}",
            a1111_value(&e.enhancer),
            e.style,
        ));
    }
    text.push_str(&format!(
        ", Version: diffgentor {}",
        env!("CARGO_PKG_VERSION")
    ));
    text
}

fn print_timings(output: &Output, out: &mut Out) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let t = &output.timings;
    outln!(out, "{:<16}{:>10.3} ms", "tokenize", ms(t.tokenize));
    outln!(out, "{:<16}{:>10.3} ms", "text encode", ms(t.text_encode));
    for (i, step) in t.denoise_steps.iter().enumerate() {
        outln!(
            out,
            "{:<16}{:>10.3} ms",
            format!("step {}/{}", i + 1, t.denoise_steps.len()),
            ms(*step)
        );
    }
    outln!(out, "{:<16}{:>10.3} ms", "decode", ms(t.decode));
    outln!(out, "{:<16}{:>10.3} ms", "onnx runtime", ms(t.ort_run));
    outln!(out, "{:<16}{:>10.3} ms", "total", ms(t.total));
}
