//! From a table row to a request: which column means what, per-row overrides of any request key
//! (a column named like a `Request::set` key overrides that parameter for its row), the row's seed
//! and its source images.
use std::path::{Path, PathBuf};

use diffgentor::request::MAX_IMAGES_PER_REQUEST;
use diffgentor::{Error, Image, Request};
use serde_json::Value;

use super::input::Row;

/// What the rows ask for: text-to-image (`dg t2i`) or editing a source image (`dg edit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    TextToImage,
    Edit,
}

/// The columns with a fixed meaning, as the command line names them.
pub struct Columns {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: String,
    pub image: String,
    pub mask: String,
    pub output_name: Option<String>,
}

/// How the rows of one table become requests.
pub struct Reader {
    columns: Columns,
    task: Task,
    /// Table columns that override the request key of the same name.
    overrides: Vec<String>,
    /// Relative image paths are read from the input file's folder.
    base_dir: PathBuf,
}

/// The source images of an edit row, as paths.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub images: Vec<PathBuf>,
    pub mask: Option<PathBuf>,
}

impl Reader {
    /// Checks the table has the columns the task needs, before any work.
    pub fn new(
        columns: Columns,
        task: Task,
        table_columns: &[String],
        input: &Path,
    ) -> diffgentor::Result<Reader> {
        let has = |name: &str| table_columns.iter().any(|c| c == name);
        let missing = |flag: &str, name: &str| {
            Error::InvalidArg(format!(
                "--input {}: no `{name}` column (the table has: {}); choose another with {flag}",
                input.display(),
                table_columns.join(", ")
            ))
        };
        if !has(&columns.prompt) {
            return Err(missing("--prompt-column", &columns.prompt));
        }
        if task == Task::Edit && !has(&columns.image) {
            return Err(missing("--image-column", &columns.image));
        }
        if let Some(name) = &columns.output_name {
            if !has(name) {
                return Err(missing("--output-name-column", name));
            }
        }
        // The keys with a column of their own never come from a same-named column too.
        let dedicated = ["prompt", "negative_prompt", "seed"];
        let taken = [&columns.prompt, &columns.image, &columns.mask];
        let overrides = table_columns
            .iter()
            .filter(|c| Request::is_key(c) && !dedicated.contains(&c.as_str()))
            .filter(|c| !taken.contains(c) && columns.output_name.as_ref() != Some(*c))
            .cloned()
            .collect();
        Ok(Reader {
            columns,
            task,
            overrides,
            base_dir: input.parent().map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    /// Row `index`'s request: `base` (the command's flags) with the row's prompt, negative prompt,
    /// seed (else the command's `--seed` plus the row index, else drawn) and overrides. Source
    /// images are not read here (see [`Reader::load_sources`]).
    pub fn request(&self, base: &Request, row: &Row, index: usize) -> Result<Request, String> {
        let mut request = base.clone();
        request.seed = base.seed.map(|seed| seed.wrapping_add(index as u64));
        match row.get(&self.columns.prompt) {
            Some(Value::String(prompt)) => request.prompt = prompt.clone(),
            None | Some(Value::Null) => {
                return Err(format!(
                    "no prompt: column `{}` is empty",
                    self.columns.prompt
                ))
            }
            Some(other) => request.prompt = cell_text(other).unwrap_or_default(),
        }
        let keyed = [
            ("negative_prompt", &self.columns.negative_prompt),
            ("seed", &self.columns.seed),
        ];
        let overrides = self.overrides.iter().map(|c| (c.as_str(), c));
        for (key, column) in keyed.into_iter().chain(overrides) {
            if let Some(value) = row.get(column).and_then(cell_text) {
                set(&mut request, key, &value)
                    .map_err(|e| format!("column `{column}` = {value:?}: {}", bare(e)))?;
            }
        }
        // Checked here, not only when the request runs: the row's file names are made first, one
        // per image, and a stray `1e10` would allocate them all.
        if !(1..=MAX_IMAGES_PER_REQUEST).contains(&request.num_images) {
            return Err(format!(
                "num_images must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {}",
                request.num_images
            ));
        }
        Ok(request)
    }

    /// The folder relative paths in the table (images, LoRA files) are read from.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The value of the output-name column, when there is one.
    pub fn output_name(&self, row: &Row) -> Option<Result<String, String>> {
        let column = self.columns.output_name.as_ref()?;
        Some(
            row.get(column)
                .and_then(cell_text)
                .ok_or_else(|| format!("output name column `{column}` is empty")),
        )
    }

    /// The source image and mask paths of an edit row (none for text-to-image).
    pub fn sources(&self, row: &Row) -> Result<Sources, String> {
        if self.task == Task::TextToImage {
            return Ok(Sources::default());
        }
        let images = match row.get(&self.columns.image) {
            Some(Value::Array(items)) => items.iter().filter_map(cell_text).collect(),
            Some(value) => cell_text(value).map_or_else(Vec::new, |text| {
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            None => Vec::new(),
        };
        if images.is_empty() {
            return Err(format!(
                "no source image: column `{}` is empty",
                self.columns.image
            ));
        }
        let mask = row.get(&self.columns.mask).and_then(cell_text);
        Ok(Sources {
            images: images.iter().map(|p| self.base_dir.join(p)).collect(),
            mask: mask.map(|p| self.base_dir.join(p)),
        })
    }
}

impl Sources {
    /// Reads the source image and mask (PNG, JPEG or WebP) into `request`.
    pub fn load_into(&self, request: &mut Request) -> Result<(), String> {
        match self.images.as_slice() {
            [] => return Ok(()),
            [image] => request.init_image = Some(load_image(image)?),
            several => {
                return Err(format!(
                    "{} source images given, but a request takes one image",
                    several.len()
                ))
            }
        }
        if let Some(mask) = &self.mask {
            request.mask = Some(load_image(mask)?);
        }
        Ok(())
    }
}

fn load_image(path: &Path) -> Result<Image, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("image {}: {e}", path.display()))?;
    Image::decode(&bytes).map_err(|e| format!("image {}: {}", path.display(), bare(e)))
}

/// `Request::set`, taking a whole float for an integer: pandas writes an integer column with nulls
/// as floats (`42.0`), in CSV too.
fn set(request: &mut Request, key: &str, value: &str) -> diffgentor::Result<()> {
    let err = match request.set(key, value) {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    match value.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && f.abs() < 9e15 => {
            request.set(key, &format!("{}", f as i64)).map_err(|_| err)
        }
        _ => Err(err),
    }
}

/// A cell as the text `Request::set` takes; `None` for null and empty cells (unset).
pub fn cell_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// The message of an `InvalidArg` without its prefix, for row errors that say where it came from.
pub fn bare(err: Error) -> String {
    match err {
        Error::InvalidArg(message) => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reader(task: Task, columns: &[&str]) -> Reader {
        let columns_cfg = Columns {
            prompt: "prompt".into(),
            negative_prompt: "negative_prompt".into(),
            seed: "seed".into(),
            image: "image".into(),
            mask: "mask".into(),
            output_name: None,
        };
        let names: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        Reader::new(columns_cfg, task, &names, Path::new("/data/in.csv")).unwrap()
    }

    fn row(value: Value) -> Row {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn columns_named_like_request_keys_override_them() {
        let r = reader(
            Task::TextToImage,
            &["prompt", "steps", "seed", "scheduler.eta", "note"],
        );
        let mut base = Request::new("");
        base.seed = Some(100);
        let request = r
            .request(
                &base,
                &row(json!({"prompt": "a", "steps": 7.0, "note": "x"})),
                5,
            )
            .unwrap();
        assert_eq!((request.prompt.as_str(), request.steps), ("a", 7));
        assert_eq!(
            request.seed,
            Some(105),
            "the command's seed plus the row index"
        );
        let request = r
            .request(
                &base,
                &row(json!({"prompt": "a", "seed": "9", "scheduler.eta": 0.5})),
                5,
            )
            .unwrap();
        assert_eq!(request.seed, Some(9));
        assert_eq!(request.scheduler_overrides["eta"], json!(0.5));
        let err = r
            .request(&base, &row(json!({"prompt": "a", "steps": "many"})), 0)
            .unwrap_err();
        assert!(err.starts_with("column `steps` = \"many\": "), "{err}");
        let err = r
            .request(&base, &row(json!({"prompt": null})), 0)
            .unwrap_err();
        assert_eq!(err, "no prompt: column `prompt` is empty");
        let r = reader(Task::TextToImage, &["prompt", "num_images"]);
        let err = r
            .request(&base, &row(json!({"prompt": "a", "num_images": 1e10})), 0)
            .unwrap_err();
        assert_eq!(err, "num_images must be between 1 and 64, got 10000000000");
    }

    #[test]
    fn edit_sources_are_lists_or_comma_separated_and_relative_to_the_input() {
        let r = reader(Task::Edit, &["prompt", "image", "mask"]);
        let s = r
            .sources(&row(json!({"image": "a.png, b.png", "mask": "m.png"})))
            .unwrap();
        assert_eq!(
            s.images,
            [PathBuf::from("/data/a.png"), PathBuf::from("/data/b.png")]
        );
        assert_eq!(s.mask, Some(PathBuf::from("/data/m.png")));
        let s = r.sources(&row(json!({"image": ["/abs/c.png"]}))).unwrap();
        assert_eq!(s.images, [PathBuf::from("/abs/c.png")]);
        let err = r.sources(&row(json!({"image": ""}))).unwrap_err();
        assert_eq!(err, "no source image: column `image` is empty");
        let err = Sources {
            images: vec![s.images[0].clone(); 2],
            mask: None,
        }
        .load_into(&mut Request::new(""))
        .unwrap_err();
        assert_eq!(err, "2 source images given, but a request takes one image");
    }
}
