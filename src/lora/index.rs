//! Which model modules a LoRA layer name refers to. Every name a trainer might write for a target
//! is built forwards from the model's own module list (diffusers path, kohya `_`-joined path,
//! SGM names for UNets, BFL names for FLUX) and looked up, since kohya names cannot be inverted.
use std::collections::HashMap;

use super::flux::{self, Fuse};
use super::sgm;
use super::{Format, Targets};

/// Component folders known by name, so that a key for a component the model lacks still reads as
/// diffusers-style (and ends up unmatched) rather than as a bare module path.
const COMPONENTS: [&str; 6] = [
    "unet",
    "transformer",
    "prior",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
];

/// One model module a LoRA layer writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub component: String,
    pub module: String,
    pub rows: Rows,
}

/// Which output rows of the LoRA layer's delta belong to the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    All,
    /// `start..end` of a fused layer's rows.
    Range(usize, usize),
    /// All rows, the two halves swapped.
    SwapHalves,
}

/// A layer name read against the index.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub format: Format,
    /// Where diffusers' PEFT metadata for this name lives (`unet`, `` for bare keys); `None`
    /// for namings diffusers never saves with metadata.
    pub config_prefix: Option<String>,
    /// The module path as the file spells it, after any component prefix.
    pub path: String,
    /// `None` when no target matches.
    pub parts: Option<Vec<Part>>,
}

pub(crate) struct Index<'t> {
    targets: &'t Targets,
    /// The denoiser that prefixless keys (`base_model.model.`, `diffusion_model.`) refer to.
    denoiser: Option<&'static str>,
    /// Per component: alternative dotted names (SGM, BFL) -> modules.
    aliases: HashMap<String, HashMap<String, Vec<Part>>>,
    /// kohya names -> modules; `None` where two different targets give the same kohya name.
    kohya: HashMap<String, Option<Vec<Part>>>,
}

impl<'t> Index<'t> {
    pub fn new(targets: &'t Targets) -> Self {
        let denoiser = ["unet", "transformer"]
            .into_iter()
            .find(|c| targets.components.contains_key(*c));
        let mut index = Index {
            targets,
            denoiser,
            aliases: HashMap::new(),
            kohya: HashMap::new(),
        };
        for (component, modules) in &targets.components {
            let mut aliases = HashMap::new();
            if let Some(layout) = sgm::Layout::from_modules(modules.keys().map(String::as_str)) {
                for module in modules.keys() {
                    if let Some(name) = layout.sgm_name(module) {
                        aliases.insert(name, vec![part(component, module, Rows::All)]);
                    }
                }
            }
            for (bfl, covered, fuse) in flux::aliases(modules.keys().map(String::as_str)) {
                if let Some(parts) = index.fused(component, &covered, fuse) {
                    aliases.insert(bfl, parts);
                }
            }
            for prefix in kohya_prefixes(component) {
                let identity = modules
                    .keys()
                    .map(|m| (m.clone(), vec![part(component, m, Rows::All)]));
                let names: Vec<(String, Vec<Part>)> = identity
                    .chain(aliases.iter().map(|(a, p)| (a.clone(), p.clone())))
                    .collect();
                for (name, parts) in names {
                    let key = format!("{prefix}{}", name.replace('.', "_"));
                    index
                        .kohya
                        .entry(key)
                        .and_modify(|known| {
                            if known.as_ref() != Some(&parts) {
                                *known = None;
                            }
                        })
                        .or_insert(Some(parts));
                }
            }
            index.aliases.insert(component.clone(), aliases);
        }
        index
    }

    /// The parts of a BFL layer, when the model has every module it covers.
    fn fused(&self, component: &str, modules: &[String], fuse: Fuse) -> Option<Vec<Part>> {
        let mut start = 0;
        let mut parts = Vec::new();
        for module in modules {
            let rows = *self.targets.shape(component, module)?.first()?;
            let rows_of = match fuse {
                Fuse::Same => Rows::All,
                Fuse::SwapHalves => Rows::SwapHalves,
                Fuse::Split => Rows::Range(start, start + rows),
            };
            parts.push(part(component, module, rows_of));
            start += rows;
        }
        Some(parts)
    }

    pub fn resolve(&self, name: &str, legacy: bool) -> Resolved {
        let resolved = |format, config_prefix: Option<&str>, path: &str, parts| Resolved {
            format,
            config_prefix: config_prefix.map(str::to_string),
            path: path.into(),
            parts,
        };
        if KOHYA_PREFIXES.iter().any(|p| name.starts_with(p)) {
            let parts = self.kohya.get(name).cloned().flatten();
            return resolved(Format::Kohya, None, name, parts);
        }
        let legacy_format = |format| {
            if legacy {
                Format::DiffusersLegacy
            } else {
                format
            }
        };
        if let Some((head, path)) = name.split_once('.') {
            if COMPONENTS.contains(&head) || self.targets.components.contains_key(head) {
                let parts = self.dotted(head, path, legacy);
                return resolved(legacy_format(Format::Diffusers), Some(head), path, parts);
            }
        }
        let (format, prefix, path) = if let Some(path) = name.strip_prefix("base_model.model.") {
            (Format::Peft, Some(""), path)
        } else if let Some(path) = name.strip_prefix("diffusion_model.") {
            (Format::Native, None, path)
        } else {
            (Format::Peft, Some(""), name)
        };
        let parts = self.denoiser.and_then(|d| self.dotted(d, path, legacy));
        resolved(legacy_format(format), prefix, path, parts)
    }

    /// A dotted module path in one component: its diffusers name or an alias. diffusers' old
    /// attention processors named text-encoder projections like UNet ones (`to_q` for `q_proj`).
    fn dotted(&self, component: &str, path: &str, legacy: bool) -> Option<Vec<Part>> {
        if self.targets.shape(component, path).is_some() {
            return Some(vec![part(component, path, Rows::All)]);
        }
        if let Some(parts) = self.aliases.get(component).and_then(|a| a.get(path)) {
            return Some(parts.clone());
        }
        if !legacy {
            return None;
        }
        [
            ("to_q", "q_proj"),
            ("to_k", "k_proj"),
            ("to_v", "v_proj"),
            ("to_out.0", "out_proj"),
        ]
        .iter()
        .find_map(|(unet, clip)| {
            let module = format!("{}{clip}", path.strip_suffix(unet)?);
            self.targets.shape(component, &module)?;
            Some(vec![part(component, &module, Rows::All)])
        })
    }
}

fn part(component: &str, module: &str, rows: Rows) -> Part {
    Part {
        component: component.into(),
        module: module.into(),
        rows,
    }
}

const KOHYA_PREFIXES: [&str; 5] = [
    "lora_unet_",
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "lora_te3_",
];

/// kohya calls every denoiser `unet`; a single text encoder is `te`, SDXL's/FLUX's are `te1`, `te2`.
fn kohya_prefixes(component: &str) -> &'static [&'static str] {
    match component {
        "unet" | "transformer" => &["lora_unet_"],
        "text_encoder" => &["lora_te_", "lora_te1_"],
        "text_encoder_2" => &["lora_te2_"],
        "text_encoder_3" => &["lora_te3_"],
        _ => &[],
    }
}
