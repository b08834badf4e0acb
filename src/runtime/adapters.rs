//! LoRA adapters on loaded graphs: named adapters, and stacks of them turned into replacement weights.
//!
//! Loading an adapter promotes the initializers it targets to overridable graph inputs (once; the
//! graph's session is rebuilt then). A stack (up to [`MAX_STACK`](crate::request::MAX_STACK) adapters with strengths) becomes
//! W' = W + sum(strength_i * dW_i) per targeted weight, computed once, kept in a small cache keyed by
//! the stack, and fed to the runs that ask for it; runs without a stack feed nothing and get the
//! stored weights bit for bit. Requests with different stacks share the sessions and may run at once.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use super::onnx::WeightIndex;
use super::session::Graph;
use super::weights::WeightSet;
use crate::error::{Error, Result};
use crate::lora::{self, Adapter, LoadOptions, Targets};
use crate::request::{check_stack, LoraUse};

/// Stacks whose weights are kept by default ([`Adapters::new`]).
pub const DEFAULT_CACHED_STACKS: usize = 4;

/// A loaded adapter, as listed by [`Adapters::list`].
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    pub name: String,
    pub path: PathBuf,
    pub format: String,
    /// Weights it changes, per component.
    pub layers: BTreeMap<String, usize>,
    /// Keys that matched no weight (only with `allow_partial`).
    pub unmatched: usize,
}

struct Loaded {
    /// Unique per load, so a name loaded again never hits stacks cached for the old file.
    id: u64,
    info: AdapterInfo,
    adapter: Adapter,
}

/// Replacement weights of one stack, per component.
#[derive(Debug, Default)]
pub struct StackWeights {
    sets: BTreeMap<String, Arc<WeightSet>>,
}

impl StackWeights {
    /// The weights to feed `graph`, if the stack changes any of its weights.
    pub fn for_graph(&self, graph: &Graph) -> Option<&Arc<WeightSet>> {
        self.sets.get(graph.component())
    }

    /// Memory the stack's weights take.
    pub fn bytes(&self) -> usize {
        self.sets.values().map(|s| s.bytes()).sum()
    }
}

type StackKey = Vec<(u64, u32)>;

/// The adapters of one pipeline. Graphs are passed in by the caller, which owns them.
pub struct Adapters {
    indexes: OnceLock<BTreeMap<String, WeightIndex>>,
    loaded: RwLock<BTreeMap<String, Arc<Loaded>>>,
    /// Most recently used last.
    stacks: Mutex<Vec<(StackKey, Arc<StackWeights>)>>,
    cached_stacks: usize,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapters")
            .field("loaded", &self.names())
            .field("cached_stacks", &self.cached_stacks)
            .finish()
    }
}

impl Default for Adapters {
    fn default() -> Self {
        Adapters::new(DEFAULT_CACHED_STACKS)
    }
}

impl Adapters {
    /// No adapters yet; keeps the weights of up to `cached_stacks` stacks.
    pub fn new(cached_stacks: usize) -> Adapters {
        Adapters {
            indexes: OnceLock::new(),
            loaded: RwLock::new(BTreeMap::new()),
            stacks: Mutex::new(Vec::new()),
            cached_stacks,
            next_id: AtomicU64::new(1),
        }
    }

    fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Loaded>>> {
        self.loaded.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The weight index of each graph an adapter may target, read from the graph files on first use.
    fn indexes(&self, graphs: &[&Graph]) -> Result<&BTreeMap<String, WeightIndex>> {
        if let Some(indexes) = self.indexes.get() {
            return Ok(indexes);
        }
        let mut built = BTreeMap::new();
        for graph in graphs {
            built.insert(
                graph.component().to_string(),
                WeightIndex::load(graph.path())?,
            );
        }
        Ok(self.indexes.get_or_init(|| built))
    }

    /// Loads `path` as adapter `name` (replacing an adapter of that name), mapped onto `graphs`.
    pub fn load(
        &self,
        graphs: &[&Graph],
        name: &str,
        path: &Path,
        options: LoadOptions,
    ) -> Result<AdapterInfo> {
        check_name(name)?;
        let indexes = self.indexes(graphs)?;
        let mut targets = Targets::default();
        for (component, index) in indexes {
            for weight in index.iter() {
                targets.insert(component, &weight.module, weight.shape.clone());
            }
        }
        let adapter = lora::load(path, &targets, options)?;
        let mut layers = BTreeMap::<String, usize>::new();
        let mut promote = BTreeMap::<&str, BTreeSet<String>>::new();
        for layer in &adapter.layers {
            *layers.entry(layer.component.clone()).or_default() += 1;
            let weight = indexes
                .get(&layer.component)
                .and_then(|index| index.get(&layer.module))
                .ok_or_else(|| {
                    Error::internal(
                        "lora",
                        format!("{} `{}` is not a target", layer.component, layer.module),
                    )
                })?;
            promote
                .entry(layer.component.as_str())
                .or_default()
                .insert(weight.initializer.clone());
        }
        for (component, names) in &promote {
            if let Some(graph) = graphs.iter().find(|g| g.component() == *component) {
                graph.promote(names)?;
            }
        }
        let info = AdapterInfo {
            name: name.to_string(),
            path: path.to_path_buf(),
            format: adapter.format.to_string(),
            layers,
            unmatched: adapter.unmatched.len(),
        };
        let loaded = Arc::new(Loaded {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            info: info.clone(),
            adapter,
        });
        let old = self
            .loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), loaded);
        if let Some(old) = old {
            self.forget(old.id);
        }
        Ok(info)
    }

    /// Unloads adapter `name`; stacks that used it are dropped from the cache.
    pub fn unload(&self, name: &str) -> Result<()> {
        let removed = self
            .loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        match removed {
            Some(old) => {
                self.forget(old.id);
                Ok(())
            }
            None => Err(self.unknown(name)),
        }
    }

    /// The loaded adapters, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.read().values().map(|l| l.info.clone()).collect()
    }

    fn unknown(&self, name: &str) -> Error {
        let names = self.names();
        Error::InvalidArg(format!(
            "no LoRA named `{name}` is loaded (loaded: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    }

    fn forget(&self, id: u64) {
        self.cache()
            .retain(|(key, _)| key.iter().all(|(used, _)| *used != id));
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Vec<(StackKey, Arc<StackWeights>)>> {
        self.stacks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The replacement weights for `stack` (None for an empty stack), from the cache or computed now.
    pub fn weights(
        &self,
        graphs: &[&Graph],
        stack: &[LoraUse],
    ) -> Result<Option<Arc<StackWeights>>> {
        check_stack(stack)?;
        if stack.is_empty() {
            return Ok(None);
        }
        let loaded: Vec<(Arc<Loaded>, f32)> = {
            let map = self.read();
            stack
                .iter()
                .map(|u| {
                    map.get(&u.name)
                        .map(|l| (l.clone(), u.strength))
                        .ok_or_else(|| self.unknown(&u.name))
                })
                .collect::<Result<_>>()?
        };
        let key: StackKey = loaded.iter().map(|(l, s)| (l.id, s.to_bits())).collect();
        {
            let mut cache = self.cache();
            if let Some(pos) = cache.iter().position(|(k, _)| *k == key) {
                let hit = cache.remove(pos);
                let weights = hit.1.clone();
                cache.push(hit);
                return Ok(Some(weights));
            }
        }
        let weights = Arc::new(self.compute(graphs, &loaded)?);
        if self.cached_stacks > 0 {
            let mut cache = self.cache();
            cache.retain(|(k, _)| *k != key);
            if cache.len() >= self.cached_stacks {
                cache.remove(0);
            }
            cache.push((key, weights.clone()));
        }
        Ok(Some(weights))
    }

    /// W' = W + sum(strength * dW) for every weight the stack touches.
    fn compute(&self, graphs: &[&Graph], stack: &[(Arc<Loaded>, f32)]) -> Result<StackWeights> {
        let indexes = self.indexes(graphs)?;
        // component -> module -> [(layer, strength)]
        let mut touched = BTreeMap::<&str, BTreeMap<&str, Vec<(&lora::Layer, f32)>>>::new();
        for (loaded, strength) in stack {
            for layer in &loaded.adapter.layers {
                touched
                    .entry(layer.component.as_str())
                    .or_default()
                    .entry(layer.module.as_str())
                    .or_default()
                    .push((layer, *strength));
            }
        }
        let mut sets = BTreeMap::new();
        for (component, modules) in touched {
            let (Some(index), Some(graph)) = (
                indexes.get(component),
                graphs.iter().find(|g| g.component() == component),
            ) else {
                continue;
            };
            let modules: Vec<_> = modules.into_iter().collect();
            let merge = |(module, layers): &(&str, Vec<(&lora::Layer, f32)>)| {
                let weight = index.get(module).ok_or_else(|| {
                    Error::internal("lora", format!("{component} `{module}` is not indexed"))
                })?;
                let mut stored = index.read(weight)?;
                for (layer, strength) in layers {
                    weight.add_delta(&mut stored, &layer.delta(), *strength);
                }
                Ok((weight.initializer.clone(), weight.stored_shape(), stored))
            };
            // Reading the base weights and forming up @ down is the cost of a new stack, and the
            // request waiting for it has ONNX Runtime's threads idle: use the cores.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let chunk = modules.len().div_ceil(threads).max(1);
            let values = std::thread::scope(|scope| {
                let workers: Vec<_> = modules
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || part.iter().map(merge).collect::<Result<Vec<_>>>())
                    })
                    .collect();
                let mut values = Vec::with_capacity(modules.len());
                for worker in workers {
                    let part = worker.join().map_err(|_| {
                        Error::internal("lora", "a thread merging LoRA weights panicked")
                    })??;
                    values.extend(part);
                }
                Ok::<_, Error>(values)
            })?;
            sets.insert(component.to_string(), Arc::new(graph.weight_set(values)?));
        }
        Ok(StackWeights { sets })
    }
}

/// Names travel through URLs, CSV cells and `<lora:name:0.8>` prompt tags: keep them plain.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArg(format!(
            "LoRA name `{name}` must be 1 to 128 letters, digits, `_`, `-` or `.`"
        )))
    }
}
