//! `dg montage`: tiles PNG files into one contact sheet, scaled up with nearest-neighbour sampling
//! so tiny images (16x16 digits) are large enough to look at.
use std::path::PathBuf;

use clap::Args;
use diffgentor::{Error, Image};

use crate::output::Out;

#[derive(Args)]
pub struct MontageArgs {
    /// Images to tile, left to right, top to bottom; mixed sizes sit at the top-left of their cell.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Images per row.
    #[arg(long, default_value_t = 10)]
    columns: usize,
    /// Integer upscaling factor for every image.
    #[arg(long, default_value_t = 8)]
    scale: u32,
    /// Output PNG path.
    #[arg(long, short)]
    output: PathBuf,
}

pub fn run(args: MontageArgs, out: &mut Out) -> diffgentor::Result<()> {
    if args.columns == 0 || args.scale == 0 || args.scale > 64 {
        return Err(Error::InvalidArg(
            "--columns must be >= 1 and --scale between 1 and 64".into(),
        ));
    }
    let images = args
        .inputs
        .iter()
        .map(|p| Image::load_png(p))
        .collect::<diffgentor::Result<Vec<_>>>()?;
    let cell_w = images.iter().map(|i| i.width).max().unwrap_or(1) * args.scale;
    let cell_h = images.iter().map(|i| i.height).max().unwrap_or(1) * args.scale;
    let columns = args.columns.min(images.len()) as u32;
    let rows = images.len().div_ceil(args.columns) as u32;
    let (width, height) = (cell_w * columns, cell_h * rows);
    let mut sheet = Image {
        width,
        height,
        pixels: vec![255; (width * height * 3) as usize],
    };
    for (index, image) in images.iter().enumerate() {
        let (x0, y0) = (
            (index as u32 % columns) * cell_w,
            (index as u32 / columns) * cell_h,
        );
        for y in 0..image.height * args.scale {
            for x in 0..image.width * args.scale {
                let src = (((y / args.scale) * image.width + x / args.scale) * 3) as usize;
                let dst = (((y0 + y) * width + x0 + x) * 3) as usize;
                sheet.pixels[dst..dst + 3].copy_from_slice(&image.pixels[src..src + 3]);
            }
        }
    }
    sheet.save_png(&args.output, &[])?;
    outln!(out, "wrote {}", args.output.display());
    Ok(())
}
