//! `dg doctor`: what ONNX Runtime this process loads, what it can run on, and what a package holds.
use std::path::PathBuf;

use clap::Args;
use diffgentor::generators::{self, GeneratorOptions};
use diffgentor::model::LoadedModel;
use diffgentor::runtime::library;
use diffgentor::schedulers;
use diffgentor::vlm::{Vlm, VlmRequest};

use crate::caption::is_vlm_package;
use crate::output::Out;
use crate::RuntimeArgs;

#[derive(Args)]
pub struct DoctorArgs {
    /// Also load this model package and describe its components (a diffusion package, or a
    /// vision-language one: layout, context length, eos ids, chat template, graphs).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Check a remote backend instead (openai or gemini): reachability and authentication, with
    /// keys from the environment or a pool file (docs/backends.md).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// With --backend: the service's base URL (else DG_<BACKEND>_BASE_URL, else its public API).
    #[arg(long, value_name = "URL", requires = "backend")]
    endpoint: Option<String>,
    /// With --backend: the model to check (else DG_<BACKEND>_MODEL, else the backend's default).
    #[arg(long, value_name = "NAME", requires = "backend")]
    remote_model: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: DoctorArgs, out: &mut Out) -> diffgentor::Result<()> {
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("tensorrt", cfg!(feature = "tensorrt")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    outln!(
        out,
        "diffgentor {} (features: {})",
        env!("CARGO_PKG_VERSION"),
        features.join(", ")
    );
    if let Some(backend) = args.backend.as_deref().filter(|b| *b != "local") {
        return check_remote(backend, &args, out);
    }
    let runtime = args.runtime.build()?;
    let lib = runtime.library();
    outln!(
        out,
        "onnxruntime {} loaded from {} ({})",
        lib.version,
        lib.path.display(),
        lib.source
    );
    outln!(
        out,
        "execution providers available: {}",
        library::available_providers()?.join(", ")
    );
    outln!(
        out,
        "execution provider in use: {}",
        runtime.effective_provider()
    );
    let Some(dir) = args.model else {
        return Ok(());
    };
    if is_vlm_package(&dir) {
        return describe_vlm(Vlm::load(runtime, &dir)?, out);
    }
    let model = LoadedModel::load(&runtime, &dir)?;
    let package = &model.package;
    outln!(out, "model {} ({})", package.name, package.class_name);
    if let Some(note) = &package.family_note {
        outln!(out, "  note: {note}");
    }
    outln!(
        out,
        "  family {} (UNet input channels: {} latent + {} conditioning)",
        package.family,
        package.latent_channels(),
        package.family.extra_channels(package.latent_channels())
    );
    outln!(
        out,
        "  vae factor {}, scaling factor {}",
        package.vae_scale_factor,
        package.vae_scaling_factor()
    );
    if let Some((w, h)) = package.default_size() {
        outln!(out, "  default size {w}x{h}");
    }
    let (multiple, why) = package.size_multiple();
    outln!(out, "  size multiple {multiple} ({why})");
    let scheduler = schedulers::create(None, &package.scheduler_config)?;
    outln!(out, "  scheduler {}", scheduler.name());
    if let Some((tokenizer, _)) = &model.text_encoder {
        outln!(out, "  tokenizer max length {}", tokenizer.max_length());
    }
    for graph in model.graphs() {
        outln!(out, "  {} {}", graph.component(), graph.signature());
    }
    if model.vae_encoder.is_none() {
        outln!(
            out,
            "  vae_encoder absent: image inputs (img2img, inpainting, editing) are unavailable"
        );
    }
    Ok(())
}

/// Describes a vision-language package: its layout, limits, chat template and graphs.
fn describe_vlm(vlm: Vlm, out: &mut Out) -> diffgentor::Result<()> {
    let dir = vlm.dir();
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    outln!(
        out,
        "model {name} (vision-language, {} layout)",
        vlm.layout()
    );
    outln!(out, "  context length {}", vlm.context_length());
    let eos: Vec<String> = vlm.eos_ids().iter().map(ToString::to_string).collect();
    outln!(out, "  eos ids {}", eos.join(", "));
    if vlm.is_chat() {
        // Rendering a text-only prompt is what every request does first.
        match vlm.prompt_ids(&VlmRequest::new("hello", Vec::new())) {
            Ok(_) => outln!(out, "  chat template yes"),
            Err(err) => outln!(out, "  chat template unusable: {err}"),
        }
    } else {
        outln!(
            out,
            "  chat template none (a captioner: one image in, a caption out; a prompt begins the caption)"
        );
    }
    for graph in vlm.graphs() {
        outln!(out, "  {} {}", graph.component(), graph.signature());
    }
    Ok(())
}

/// Describes a remote backend and checks that it answers and takes the key.
fn check_remote(backend: &str, args: &DoctorArgs, out: &mut Out) -> diffgentor::Result<()> {
    let mut options = GeneratorOptions::new();
    if let Some(url) = &args.endpoint {
        options.set("base_url", url);
    }
    if let Some(model) = &args.remote_model {
        options.set("model", model);
    }
    let generator = generators::remote(backend, &options)?;
    let d = generator.describe();
    let tasks: Vec<String> = d.tasks.iter().map(ToString::to_string).collect();
    outln!(out, "backend {} (model {})", d.kind, d.name);
    outln!(out, "  tasks {}", tasks.join(", "));
    outln!(
        out,
        "  seeds {}, negative prompts {}",
        if d.honours_seed {
            "honoured"
        } else {
            "not honoured"
        },
        if d.negative_prompt {
            "used"
        } else {
            "not used"
        }
    );
    outln!(out, "  {}", generator.check()?);
    Ok(())
}
