//! `dg doctor`: what ONNX Runtime this process loads, what it can run on, and what a package holds.
use std::path::PathBuf;

use clap::Args;
use diffgentor::model::LoadedModel;
use diffgentor::runtime::library;
use diffgentor::schedulers;

use crate::output::Out;
use crate::RuntimeArgs;

#[derive(Args)]
pub struct DoctorArgs {
    /// Also load this model package and describe its components.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
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
    let model = LoadedModel::load(&runtime, &dir)?;
    let package = &model.package;
    outln!(out, "model {} ({})", package.name, package.class_name);
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
