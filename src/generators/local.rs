//! The local ONNX pipeline as a [`Generator`].
use super::{Description, Generator, Sizes, Task};
use crate::error::Result;
use crate::image::MAX_IMAGE_SIDE;
use crate::model::Family;
use crate::pipelines::Pipeline;
use crate::request::{Output, Progress, Request};

impl Generator for Pipeline {
    fn describe(&self) -> Description {
        let package = &self.model().package;
        let tasks = match package.family {
            Family::StableDiffusion => vec![Task::TextToImage, Task::ImageToImage, Task::Inpaint],
            Family::Inpaint => vec![Task::Inpaint],
            Family::InstructPix2Pix => vec![Task::Edit],
            Family::Sdxl | Family::Sd3 | Family::Flux => {
                vec![Task::TextToImage, Task::ImageToImage]
            }
        };
        Description {
            name: package.name.clone(),
            kind: "local",
            tasks,
            sizes: Sizes::Multiple {
                multiple: package.size_multiple().0,
                max: MAX_IMAGE_SIDE,
                default: package.default_size(),
            },
            honours_seed: true,
            // FLUX.1 is guidance-distilled: no unconditional pass reads a negative prompt.
            negative_prompt: package.family != Family::Flux,
        }
    }

    fn generate(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        self.generate_with_progress(request, progress)
    }

    fn as_pipeline(&self) -> Option<&Pipeline> {
        Some(self)
    }
}
