//! `dg doctor`: what ONNX Runtime this process loads, what it can run on, and what a package holds.
use std::path::PathBuf;

use clap::Args;
use diffgentor::model::LoadedModel;
use diffgentor::runtime::library;
use diffgentor::schedulers;

use crate::RuntimeArgs;

#[derive(Args)]
pub struct DoctorArgs {
    /// Also load this model package and describe its components.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: DoctorArgs) -> diffgentor::Result<()> {
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("tensorrt", cfg!(feature = "tensorrt")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    println!(
        "diffgentor {} (features: {})",
        env!("CARGO_PKG_VERSION"),
        features.join(", ")
    );
    let runtime = args.runtime.build()?;
    let lib = runtime.library();
    println!(
        "onnxruntime {} loaded from {} ({})",
        lib.version,
        lib.path.display(),
        lib.source
    );
    println!(
        "execution providers available: {}",
        library::available_providers()?.join(", ")
    );
    println!(
        "execution provider in use: {}",
        runtime.effective_provider()
    );
    let Some(dir) = args.model else {
        return Ok(());
    };
    let model = LoadedModel::load(&runtime, &dir)?;
    let package = &model.package;
    println!("model {} ({})", package.name, package.class_name);
    println!(
        "  family {} (UNet input channels: {} latent + {} conditioning)",
        package.family,
        package.latent_channels(),
        package.family.extra_channels(package.latent_channels())
    );
    println!(
        "  vae factor {}, scaling factor {}",
        package.vae_scale_factor,
        package.vae_scaling_factor()
    );
    if let Some((w, h)) = package.default_size() {
        println!("  default size {w}x{h}");
    }
    let scheduler = schedulers::create(None, &package.scheduler_config)?;
    println!("  scheduler {}", scheduler.name());
    if let Some((tokenizer, _)) = &model.text_encoder {
        println!("  tokenizer max length {}", tokenizer.max_length());
    }
    for graph in model.graphs() {
        println!("  {} {}", graph.component(), graph.signature());
    }
    if model.vae_encoder.is_none() {
        println!(
            "  vae_encoder absent: image inputs (img2img, inpainting, editing) are unavailable"
        );
    }
    Ok(())
}
