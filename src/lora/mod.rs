//! LoRA files (safetensors) read and mapped onto a model's weights: which module each layer
//! writes to and the full-rank delta it adds. Pure: no ONNX, no graph; applying the deltas is
//! the runtime's business.
//!
//! Understood: diffusers/PEFT (`unet.<module>.lora_A.weight`, alpha from the
//! `lora_adapter_metadata` header, rsLoRA, `alpha_pattern`), diffusers' older attention-processor
//! form (`to_q_lora.down.weight`), bare PEFT (`base_model.model.`), kohya/sd-scripts
//! (`lora_unet_`, `lora_te_`, `lora_te1_`, `lora_te2_`, with SDXL's SGM block names), FLUX in
//! diffusers, kohya and BFL (`diffusion_model.`) naming with fused projections split, and the
//! LyCORIS algorithms LoCon (incl. `lora_mid`), LoHa, LoKr and `diff`. DoRA is refused.
//!
//! Each model module may be written by one layer of a file: a second layer for the same module
//! (the same LoRA under two namings, as some converters leave behind) is refused rather than
//! summed, since summing would silently double it.
mod factors;
mod flux;
mod index;
mod keys;
mod math;
mod metadata;
mod safetensors;
mod sgm;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use factors::{Factors, Group};
use index::{Index, Rows};
use keys::{Kind, Split};

/// What a LoRA may target: per component folder ("unet", "transformer", "text_encoder",
/// "text_encoder_2"), module path in diffusers naming (e.g.
/// "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
/// "text_model.encoder.layers.0.self_attn.q_proj", "transformer_blocks.0.attn.to_q") -> the
/// weight's shape in PyTorch layout (`[out, in]` for Linear, `[out, in, kh, kw]` for Conv).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    components: BTreeMap<String, BTreeMap<String, Vec<usize>>>,
}

impl Targets {
    pub fn insert(&mut self, component: &str, module: &str, shape: Vec<usize>) {
        self.components
            .entry(component.to_string())
            .or_default()
            .insert(module.to_string(), shape);
    }

    pub fn shape(&self, component: &str, module: &str) -> Option<&[usize]> {
        self.components
            .get(component)?
            .get(module)
            .map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.components.values().all(BTreeMap::is_empty)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Skip tensors that match no target (or are of an unknown kind) instead of refusing the
    /// file; they are listed in [`Adapter::unmatched`].
    pub allow_partial: bool,
}

/// One parsed LoRA file, mapped onto a model's targets.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The naming most of the file's layers use.
    pub format: Format,
    pub layers: Vec<Layer>,
    /// Tensor keys that matched no target, when `allow_partial`.
    pub unmatched: Vec<String>,
}

/// How a file names its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// `unet.<module>.lora_A.weight` (diffusers >= 0.26, PEFT underneath).
    Diffusers,
    /// diffusers' attention-processor era: `<module>.processor.to_q_lora.down.weight`,
    /// `lora_linear_layer.down`, `.lora.down`.
    DiffusersLegacy,
    /// PEFT without a component prefix: `base_model.model.<module>.lora_A.weight` or bare.
    Peft,
    /// kohya/sd-scripts and LyCORIS: `lora_unet_<module_with_underscores>.lora_down.weight`.
    Kohya,
    /// The original checkpoint's module names under `diffusion_model.` (BFL, ComfyUI).
    Native,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Diffusers => "diffusers",
            Format::DiffusersLegacy => "diffusers (attention processors)",
            Format::Peft => "PEFT",
            Format::Kohya => "kohya",
            Format::Native => "original checkpoint names",
        })
    }
}

/// How a layer's delta is factored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// `up @ down` (LoRA; LoCon for convolutions, optionally with a Tucker `lora_mid`).
    Lora,
    /// LyCORIS Hadamard product of two low-rank products.
    LoHa,
    /// LyCORIS Kronecker product.
    LoKr,
    /// A stored full delta (LyCORIS `diff`).
    Diff,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Lora => "LoRA",
            Algorithm::LoHa => "LoHa",
            Algorithm::LoKr => "LoKr",
            Algorithm::Diff => "diff",
        })
    }
}

/// One model weight a LoRA changes.
#[derive(Debug, Clone)]
pub struct Layer {
    pub component: String,
    pub module: String,
    /// The target weight's shape, as given in [`Targets`].
    pub shape: Vec<usize>,
    /// The layer's name in the file (one layer may feed several modules when it is fused).
    pub key: String,
    factors: Arc<Factors>,
    rows: Rows,
    scale: f32,
}

impl Layer {
    /// The full-rank weight delta in PyTorch layout, row-major, len = shape.iter().product(),
    /// already scaled by alpha/rank (or the format's own scale), NOT by the user's strength.
    pub fn delta(&self) -> Vec<f32> {
        let out_rows = self.factors.shape()[0];
        let mut delta = match self.rows {
            Rows::All => self.factors.delta_rows(0..out_rows),
            Rows::Range(start, end) => self.factors.delta_rows(start..end),
            Rows::SwapHalves => {
                let full = self.factors.delta_rows(0..out_rows);
                let (first, second) = full.split_at(full.len() / 2);
                [second, first].concat()
            }
        };
        if self.scale != 1.0 {
            delta.iter_mut().for_each(|v| *v *= self.scale);
        }
        delta
    }

    pub fn algorithm(&self) -> Algorithm {
        self.factors.algorithm()
    }
}

/// Reads a LoRA file; errors about its contents name `path`.
pub fn load(path: &Path, targets: &Targets, options: LoadOptions) -> Result<Adapter> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    parse(&bytes, targets, options).map_err(|e| match e {
        Error::InvalidArg(m) => Error::InvalidArg(format!("{}: {m}", path.display())),
        Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// How many keys an error message lists before saying how many more there are.
const LISTED: usize = 5;

fn list(keys: &[String]) -> String {
    let shown = keys
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match keys.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Parses a LoRA safetensors file held in memory and maps it onto `targets`.
pub fn parse(bytes: &[u8], targets: &Targets, options: LoadOptions) -> Result<Adapter> {
    let file = safetensors::File::parse(bytes)?;
    let configs = metadata::read(&file.metadata)?;

    // Group tensors by layer; `legacy` marks diffusers' processor spelling.
    let mut groups: BTreeMap<String, (Group, bool)> = BTreeMap::new();
    let mut unknown = Vec::new();
    for key in file.entries.keys() {
        match keys::split(key) {
            Split::Factor { name, kind, legacy } => {
                let (group, is_legacy) = groups.entry(name).or_default();
                *is_legacy |= legacy;
                if let Some(first) = group.insert(kind, key.clone()) {
                    return Err(Error::InvalidArg(format!(
                        "LoRA tensors {first} and {key} hold the same factor of one layer"
                    )));
                }
            }
            Split::Dora => {
                return Err(Error::Unsupported(format!(
                    "DoRA LoRAs ({key}) are not supported: merging them needs the base weights"
                )))
            }
            Split::Unknown => unknown.push(key.clone()),
        }
    }
    if groups.is_empty() {
        let keys: Vec<String> = file.entries.keys().cloned().collect();
        return Err(Error::Unsupported(format!(
            "no LoRA tensors in a layout this library knows; the file holds {}",
            if keys.is_empty() {
                "no tensors".to_string()
            } else {
                list(&keys)
            }
        )));
    }
    if !unknown.is_empty() && !options.allow_partial {
        return Err(Error::Unsupported(format!(
            "LoRA tensors of an unsupported kind: {}",
            list(&unknown)
        )));
    }

    let index = Index::new(targets);
    let mut layers = Vec::new();
    let mut unmatched = unknown;
    let mut formats: HashMap<Format, usize> = HashMap::new();
    let mut writers: HashMap<(String, String), String> = HashMap::new();
    for (name, (group, legacy)) in &groups {
        if group.keys().all(|k| *k == Kind::Alpha) {
            // An alpha whose factors are absent changes nothing.
            continue;
        }
        let resolved = index.resolve(name, *legacy);
        *formats.entry(resolved.format).or_default() += 1;
        let Some(parts) = resolved.parts.clone() else {
            unmatched.extend(group.values().cloned());
            continue;
        };
        let Some(factors) = Factors::read(&file, group)? else {
            continue;
        };
        let natural = factors.shape();
        let scale = scale(&file, group, &factors, &resolved, &configs)?;
        let factors = Arc::new(factors);
        if let Some(Rows::Range(_, end)) = parts.last().map(|p| p.rows) {
            if end != natural[0] {
                let modules: Vec<&str> = parts.iter().map(|p| p.module.as_str()).collect();
                return Err(Error::InvalidArg(format!(
                    "the LoRA was made for a different model: {name} has {} output rows, \
                     the modules it covers ({}) have {end}",
                    natural[0],
                    modules.join(", ")
                )));
            }
        }
        for part in parts {
            let target = targets
                .shape(&part.component, &part.module)
                .unwrap_or_default();
            let mut part_shape = natural.clone();
            if let Rows::Range(start, end) = part.rows {
                part_shape[0] = end - start;
            }
            let halves_ok = part.rows != Rows::SwapHalves || natural[0] % 2 == 0;
            if !fits(&part_shape, target) || !halves_ok {
                return Err(Error::InvalidArg(format!(
                    "the LoRA was made for a different model: {name} gives a {part_shape:?} delta \
                     for {} {} of shape {target:?}",
                    part.component, part.module
                )));
            }
            let writer = (part.component.clone(), part.module.clone());
            if let Some(first) = writers.insert(writer, name.clone()) {
                return Err(Error::InvalidArg(format!(
                    "LoRA layers {first} and {name} both write {} {}; a file may hold each layer once",
                    part.component, part.module
                )));
            }
            layers.push(Layer {
                component: part.component,
                module: part.module,
                shape: target.to_vec(),
                key: name.clone(),
                factors: Arc::clone(&factors),
                rows: part.rows,
                scale,
            });
        }
    }
    if !unmatched.is_empty() && !options.allow_partial {
        return Err(Error::InvalidArg(format!(
            "{} LoRA tensors match no weight of this model (a LoRA for another model?): {}",
            unmatched.len(),
            list(&unmatched)
        )));
    }
    // The most common naming; ties go to the earlier variant.
    let format = formats
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map_or(Format::Diffusers, |(format, _)| format);
    Ok(Adapter {
        format,
        layers,
        unmatched,
    })
}

/// The factor a layer's delta is multiplied by: `alpha / rank` from an `alpha` tensor (kohya,
/// LyCORIS; 0 means none, as they read it), else from diffusers' PEFT metadata, else 1 (diffusers
/// treats a missing alpha as alpha = rank).
fn scale(
    file: &safetensors::File,
    group: &Group,
    factors: &Factors,
    resolved: &index::Resolved,
    configs: &metadata::Configs,
) -> Result<f32> {
    let Some(rank) = factors.rank() else {
        return Ok(1.0);
    };
    if let Some(key) = group.get(&Kind::Alpha) {
        let alpha = file.tensor(key)?;
        let [alpha] = alpha.data[..] else {
            return Err(Error::InvalidArg(format!(
                "LoRA alpha {key} has shape {:?}; expected a single value",
                alpha.shape
            )));
        };
        return Ok(if alpha == 0.0 {
            1.0
        } else {
            alpha / rank as f32
        });
    }
    let config = resolved
        .config_prefix
        .as_deref()
        .and_then(|prefix| configs.get(prefix));
    Ok(match config {
        Some(config) if factors.algorithm() == Algorithm::Lora => {
            config.scale(&resolved.path, rank)
        }
        _ => 1.0,
    })
}

/// Whether a delta of `delta` shape can be added to a weight of `target` shape: equal up to
/// trailing 1s (`[o, i]` vs a 1x1 conv's `[o, i, 1, 1]`), or a conv delta stored flattened.
fn fits(delta: &[usize], target: &[usize]) -> bool {
    let trim = |s: &[usize]| {
        let mut end = s.len();
        while end > 2 && s[end - 1] == 1 {
            end -= 1;
        }
        s[..end].to_vec()
    };
    trim(delta) == trim(target)
        || (delta.len() == 2
            && target.len() > 2
            && delta[0] == target[0]
            && delta[1] == target[1..].iter().product::<usize>())
}

#[cfg(test)]
mod tests;
