//! `dg edit`: img2img, inpainting and instruction editing of an image, or with `--input` of every
//! row of a table (its image and mask columns); every `dg generate` flag applies too.
use std::path::PathBuf;

use clap::Args;
use diffgentor::pipelines::resize;
use diffgentor::request::Resample;
use diffgentor::{npy, Error, Image};
use ndarray::Ix4;

use crate::batch::Task;
use crate::generate::RequestArgs;
use crate::output::Out;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("source").args(["image", "init_latents"]))]
pub struct EditArgs {
    /// The image to edit (PNG); the output has its size. Required unless --init-latents or --input.
    #[arg(
        long,
        value_name = "FILE.png",
        required_unless_present_any = ["init_latents", "input"],
        conflicts_with = "input"
    )]
    image: Option<PathBuf>,
    /// Start from latents (.npy [1 or n, c, h/f, w/f], already scaled) instead of an image, e.g.
    /// the `--save-latents` of an earlier run; resized to --width/--height with --upscale.
    #[arg(long, value_name = "FILE.npy", conflicts_with = "input")]
    init_latents: Option<PathBuf>,
    /// How --init-latents are resized when --width/--height ask for another size.
    #[arg(long, default_value = "nearest-exact", value_name = "MODE")]
    upscale: String,
    /// Inpainting mask (PNG, same size as the image): white is repainted, black kept.
    #[arg(long, value_name = "FILE.png", conflicts_with = "input")]
    mask: Option<PathBuf>,
    /// How much of the image is re-noised, in (0, 1] (default: 0.8 for img2img, 1.0 for inpainting).
    #[arg(long)]
    strength: Option<f64>,
    /// InstructPix2Pix image guidance scale.
    #[arg(long, default_value_t = 1.5)]
    image_guidance: f32,
    #[command(flatten)]
    request: RequestArgs,
}

pub fn run(args: EditArgs, out: &mut Out) -> diffgentor::Result<()> {
    let mut request = args.request.build_request()?;
    request.init_image = args.image.as_deref().map(Image::load_png).transpose()?;
    request.mask = args.mask.as_deref().map(Image::load_png).transpose()?;
    request.strength = args.strength;
    request.image_guidance_scale = args.image_guidance;
    if args.request.batch.input.is_some() {
        return args.request.run_batch(request, Task::Edit, out);
    }
    let mode: Resample = args.upscale.parse()?;
    let enhancement = args.request.enhance(&mut request)?;
    let backend = args.request.backend.load()?;
    args.request.load_loras(&backend)?;
    if let Some(path) = &args.init_latents {
        let pipeline = backend
            .local
            .as_ref()
            .ok_or_else(|| Error::InvalidArg("--init-latents needs the local backend".into()))?;
        let latents = npy::read_f32(path)?
            .into_dimensionality::<Ix4>()
            .map_err(|_| Error::InvalidArg(format!("{}: latents must be 4-d", path.display())))?;
        let factor = pipeline.model().package.vae_scale_factor;
        let (h, w) = (latents.shape()[2], latents.shape()[3]);
        let target = (
            request.height.map_or(h, |v| (v / factor) as usize),
            request.width.map_or(w, |v| (v / factor) as usize),
        );
        let latents = if target == (h, w) {
            latents
        } else {
            resize(latents.view(), target.0, target.1, mode)
        };
        request.init_latents = Some(latents.into_dyn());
    }
    args.request
        .run(&backend, &request, enhancement.as_ref(), out)
}
