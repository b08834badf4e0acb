//! A pipeline's LoRA adapters: loading by name, the default stack, and the stack a request runs with.
use std::path::Path;
use std::sync::{Arc, PoisonError};

use super::pipeline::Pipeline;
use crate::error::{Error, Result};
use crate::lora::LoadOptions;
use crate::request::{check_stack, take_prompt_tags, LoraUse, Request};
use crate::runtime::{AdapterInfo, Graph, StackWeights};

/// Components a LoRA may target: the denoiser and the text encoders.
const TARGETS: &[&str] = &[
    "unet",
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
];

impl Pipeline {
    fn lora_graphs(&self) -> Vec<&Graph> {
        self.model()
            .graphs()
            .filter(|g| TARGETS.contains(&g.component()))
            .collect()
    }

    /// Loads a LoRA file (diffusers/PEFT, kohya, LyCORIS formats; docs/lora.md) as adapter `name`,
    /// replacing an adapter of that name. The first adapter touching a weight rebuilds that graph's
    /// session once; requests then pick stacks without reloading anything.
    pub fn load_lora(&self, name: &str, path: &Path) -> Result<AdapterInfo> {
        self.load_lora_with(name, path, LoadOptions::default())
    }

    /// [`Pipeline::load_lora`] with options (`allow_partial`: skip keys that match no weight).
    pub fn load_lora_with(
        &self,
        name: &str,
        path: &Path,
        options: LoadOptions,
    ) -> Result<AdapterInfo> {
        self.adapters.load(&self.lora_graphs(), name, path, options)
    }

    /// Unloads adapter `name` (and takes it out of the default stack).
    pub fn unload_lora(&self, name: &str) -> Result<()> {
        self.adapters.unload(name)?;
        self.default_stack_mut().retain(|u| u.name != name);
        Ok(())
    }

    /// The loaded adapters, by name.
    pub fn loras(&self) -> Vec<AdapterInfo> {
        self.adapters.list()
    }

    /// Sets the stack of requests that name none ("merging" adapters into the pipeline; an empty
    /// stack unmerges). Every adapter must be loaded.
    pub fn set_default_loras(&self, stack: Vec<LoraUse>) -> Result<()> {
        check_stack(&stack)?;
        let loaded = self.adapters.list();
        if let Some(missing) = stack
            .iter()
            .find(|u| !loaded.iter().any(|l| l.name == u.name))
        {
            return Err(Error::InvalidArg(format!(
                "no LoRA named `{}` is loaded",
                missing.name
            )));
        }
        *self.default_stack_mut() = stack;
        Ok(())
    }

    /// The stack of requests that name none.
    pub fn default_loras(&self) -> Vec<LoraUse> {
        self.default_loras
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn default_stack_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<LoraUse>> {
        self.default_loras
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Computes and caches the replacement weights of `stack` now, as the first request with it
    /// would, and returns the memory they take (0 for an empty stack).
    pub fn prepare_loras(&self, stack: &[LoraUse]) -> Result<usize> {
        let weights = self.adapters.weights(&self.lora_graphs(), stack)?;
        Ok(weights.map_or(0, |w| w.bytes()))
    }

    /// `request` with its prompt's `<lora:name:strength>` tags removed and added to its stack: a
    /// tag naming an adapter already in the stack sets its strength, others are appended.
    pub(super) fn with_prompt_tags(&self, request: &Request) -> Result<Request> {
        let (prompt, tagged) = take_prompt_tags(&request.prompt)?;
        let mut stack = request
            .loras
            .clone()
            .unwrap_or_else(|| self.default_loras());
        for tag in tagged {
            match stack.iter_mut().find(|used| used.name == tag.name) {
                Some(used) => used.strength = tag.strength,
                None => stack.push(tag),
            }
        }
        Ok(Request {
            prompt,
            loras: Some(stack),
            lora_prompt_tags: false,
            ..request.clone()
        })
    }

    /// The replacement weights of the request's stack (its own, else the default one).
    pub(super) fn lora_weights(&self, request: &Request) -> Result<Option<Arc<StackWeights>>> {
        let default;
        let stack = match &request.loras {
            Some(stack) => stack.as_slice(),
            None => {
                default = self.default_loras();
                default.as_slice()
            }
        };
        self.adapters.weights(&self.lora_graphs(), stack)
    }
}
