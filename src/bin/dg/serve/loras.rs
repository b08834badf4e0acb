//! LoRA adapters over HTTP, as the ancestor's server had them: `POST /v1/set_lora` loads an adapter
//! from `--lora-dir` (on every replica) and makes it the active stack, `POST
//! /v1/merge_lora_weights` / `POST /v1/unmerge_lora_weights` apply or stop applying it, `GET
//! /v1/list_loras` shows what is loaded; a request's own `loras` field picks another stack for it.
//!
//! Nothing is fused into the weights: the pipelines feed a stack's weights to the runs that ask for
//! it, so "merging" only says that requests naming no stack get the active one, and unmerging gives
//! the base model's output again, bit for bit, while the adapters stay loaded for the next switch.
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use diffgentor::lora::LoadOptions;
use diffgentor::request::{check_stack, parse_stack, take_prompt_tags};
use diffgentor::runtime::AdapterInfo;
use diffgentor::{Error, ErrorCode, LoraUse, Pipeline, Request};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::queue::lock;
use super::state::AppState;
use crate::backend::Backend;
use crate::loras::{describe, strength_json};

/// The server's LoRA settings and the active stack.
pub struct Loras {
    /// `--lora-dir`, as given and canonical; `None`: the management endpoints are refused.
    dir: Option<(PathBuf, PathBuf)>,
    /// `--lora-allow-partial`: the default of `set_lora`'s `allow_partial`.
    allow_partial: bool,
    active: Mutex<Active>,
    /// Held through a management call (loads take a while), so two never interleave; the active
    /// stack's own lock is taken only briefly, never across a load.
    busy: Mutex<()>,
}

/// What requests naming no stack get.
#[derive(Debug, Clone)]
struct Active {
    /// The stack `set_lora` (or `--lora` at start) chose.
    selected: Vec<LoraUse>,
    /// `merge_lora_weights`' `strength`: every selected strength times it.
    scale: f32,
    /// Whether requests naming no stack get `selected` (false after unmerging).
    applied: bool,
}

impl Active {
    fn stack(&self) -> Vec<LoraUse> {
        if !self.applied {
            return Vec::new();
        }
        self.selected
            .iter()
            .map(|u| LoraUse::new(u.name.clone(), u.strength * self.scale))
            .collect()
    }
}

/// The serve flags about LoRA adapters.
pub struct LoraFlags<'a> {
    pub dir: Option<&'a Path>,
    /// `NAME=FILE[:STRENGTH]`, loaded at start and applied in order.
    pub preload: &'a [String],
    pub allow_partial: bool,
}

impl Loras {
    /// Checks `--lora-dir` and loads the `--lora` adapters into every replica.
    pub fn start(flags: LoraFlags, replicas: &[Backend]) -> diffgentor::Result<Loras> {
        let used = flags.dir.is_some() || !flags.preload.is_empty();
        if used {
            let what = if flags.dir.is_some() {
                "--lora-dir"
            } else {
                "--lora"
            };
            if replicas.is_empty() {
                return Err(Error::InvalidArg(format!(
                    "{what}: LoRA adapters need an image model (--model DIR)"
                )));
            }
            for backend in replicas {
                crate::loras::pipeline_of(backend, what)?;
            }
        }
        let dir = match flags.dir {
            Some(dir) => {
                let canonical = dir
                    .canonicalize()
                    .map_err(|e| Error::io("--lora-dir: cannot resolve", dir, e))?;
                if !canonical.is_dir() {
                    return Err(Error::InvalidArg(format!(
                        "--lora-dir {}: not a directory",
                        dir.display()
                    )));
                }
                Some((dir.to_path_buf(), canonical))
            }
            None => None,
        };
        let options = LoadOptions {
            allow_partial: flags.allow_partial,
        };
        let mut selected = Vec::new();
        for spec in flags.preload {
            let (name, file) = spec.split_once('=').ok_or_else(|| {
                Error::InvalidArg(format!("--lora `{spec}` is not NAME=FILE[:STRENGTH]"))
            })?;
            let (path, strength) = crate::loras::parse_file_spec(file)?;
            if !path.is_file() {
                return Err(Error::InvalidArg(format!(
                    "--lora {}: no such file",
                    path.display()
                )));
            }
            for (i, backend) in replicas.iter().enumerate() {
                let pipeline = crate::loras::pipeline_of(backend, "--lora")?;
                let info = pipeline.load_lora_with(name.trim(), &path, options)?;
                if i == 0 {
                    tracing::info!("lora {}", describe(&info, Some(strength)));
                }
            }
            selected.push(LoraUse::new(name.trim(), strength));
        }
        check_stack(&selected)?;
        let loras = Loras {
            dir,
            allow_partial: flags.allow_partial,
            active: Mutex::new(Active {
                applied: !selected.is_empty(),
                selected,
                scale: 1.0,
            }),
            busy: Mutex::new(()),
        };
        if used {
            let stack = loras.stack();
            for backend in replicas {
                crate::loras::pipeline_of(backend, "--lora")?.set_default_loras(stack.clone())?;
            }
        }
        Ok(loras)
    }

    /// The stack requests naming none get now.
    fn stack(&self) -> Vec<LoraUse> {
        lock(&self.active).stack()
    }

    /// Makes the active stack the pipelines' default too, so anything that reaches them without
    /// a stack of its own runs with it.
    fn publish(&self, pipelines: &[&Pipeline]) -> ApiResult<()> {
        let stack = self.stack();
        for pipeline in pipelines {
            pipeline
                .set_default_loras(stack.clone())
                .map_err(ApiError::from)?;
        }
        Ok(())
    }

    /// Gives an image request its stack before it is queued: its own `loras`, else the active
    /// stack (so the job runs, and its PNG records, the stack of when it was sent). Names no
    /// adapter loads, and any stack on a remote backend, are refused here with a 400.
    pub fn prepare(&self, replicas: &[Backend], request: &mut Request) -> ApiResult<()> {
        let asks =
            request.loras.as_ref().is_some_and(|s| !s.is_empty()) || request.lora_prompt_tags;
        let Some(pipeline) = replicas.first().and_then(|b| b.generator.as_pipeline()) else {
            if asks {
                let kind = replicas.first().map_or("", |b| b.generator.describe().kind);
                return Err(ApiError::invalid(
                    "loras",
                    format!("the {kind} backend runs no LoRA adapters (they need a local model)"),
                )
                .code("lora_unsupported"));
            }
            return Ok(());
        };
        if request.loras.is_none() {
            request.loras = Some(self.stack());
        }
        let loaded: Vec<String> = pipeline.loras().into_iter().map(|i| i.name).collect();
        let tagged = if request.lora_prompt_tags {
            take_prompt_tags(&request.prompt)
                .map_err(|e| ApiError::invalid("prompt", bare(e)))?
                .1
        } else {
            Vec::new()
        };
        let named = request.loras.iter().flatten().map(|u| (&u.name, "loras"));
        let named = named.chain(tagged.iter().map(|u| (&u.name, "prompt")));
        for (name, param) in named {
            if !loaded.contains(name) {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "no LoRA named `{name}` is loaded (loaded: {})",
                        if loaded.is_empty() {
                            "none".to_string()
                        } else {
                            loaded.join(", ")
                        }
                    ),
                )
                .code("lora_not_loaded"));
            }
        }
        if let Some(stack) = &request.loras {
            check_stack(stack).map_err(|e| ApiError::invalid("loras", bare(e)))?;
        }
        Ok(())
    }

    /// `--lora-dir`, or the refusal of a server started without it.
    fn dir(&self) -> ApiResult<&(PathBuf, PathBuf)> {
        self.dir.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "LoRA management is off on this server: start dg serve with --lora-dir DIR (the \
                 directory LoRA files are loaded from)",
            )
            .code("lora_dir_not_set")
        })
    }

    /// A `lora_path` inside `--lora-dir` (relative to it, or absolute under it), as its canonical
    /// path: `..`, absolute paths elsewhere and symlinks that lead out are refused.
    fn resolve(&self, given: &str) -> ApiResult<PathBuf> {
        let (as_given, canonical) = self.dir()?;
        let outside = || {
            ApiError::invalid(
                "lora_path",
                format!("`lora_path` {given:?} is outside the server's LoRA directory"),
            )
            .code("lora_path_outside")
        };
        let path = Path::new(given);
        if given.is_empty() || given.contains('\0') {
            return Err(ApiError::invalid("lora_path", "`lora_path` is empty"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        let joined = if path.is_absolute() {
            if !path.starts_with(as_given) && !path.starts_with(canonical) {
                return Err(outside());
            }
            path.to_path_buf()
        } else {
            canonical.join(path)
        };
        let resolved = joined.canonicalize().map_err(|_| {
            ApiError::invalid(
                "lora_path",
                format!("`lora_path` {given:?}: no such file in the server's LoRA directory"),
            )
            .code("lora_not_found")
        })?;
        if !resolved.starts_with(canonical) {
            return Err(outside());
        }
        if !resolved.is_file() {
            return Err(ApiError::invalid(
                "lora_path",
                format!("`lora_path` {given:?} is not a file"),
            ));
        }
        Ok(resolved)
    }

    /// An adapter's path as clients see it: relative to `--lora-dir` (the file name for one
    /// loaded from elsewhere with `--lora`).
    fn shown(&self, path: &Path) -> String {
        let relative = self
            .dir
            .as_ref()
            .and_then(|(_, canonical)| path.strip_prefix(canonical).ok());
        match relative {
            Some(relative) => relative.display().to_string(),
            None => path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        }
    }

    /// `GET /v1/list_loras`'s body: every adapter loaded, and the active stack.
    fn view(&self, pipeline: &Pipeline) -> Value {
        let active = lock(&self.active).clone();
        let stack = active.stack();
        let data: Vec<Value> = pipeline
            .loras()
            .iter()
            .map(|info| {
                let used = stack.iter().find(|u| u.name == info.name);
                json!({
                    "name": info.name,
                    "path": self.shown(&info.path),
                    "format": info.format,
                    "layers": info.layers,
                    "unmatched": info.unmatched,
                    "active": used.is_some(),
                    "strength": used.map(|u| strength_json(u.strength)),
                })
            })
            .collect();
        json!({
            "object": "list",
            "data": data,
            "active": stack_json(&stack),
            "applied": active.applied,
            "selected": stack_json(&active.selected),
            "scale": strength_json(active.scale),
        })
    }

    /// Loads `path` as `name` into every pipeline; a new adapter that fails on a later replica is
    /// unloaded from the ones before.
    fn load(
        &self,
        pipelines: &[&Pipeline],
        name: &str,
        path: &Path,
        given: &str,
        options: LoadOptions,
    ) -> ApiResult<AdapterInfo> {
        let new = !pipelines[0].loras().iter().any(|i| i.name == name);
        let mut first = None;
        for (i, pipeline) in pipelines.iter().enumerate() {
            match pipeline.load_lora_with(name, path, options) {
                Ok(info) => {
                    first.get_or_insert(info);
                }
                Err(e) => {
                    if new {
                        for done in &pipelines[..i] {
                            let _ = done.unload_lora(name);
                        }
                    }
                    return Err(load_error(e, path, given));
                }
            }
        }
        first.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no pipeline"))
    }
}

/// The local pipelines behind the replicas, or why there are none.
fn pipelines(replicas: &[Backend]) -> ApiResult<Vec<&Pipeline>> {
    if replicas.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this server runs only a vision-language model (--vlm) and has no LoRA adapters",
        )
        .code("model_not_served"));
    }
    replicas
        .iter()
        .map(|backend| {
            backend.generator.as_pipeline().ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the {} backend runs no LoRA adapters (they need a local model, --model \
                         DIR)",
                        backend.generator.describe().kind
                    ),
                )
                .code("lora_unsupported")
            })
        })
        .collect()
}

/// A file that did not load: the caller's fault (400) unless it is a bug; the server's own path
/// for it is replaced by the one the client sent.
fn load_error(e: Error, path: &Path, given: &str) -> ApiError {
    let code = e.code();
    let mut error = ApiError::from(e);
    if matches!(
        code,
        ErrorCode::InvalidArg | ErrorCode::Unsupported | ErrorCode::Io
    ) {
        error.status = StatusCode::BAD_REQUEST;
        error.code = Some("invalid_lora".into());
    }
    error.message = error
        .message
        .replace(&path.display().to_string(), given)
        .replace("invalid argument: ", "");
    error.param("lora_path")
}

/// The message of an `InvalidArg` without its prefix.
fn bare(err: Error) -> String {
    match err {
        Error::InvalidArg(message) => message,
        other => other.to_string(),
    }
}

fn stack_json(stack: &[LoraUse]) -> Value {
    stack
        .iter()
        .map(|u| json!({"name": u.name, "strength": strength_json(u.strength)}))
        .collect()
}

/// A request's `loras` field: a list of `{"name", "strength"}` objects (or `name:strength`
/// strings), or one string `a:0.8;b:-0.4` (also a JSON list sent as text, as multipart forms send
/// fields). `None` for null (the active stack); `[]` or `""`: no LoRA.
pub fn parse_field(value: &Value) -> ApiResult<Option<Vec<LoraUse>>> {
    let bad = |why: String| ApiError::invalid("loras", why);
    let shape = "`loras` must be a list of {\"name\": ..., \"strength\": ...} objects or a string \
                 like \"a:0.8;b:-0.4\"";
    let stack = match value {
        Value::Null => return Ok(None),
        Value::String(s) if s == "null" => return Ok(None),
        Value::String(s) if s.trim_start().starts_with('[') => {
            let list: Value =
                serde_json::from_str(s).map_err(|e| bad(format!("`loras` is not JSON: {e}")))?;
            return parse_field(&list);
        }
        Value::String(s) => parse_stack(s).map_err(|e| bad(bare(e)))?,
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => LoraUse::parse(s).map_err(|e| bad(bare(e))),
                Value::Object(entry) => entry_of(entry).map_err(bad),
                _ => Err(bad(shape.to_string())),
            })
            .collect::<ApiResult<Vec<_>>>()?,
        _ => return Err(bad(shape.to_string())),
    };
    check_stack(&stack).map_err(|e| bad(bare(e)))?;
    Ok(Some(stack))
}

/// One `{"name": "a", "strength": 0.8}` entry (`strength` defaults to 1).
fn entry_of(entry: &Map<String, Value>) -> Result<LoraUse, String> {
    let name = match entry.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.trim(),
        _ => return Err("every `loras` entry needs a `name`".into()),
    };
    let strength = match entry.get("strength") {
        None | Some(Value::Null) => 1.0,
        Some(value) => {
            number(value).ok_or_else(|| format!("LoRA `{name}`: `strength` must be a number"))?
        }
    };
    Ok(LoraUse::new(name, strength))
}

/// A JSON number, or a string holding one, as f32.
fn number(value: &Value) -> Option<f32> {
    let n = match value {
        Value::Number(n) => n.as_f64()? as f32,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// A management call's JSON body: an object, or nothing (`{}`). The content type is not
/// checked, so `curl -d '{...}'` works as in the ancestor's examples.
fn body_fields(body: Result<Bytes, BytesRejection>) -> ApiResult<Map<String, Value>> {
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body could not be read: {}", e.body_text()),
        )
        .code("invalid_body")
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    super::openai::json_object(&body)
}

/// A `strength` field: a finite number (or a string holding one).
fn strength_field(fields: &Map<String, Value>) -> ApiResult<Option<f32>> {
    match fields.get("strength") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => number(value)
            .map(Some)
            .ok_or_else(|| ApiError::invalid("strength", "`strength` must be a finite number")),
    }
}

/// Runs a management call on a blocking thread (loading reads files and may rebuild sessions),
/// one at a time.
async fn managed<T: Send + 'static>(
    state: Arc<AppState>,
    call: impl FnOnce(&AppState, &[&Pipeline]) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    pipelines(&state.replicas)?;
    state.loras.dir()?;
    tokio::task::spawn_blocking(move || {
        let _busy = lock(&state.loras.busy);
        let pipelines = pipelines(&state.replicas)?;
        call(&state, &pipelines)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a LoRA operation panicked (a bug: please report it)",
        )
    })?
}

/// `POST /v1/set_lora {"lora_nickname", "lora_path", "strength"}`: loads the file as the adapter
/// (when the name is new or its file changed; `lora_path` may be left out for one loaded
/// already) and makes `[nickname:strength]` the active stack. Adapters loaded before stay loaded.
pub async fn set_lora(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let fields = body_fields(body)?;
    let name = match fields.get("lora_nickname") {
        Some(Value::String(name)) if valid_name(name) => name.clone(),
        Some(Value::String(name)) => {
            return Err(ApiError::invalid(
                "lora_nickname",
                format!(
                    "`lora_nickname` {name:?} must be 1 to 128 letters, digits, `_`, `-` or `.`"
                ),
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "lora_nickname",
                "`lora_nickname` (a string) is required",
            ))
        }
    };
    let given = match fields.get("lora_path") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) => Some(path.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                "lora_path",
                "`lora_path` must be a string",
            ))
        }
    };
    let strength = strength_field(&fields)?.unwrap_or(1.0);
    let allow_partial = match fields.get("allow_partial") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::invalid(
                "allow_partial",
                "`allow_partial` must be true or false",
            ))
        }
    };
    managed(state, move |state, pipelines| {
        let loras = &state.loras;
        let options = LoadOptions {
            allow_partial: allow_partial.unwrap_or(loras.allow_partial),
        };
        let current = pipelines[0].loras().into_iter().find(|i| i.name == name);
        let loaded = match (&given, &current) {
            (Some(given), _) => {
                let path = loras.resolve(given)?;
                if current.as_ref().is_some_and(|i| i.path == path) {
                    false
                } else {
                    loras.load(pipelines, &name, &path, given, options)?;
                    true
                }
            }
            (None, Some(_)) => false,
            (None, None) => {
                return Err(ApiError::invalid(
                    "lora_path",
                    format!("no LoRA named `{name}` is loaded: send its `lora_path`"),
                ))
            }
        };
        {
            let mut active = lock(&loras.active);
            *active = Active {
                selected: vec![LoraUse::new(name.clone(), strength)],
                scale: 1.0,
                applied: true,
            };
        }
        loras.publish(pipelines)?;
        tracing::info!(
            "set_lora: {name} at {strength}{}",
            if loaded { " (loaded)" } else { "" }
        );
        let mut view = loras.view(pipelines[0]);
        view["status"] = json!("ok");
        view["lora_nickname"] = json!(name);
        view["loaded"] = json!(loaded);
        Ok(Json(view))
    })
    .await
}

/// `POST /v1/merge_lora_weights {"strength"}`: applies the stack `set_lora` chose to every request
/// that names none, each strength times `strength` (default 1), as diffusers' `fuse_lora(lora_scale)`.
/// Nothing is fused: the weights are fed per run already, so this is instant and exact.
pub async fn merge(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let fields = body_fields(body)?;
    let scale = strength_field(&fields)?.unwrap_or(1.0);
    managed(state, move |state, pipelines| {
        let loras = &state.loras;
        {
            let mut active = lock(&loras.active);
            if active.selected.is_empty() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "no LoRA is set: POST /v1/set_lora first",
                )
                .code("no_lora_set"));
            }
            active.scale = scale;
            active.applied = true;
        }
        loras.publish(pipelines)?;
        let mut view = loras.view(pipelines[0]);
        view["status"] = json!("ok");
        Ok(Json(view))
    })
    .await
}

/// `POST /v1/unmerge_lora_weights`: requests naming no stack get the base model again; the
/// adapters stay loaded, and `merge_lora_weights` applies the same stack again.
pub async fn unmerge(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    body_fields(body)?;
    managed(state, move |state, pipelines| {
        let loras = &state.loras;
        lock(&loras.active).applied = false;
        loras.publish(pipelines)?;
        let mut view = loras.view(pipelines[0]);
        view["status"] = json!("ok");
        Ok(Json(view))
    })
    .await
}

/// `GET /v1/list_loras`.
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    managed(state, move |state, pipelines| {
        Ok(Json(state.loras.view(pipelines[0])))
    })
    .await
}

/// The library's rule for adapter names, checked before anything loads.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loras_field_takes_lists_and_strings() {
        let stack = |v: Value| parse_field(&v).map_err(|e| e.message);
        let a_b = Some(vec![LoraUse::new("a", 0.8), LoraUse::new("b", 1.0)]);
        assert_eq!(
            stack(json!([{"name": "a", "strength": 0.8}, {"name": "b"}])),
            Ok(a_b.clone())
        );
        assert_eq!(stack(json!(["a:0.8", "b"])), Ok(a_b.clone()));
        assert_eq!(stack(json!("a:0.8;b")), Ok(a_b.clone()));
        assert_eq!(
            stack(json!(
                r#"[{"name": "a", "strength": "0.8"}, {"name": "b"}]"#
            )),
            Ok(a_b)
        );
        assert_eq!(stack(json!([])), Ok(Some(vec![])));
        assert_eq!(stack(json!("")), Ok(Some(vec![])));
        assert_eq!(stack(Value::Null), Ok(None));
        for bad in [
            json!(3),
            json!([{"strength": 1}]),
            json!([{"name": "a", "strength": "x"}]),
            json!([1]),
            json!("a:x"),
            json!("[oops"),
            json!(["a", "a"]),
        ] {
            let e = parse_field(&bad).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some("loras")),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn merging_scales_and_unmerging_empties_the_active_stack() {
        let mut active = Active {
            selected: vec![LoraUse::new("a", 0.8)],
            scale: 0.5,
            applied: true,
        };
        assert_eq!(active.stack(), [LoraUse::new("a", 0.4)]);
        active.applied = false;
        assert!(active.stack().is_empty());
    }

    fn loras_in(dir: &Path) -> Loras {
        Loras {
            dir: Some((dir.to_path_buf(), dir.canonicalize().unwrap())),
            allow_partial: false,
            active: Mutex::new(Active {
                selected: Vec::new(),
                scale: 1.0,
                applied: false,
            }),
            busy: Mutex::new(()),
        }
    }

    #[test]
    fn lora_paths_stay_inside_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("loras");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.safetensors"), b"x").unwrap();
        std::fs::write(root.path().join("secret.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(
            root.path().join("secret.safetensors"),
            dir.join("link.safetensors"),
        )
        .unwrap();
        let loras = loras_in(&dir);
        let canonical = dir.canonicalize().unwrap();
        assert_eq!(
            loras.resolve("sub/a.safetensors").unwrap(),
            canonical.join("sub/a.safetensors")
        );
        let absolute = dir.join("sub/a.safetensors").display().to_string();
        assert_eq!(
            loras.resolve(&absolute).unwrap(),
            canonical.join("sub/a.safetensors")
        );
        let secret = root.path().join("secret.safetensors").display().to_string();
        for (path, code) in [
            ("../secret.safetensors", "lora_path_outside"),
            ("sub/../../secret.safetensors", "lora_path_outside"),
            (secret.as_str(), "lora_path_outside"),
            ("link.safetensors", "lora_path_outside"),
            ("missing.safetensors", "lora_not_found"),
        ] {
            let e = loras.resolve(path).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code.as_deref()),
                (400, Some(code)),
                "{path}: {}",
                e.message
            );
            assert!(
                !e.message.contains(&canonical.display().to_string()),
                "{path}: the server's directory is not told: {}",
                e.message
            );
        }
        assert!(loras.resolve("sub").is_err(), "a directory is no file");
        let off = Loras {
            dir: None,
            ..loras_in(&dir)
        };
        let e = off.resolve("sub/a.safetensors").unwrap_err();
        assert!(e.message.contains("--lora-dir"), "{}", e.message);
    }
}
