//! LoRA adapters from the command line: `--lora FILE[:STRENGTH]` of `dg generate` and `dg edit`
//! (and their batches), the names files load under, and the files a batch's `loras` column names,
//! each loaded once.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use clap::Args;
use diffgentor::lora::LoadOptions;
use diffgentor::runtime::AdapterInfo;
use diffgentor::{Error, LoraUse, Pipeline};

use crate::backend::Backend;

/// Longest adapter name the library takes.
const MAX_NAME: usize = 128;

/// The LoRA flags of a request.
#[derive(Args, Clone, Default)]
pub struct LoraArgs {
    /// Apply a LoRA file (.safetensors: diffusers/PEFT, kohya, LyCORIS LoCon) at STRENGTH
    /// (default 1; negative subtracts it). Repeatable: the adapters stack in order. Each loads
    /// under its file's stem (`_2`, `_3` ... when two stems clash), the NAME of `<lora:NAME:W>`
    /// prompt tags and of a batch's `loras` column.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    pub files: Vec<String>,
    /// Load LoRA files with keys that match no weight of the model (those keys are skipped and
    /// counted) instead of refusing them.
    #[arg(long)]
    pub lora_allow_partial: bool,
    /// Take A1111-style `<lora:NAME:STRENGTH>` tags out of the prompt and add them to the stack
    /// (NAME: an adapter loaded with --lora).
    #[arg(long)]
    pub lora_prompt_tags: bool,
}

/// One `--lora`: its file, the adapter name it loads under and its strength.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub name: String,
    pub path: PathBuf,
    pub strength: f32,
}

impl LoraArgs {
    /// The `--lora` files, each checked to be a file, with unique adapter names (no file is read).
    pub fn resolve(&self) -> diffgentor::Result<Vec<LoraFile>> {
        let mut taken = HashSet::new();
        self.files
            .iter()
            .map(|spec| {
                let (path, strength) = parse_file_spec(spec)?;
                if !path.is_file() {
                    return Err(Error::InvalidArg(format!(
                        "--lora {}: no such file",
                        path.display()
                    )));
                }
                let name = adapter_name(&path, &taken);
                taken.insert(name.clone());
                Ok(LoraFile {
                    name,
                    path,
                    strength,
                })
            })
            .collect()
    }

    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            allow_partial: self.lora_allow_partial,
        }
    }

    /// Loads the `--lora` files into the backend's pipeline and says what each changes on stderr
    /// (unless `quiet`); a remote backend is refused when any LoRA flag is given.
    pub fn load(&self, backend: &Backend, quiet: bool) -> diffgentor::Result<Vec<LoraFile>> {
        let files = self.resolve()?;
        if files.is_empty() && !self.lora_prompt_tags {
            return Ok(files);
        }
        let flag = if files.is_empty() {
            "--lora-prompt-tags"
        } else {
            "--lora"
        };
        let pipeline = pipeline_of(backend, flag)?;
        for file in &files {
            let info = pipeline.load_lora_with(&file.name, &file.path, self.options())?;
            if !quiet {
                errln!("lora {}", describe(&info, Some(file.strength)));
            }
        }
        Ok(files)
    }
}

/// The stack the `--lora` files make, in order.
pub fn stack(files: &[LoraFile]) -> Vec<LoraUse> {
    files
        .iter()
        .map(|f| LoraUse::new(f.name.clone(), f.strength))
        .collect()
}

/// A strength as JSON, as it was written (`0.8`, not the f32's `0.800000011920929`).
pub fn strength_json(strength: f32) -> serde_json::Value {
    strength
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The local pipeline behind `backend`, or an error saying `what` needs one.
pub fn pipeline_of<'a>(backend: &'a Backend, what: &str) -> diffgentor::Result<&'a Pipeline> {
    backend
        .generator
        .as_pipeline()
        .ok_or_else(|| Error::InvalidArg(no_loras(backend, what)))
}

/// Why `what` cannot run on a remote backend.
fn no_loras(backend: &Backend, what: &str) -> String {
    format!(
        "{what}: the {} backend runs no LoRA adapters (they need a local model, --model DIR)",
        backend.generator.describe().kind
    )
}

/// `FILE` or `FILE:STRENGTH`. A path with a `:` of its own still works when what follows its
/// last `:` is not a number (or the whole spec names a file and the part before does not).
pub fn parse_file_spec(spec: &str) -> diffgentor::Result<(PathBuf, f32)> {
    if spec.trim().is_empty() {
        return Err(Error::InvalidArg("--lora: an empty file name".into()));
    }
    if let Some((path, tail)) = spec.rsplit_once(':') {
        if let Ok(strength) = tail.trim().parse::<f32>() {
            let whole_is_the_file = Path::new(spec).is_file() && !Path::new(path).is_file();
            if !whole_is_the_file {
                if !strength.is_finite() || path.is_empty() {
                    return Err(Error::InvalidArg(format!(
                        "--lora `{spec}`: expected FILE or FILE:STRENGTH with a finite strength"
                    )));
                }
                return Ok((PathBuf::from(path), strength));
            }
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// The adapter name of a file: its stem in the characters names may hold (others become `_`),
/// with `_2`, `_3` ... appended when `taken` already has it.
pub fn adapter_name(path: &Path, taken: &HashSet<String>) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Room is left for a suffix; the bound is in bytes.
    let mut base = String::new();
    for c in stem.chars() {
        let c = if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') {
            c
        } else {
            '_'
        };
        if base.len() + c.len_utf8() > MAX_NAME - 8 {
            break;
        }
        base.push(c);
    }
    if base.is_empty() {
        base = "lora".into();
    }
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|name| !taken.contains(name))
        .unwrap_or(base)
}

/// `NAME (STRENGTH): FILE, FORMAT, COMPONENT N layers, ...` for stderr and logs.
pub fn describe(info: &AdapterInfo, strength: Option<f32>) -> String {
    let layers: Vec<String> = info
        .layers
        .iter()
        .map(|(component, n)| format!("{component} {n} layers"))
        .collect();
    let mut text = info.name.clone();
    if let Some(strength) = strength {
        text.push_str(&format!(" ({strength})"));
    }
    text.push_str(&format!(
        ": {}, {}, {}",
        info.path.display(),
        info.format,
        layers.join(", ")
    ));
    if info.unmatched > 0 {
        text.push_str(&format!(", {} keys matched no weight", info.unmatched));
    }
    text
}

/// The message of an `InvalidArg` without its prefix, for row errors that say where it came from.
fn bare(err: Error) -> String {
    match err {
        Error::InvalidArg(message) => message,
        other => other.to_string(),
    }
}

/// Whether a stack entry of a batch row names a file rather than a loaded adapter: names hold no
/// `/`, and a `.safetensors` ending means a file.
fn names_a_file(entry: &str) -> bool {
    entry.contains('/')
        || entry.contains(std::path::MAIN_SEPARATOR)
        || entry.to_ascii_lowercase().ends_with(".safetensors")
}

/// The LoRA stacks of a batch's rows: entries naming a `.safetensors` file (relative to the
/// table's folder) are loaded once per file under a name of their own; other entries must be
/// adapters of `--lora`.
pub struct RowLoras<'a> {
    backend: &'a Backend,
    options: LoadOptions,
    quiet: bool,
    /// The `--lora` adapters, by name.
    flags: HashMap<String, PathBuf>,
    /// Names in use.
    taken: HashSet<String>,
    /// Each file tried, by its resolved path: the adapter's name, or why it did not load.
    files: HashMap<PathBuf, Result<String, String>>,
}

impl<'a> RowLoras<'a> {
    pub fn new(
        backend: &'a Backend,
        flags: &[LoraFile],
        options: LoadOptions,
        quiet: bool,
    ) -> RowLoras<'a> {
        RowLoras {
            backend,
            options,
            quiet,
            flags: flags
                .iter()
                .map(|f| (f.name.clone(), f.path.clone()))
                .collect(),
            taken: flags.iter().map(|f| f.name.clone()).collect(),
            files: HashMap::new(),
        }
    }

    /// Rewrites a row's stack to adapter names, loading the files it names (relative to
    /// `base_dir`) that are not loaded yet. Returns each adapter's file, for the manifest, or the
    /// row's error.
    pub fn resolve(
        &mut self,
        stack: &mut [LoraUse],
        base_dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, String> {
        if stack.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self
            .backend
            .generator
            .as_pipeline()
            .ok_or_else(|| no_loras(self.backend, "column `loras`"))?;
        let mut files = Vec::with_capacity(stack.len());
        for entry in stack.iter_mut() {
            if names_a_file(&entry.name) {
                let path = base_dir.join(&entry.name);
                entry.name = self.load(pipeline, &path)?;
                files.push((entry.name.clone(), path));
            } else if let Some(path) = self.flags.get(&entry.name) {
                files.push((entry.name.clone(), path.clone()));
            } else {
                return Err(format!(
                    "column `loras`: no LoRA named `{}` is loaded (name a .safetensors file, \
                     relative to the table, or load it with --lora)",
                    entry.name
                ));
            }
        }
        Ok(files)
    }

    /// The adapter name `path` loaded under, loading it the first time.
    fn load(&mut self, pipeline: &Pipeline, path: &Path) -> Result<String, String> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(known) = self.files.get(&key) {
            return known.clone();
        }
        let loaded = if path.is_file() {
            let name = adapter_name(path, &self.taken);
            match pipeline.load_lora_with(&name, path, self.options) {
                Ok(info) => {
                    if !self.quiet {
                        errln!("lora {}", describe(&info, None));
                    }
                    self.taken.insert(name.clone());
                    Ok(name)
                }
                Err(e) => Err(format!("column `loras`: {}", bare(e))),
            }
        } else {
            Err(format!(
                "column `loras`: LoRA file {}: no such file",
                path.display()
            ))
        };
        self.files.insert(key, loaded.clone());
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_at_a_numeric_strength_only() {
        let parse = |s: &str| parse_file_spec(s).map_err(|e| e.to_string());
        assert_eq!(parse("a.safetensors"), Ok(("a.safetensors".into(), 1.0)));
        assert_eq!(
            parse("a.safetensors:0.8"),
            Ok(("a.safetensors".into(), 0.8))
        );
        assert_eq!(parse("dir/a:-0.4"), Ok(("dir/a".into(), -0.4)));
        assert_eq!(
            parse("odd:name.safetensors"),
            Ok(("odd:name.safetensors".into(), 1.0))
        );
        assert_eq!(
            parse("odd:dir/x.safetensors:2"),
            Ok(("odd:dir/x.safetensors".into(), 2.0))
        );
        assert!(parse("").is_err());
        assert!(parse("x:nan").is_err());
        assert!(parse(":0.5").is_err());
    }

    #[test]
    fn a_file_named_with_a_colon_and_number_is_still_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("style:2");
        std::fs::write(&file, b"x").unwrap();
        let spec = file.display().to_string();
        assert_eq!(parse_file_spec(&spec).unwrap(), (file.clone(), 1.0));
        let with = format!("{spec}:0.5");
        assert_eq!(parse_file_spec(&with).unwrap(), (file, 0.5));
    }

    #[test]
    fn names_are_stems_made_plain_and_unique() {
        let mut taken = HashSet::new();
        let name = |p: &str, taken: &HashSet<String>| adapter_name(Path::new(p), taken);
        assert_eq!(name("x/sd_a.safetensors", &taken), "sd_a");
        taken.insert("sd_a".to_string());
        assert_eq!(name("y/sd_a.safetensors", &taken), "sd_a_2");
        taken.insert("sd_a_2".to_string());
        assert_eq!(name("z/sd_a.safetensors", &taken), "sd_a_3");
        assert_eq!(name("my style (v2).safetensors", &taken), "my_style__v2_");
        assert_eq!(name(".safetensors", &taken), ".safetensors");
        assert_eq!(name("", &taken), "lora");
        let long = format!("{}.safetensors", "é".repeat(300));
        assert_eq!(name(&long, &taken).len(), MAX_NAME - 8);
    }

    #[test]
    fn file_entries_are_told_from_names() {
        assert!(names_a_file("loras/a.safetensors"));
        assert!(names_a_file("a.SafeTensors"));
        assert!(names_a_file("../a"));
        assert!(!names_a_file("style_v2.1"));
    }
}
