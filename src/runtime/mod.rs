//! ONNX Runtime: library loading, execution providers and sessions. Knows nothing of diffusion.
mod adapters;
mod binding;
mod cache;
mod config;
mod ep;
pub mod library;
pub mod onnx;
mod pool;
mod session;
mod weights;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::session::Session;

pub use adapters::{AdapterInfo, Adapters, StackWeights, DEFAULT_CACHED_STACKS};
pub use binding::Binding;
pub use cache::CacheStatus;
pub use config::{flag, RuntimeConfig};
pub use ep::{ExecutionProvider, TensorRtOptions};
pub use library::{LibrarySource, OrtLibrary};
pub use pool::PoolStats;
pub use session::{ElementType, Graph, Input, TensorInfo};
pub use weights::WeightSet;

use crate::error::{Error, Result};

/// How a [`Runtime`] is set up. `Default` is CPU with ONNX Runtime's own thread choice, one session
/// per graph and no optimized-graph cache.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Explicit path to libonnxruntime; otherwise the discovery order in [`library`] applies.
    pub ort_library: Option<PathBuf>,
    pub execution_provider: ExecutionProvider,
    /// Use the CPU provider when the requested one cannot register (reported by [`Runtime::fallback`]).
    pub allow_cpu_fallback: bool,
    /// Intra-op threads per session (None = ONNX Runtime's default: one per physical core).
    pub intra_threads: Option<usize>,
    /// ONNX Runtime graph optimisation level applied when sessions are built.
    pub optimization: OptimizationLevel,
    /// Keep ONNX Runtime's idle worker threads from spin-waiting. Spinning shortens latency on a
    /// dedicated machine but burns the cores other work needs on a shared one (docs/performance.md).
    pub no_spinning: bool,
    /// Most sessions kept per graph (at least 1). Runs on one session are serialised, so N sessions let
    /// N concurrent requests run the same graph at once. Sessions beyond the first are built only when
    /// a run finds all existing ones busy. Each session holds its own copy of the graph's weights and
    /// working memory (pre-packed weights are shared between them), so memory grows with N: an SD 1.5
    /// UNet in fp32 is about 3.4 GB per session (docs/performance.md).
    pub sessions_per_graph: usize,
    /// Directory for ONNX Runtime's optimized graphs: the first load of a graph saves its optimized
    /// model there, later loads read it with graph optimisation disabled (faster loads, same
    /// results). Entries are keyed by the source files, ONNX Runtime version, optimisation level,
    /// provider and (for `layout`/`all`) the host CPU. Not supported with TensorRT, which compiles
    /// its own engines (see [`TensorRtOptions::engine_cache_dir`]).
    pub optimized_graph_cache: Option<PathBuf>,
}

/// Most intra-op threads per session: above any machine's core count, so a typo such as 100000
/// is refused rather than spawning that many threads.
pub const MAX_INTRA_THREADS: usize = 1024;
/// Most sessions per graph (each holds its own working memory, see
/// [`RuntimeOptions::sessions_per_graph`]).
pub const MAX_SESSIONS_PER_GRAPH: usize = 64;

impl RuntimeOptions {
    /// Checks the counts against [`MAX_INTRA_THREADS`] and [`MAX_SESSIONS_PER_GRAPH`].
    pub fn validate(&self) -> Result<()> {
        if let Some(threads) = self.intra_threads {
            if !(1..=MAX_INTRA_THREADS).contains(&threads) {
                return Err(Error::InvalidArg(format!(
                    "intra_threads must be between 1 and {MAX_INTRA_THREADS}, got {threads}"
                )));
            }
        }
        if !(1..=MAX_SESSIONS_PER_GRAPH).contains(&self.sessions_per_graph) {
            return Err(Error::InvalidArg(format!(
                "sessions_per_graph must be between 1 and {MAX_SESSIONS_PER_GRAPH}, got {}",
                self.sessions_per_graph
            )));
        }
        Ok(())
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            ort_library: None,
            execution_provider: ExecutionProvider::default(),
            allow_cpu_fallback: false,
            intra_threads: None,
            optimization: OptimizationLevel::default(),
            no_spinning: false,
            sessions_per_graph: 1,
            optimized_graph_cache: None,
        }
    }
}

/// ONNX Runtime's graph optimisation levels (`all` is the default and the fastest measured here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    /// Extended plus memory-layout (NCHWc) transformations.
    Layout,
    #[default]
    All,
}

impl std::str::FromStr for OptimizationLevel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "disable" | "none" => Ok(OptimizationLevel::Disable),
            "basic" => Ok(OptimizationLevel::Basic),
            "extended" => Ok(OptimizationLevel::Extended),
            "layout" => Ok(OptimizationLevel::Layout),
            "all" => Ok(OptimizationLevel::All),
            _ => Err(Error::InvalidArg(format!(
                "unknown optimization level `{s}` (expected disable, basic, extended, layout or all)"
            ))),
        }
    }
}

impl OptimizationLevel {
    fn ort(self) -> GraphOptimizationLevel {
        match self {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::Layout => GraphOptimizationLevel::Level3,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        }
    }

    /// Whether ONNX Runtime's layout (NCHWc) transformer runs, whose output depends on the host CPU.
    fn host_specific(self) -> bool {
        matches!(self, OptimizationLevel::Layout | OptimizationLevel::All)
    }
}

impl std::fmt::Display for OptimizationLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizationLevel::Disable => "disable",
            OptimizationLevel::Basic => "basic",
            OptimizationLevel::Extended => "extended",
            OptimizationLevel::Layout => "layout",
            OptimizationLevel::All => "all",
        })
    }
}

/// A loaded ONNX Runtime with a chosen execution provider; shared by every pipeline built on it.
#[derive(Debug)]
pub struct Runtime {
    library: &'static OrtLibrary,
    options: RuntimeOptions,
    fallback: Mutex<Option<String>>,
}

impl Runtime {
    /// Loads ONNX Runtime and checks that the requested execution provider exists in it.
    pub fn new(options: RuntimeOptions) -> Result<Arc<Runtime>> {
        options.validate()?;
        if options.optimized_graph_cache.is_some()
            && matches!(
                options.execution_provider,
                ExecutionProvider::TensorRt { .. }
            )
        {
            // ONNX Runtime refuses to serialize graphs with compiled (TensorRT) nodes.
            return Err(Error::Unsupported(
                "optimized_graph_cache with TensorRT: TensorRT compiles its own engines; use the \
                 TensorRT engine cache instead"
                    .into(),
            ));
        }
        let library = library::load(options.ort_library.as_deref())?;
        let runtime = Runtime {
            library,
            options,
            fallback: Mutex::new(None),
        };
        if let Err(err) = runtime.probe_provider() {
            runtime.fall_back_or(err)?;
        }
        Ok(Arc::new(runtime))
    }

    pub fn library(&self) -> &OrtLibrary {
        self.library
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Why the runtime fell back to CPU, if it did (only possible with `allow_cpu_fallback`).
    pub fn fallback(&self) -> Option<String> {
        self.fallback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The provider sessions actually use.
    pub fn effective_provider(&self) -> ExecutionProvider {
        if self.fallback().is_some() {
            ExecutionProvider::Cpu
        } else {
            self.options.execution_provider.clone()
        }
    }

    fn probe_provider(&self) -> Result<()> {
        self.spec(self.options.execution_provider.clone())
            .builder(OptimizationLevel::Disable)
            .map(drop)
    }

    fn fall_back_or(&self, err: Error) -> Result<()> {
        match err {
            Error::EpUnavailable { .. } if self.options.allow_cpu_fallback => {
                *self.fallback.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
                Ok(())
            }
            other => Err(other),
        }
    }

    fn spec(&self, provider: ExecutionProvider) -> SessionSpec {
        SessionSpec {
            environment: self.library.environment.clone(),
            provider,
            intra_threads: self.options.intra_threads,
            no_spinning: self.options.no_spinning,
            level: self.options.optimization,
            prepacked: None,
        }
    }

    /// Loads one graph file as a session on this runtime's provider (more sessions are built on
    /// demand, up to `sessions_per_graph`).
    pub fn load_graph(&self, component: &str, path: &Path) -> Result<Graph> {
        if !path.is_file() {
            return Err(Error::model(path, format!("{component} graph is missing")));
        }
        let mut spec = self.spec(self.effective_provider());
        if let Err(err) = spec.builder(OptimizationLevel::Disable) {
            self.fall_back_or(err)?;
            spec = self.spec(ExecutionProvider::Cpu);
        }
        if self.options.sessions_per_graph > 1 {
            // Sessions of one graph pre-pack the same weights: keep one copy of each for all of them.
            spec.prepacked = Some(PrepackedWeights::new());
        }
        let source = path.to_path_buf();
        let (session, origin, cache) = match &self.options.optimized_graph_cache {
            Some(dir) if spec.level != OptimizationLevel::Disable => {
                self.load_through_cache(&spec, component, &source, dir)?
            }
            _ => (
                spec.open(component, &source, spec.level, None)?,
                SessionOrigin::Source(source),
                CacheStatus::Off,
            ),
        };
        Ok(Graph::new(
            component,
            path,
            session,
            session::Sessions {
                spec,
                origin,
                limit: self.options.sessions_per_graph,
            },
            cache,
        ))
    }

    /// The first session of a graph through the optimized-graph cache: a valid entry is loaded with
    /// optimisation off; otherwise the source graph is optimised and ONNX Runtime saves the result
    /// into a new entry. The cache never makes a load fail that would work without it.
    fn load_through_cache(
        &self,
        spec: &SessionSpec,
        component: &str,
        source: &Path,
        cache_dir: &Path,
    ) -> Result<(Session, SessionOrigin, CacheStatus)> {
        let uncached = |status| -> Result<_> {
            let session = spec.open(component, source, spec.level, None)?;
            Ok((session, SessionOrigin::Source(source.to_path_buf()), status))
        };
        let mut settings = vec![
            ("ort", self.library.version.clone()),
            ("level", spec.level.to_string()),
            ("ep", spec.provider.to_string()),
        ];
        if spec.level.host_specific() {
            settings.push(("host", cache::host_fingerprint()));
        }
        let entry = match cache::Entry::new(cache_dir, component, source, &settings) {
            Ok(entry) => entry,
            Err(err) => {
                return uncached(CacheStatus::WriteFailed {
                    reason: err.to_string(),
                })
            }
        };
        let origin = SessionOrigin::Cached {
            model: entry.model(),
            source: source.to_path_buf(),
        };
        let status = match entry.check() {
            Ok(true) => {
                match spec.open(component, &entry.model(), OptimizationLevel::Disable, None) {
                    Ok(session) => return Ok((session, origin, CacheStatus::Hit)),
                    Err(err) => CacheStatus::Replaced {
                        reason: err.to_string(),
                    },
                }
            }
            Ok(false) => CacheStatus::Written,
            Err(reason) => CacheStatus::Replaced { reason },
        };
        let write = || -> Result<Session> {
            if matches!(status, CacheStatus::Replaced { .. }) {
                entry.remove()?;
            }
            let pending = entry.begin_write()?;
            let session = spec.open(component, source, spec.level, Some(&pending.model()))?;
            pending.publish()?;
            Ok(session)
        };
        match write() {
            Ok(session) => Ok((session, origin, status)),
            Err(err) => uncached(CacheStatus::WriteFailed {
                reason: err.to_string(),
            }),
        }
    }
}

/// Where a graph's later sessions come from.
#[derive(Debug, Clone)]
pub(crate) enum SessionOrigin {
    /// The package's graph, optimised at every load.
    Source(PathBuf),
    /// A cache entry, loaded with optimisation off (the source graph if the entry has gone bad since).
    Cached { model: PathBuf, source: PathBuf },
    /// The package's graph with these initializers declared as inputs too ([`Graph::promote`]),
    /// edited again for every session rather than kept in memory.
    Promoted {
        source: PathBuf,
        names: Arc<BTreeSet<String>>,
    },
}

/// Everything needed to build another session of a graph the way the first was built.
pub(crate) struct SessionSpec {
    environment: ort::environment::Environment,
    pub(crate) provider: ExecutionProvider,
    intra_threads: Option<usize>,
    no_spinning: bool,
    level: OptimizationLevel,
    prepacked: Option<PrepackedWeights>,
}

impl std::fmt::Debug for SessionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSpec")
            .field("provider", &self.provider)
            .field("intra_threads", &self.intra_threads)
            .field("no_spinning", &self.no_spinning)
            .field("level", &self.level)
            .field("shared_prepacked_weights", &self.prepacked.is_some())
            .finish()
    }
}

impl SessionSpec {
    /// A session builder with the provider registered (failing loudly instead of falling back).
    fn builder(&self, level: OptimizationLevel) -> Result<SessionBuilder> {
        let setup = |e: ort::Error<SessionBuilder>| {
            Error::OrtLibrary(format!("configuring a session: {e}"))
        };
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| Error::OrtLibrary(format!("creating a session builder: {e}")))?
            .with_optimization_level(level.ort())
            .map_err(setup)?;
        if let Some(threads) = self.intra_threads {
            builder = builder.with_intra_threads(threads).map_err(setup)?;
        }
        if self.no_spinning {
            builder = builder.with_intra_op_spinning(false).map_err(setup)?;
        }
        if let Some(prepacked) = &self.prepacked {
            builder = builder.with_prepacked_weights(prepacked).map_err(setup)?;
        }
        self.provider.register(&mut builder)?;
        Ok(builder)
    }

    /// Builds a session from `path` at `level`; with `save_to`, ONNX Runtime also writes the
    /// optimized model there (initializers into a file beside it, see [`cache::DATA_FILE`]).
    fn open(
        &self,
        component: &str,
        path: &Path,
        level: OptimizationLevel,
        save_to: Option<&Path>,
    ) -> Result<Session> {
        let setup = |e: ort::Error<SessionBuilder>| {
            Error::OrtLibrary(format!("configuring a session: {e}"))
        };
        let mut builder = self.builder(level)?;
        if let Some(target) = save_to {
            builder = builder
                .with_optimized_model_path(target)
                .map_err(setup)?
                .with_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    cache::DATA_FILE,
                )
                .map_err(setup)?;
        }
        builder
            .commit_from_file(path)
            .map_err(|e| Error::model(path, format!("cannot load the {component} graph: {e}")))
    }

    /// Another session for a graph whose first one came from `origin`.
    pub(crate) fn reopen(&self, component: &str, origin: &SessionOrigin) -> Result<Session> {
        match origin {
            SessionOrigin::Source(path) => self.open(component, path, self.level, None),
            SessionOrigin::Cached { model, source } => self
                .open(component, model, OptimizationLevel::Disable, None)
                .or_else(|_| self.open(component, source, self.level, None)),
            SessionOrigin::Promoted { source, names } => {
                self.open_promoted(component, source, names)
            }
        }
    }

    /// A session of `source` edited so that `names` are inputs. External data is found beside
    /// `source`, as when ONNX Runtime loads the file itself.
    fn open_promoted(
        &self,
        component: &str,
        source: &Path,
        names: &BTreeSet<String>,
    ) -> Result<Session> {
        let bytes = std::fs::read(source).map_err(|e| Error::io("reading", source, e))?;
        let edited = onnx::promote(&bytes, names)
            .map_err(|e| Error::model(source, format!("cannot edit the {component} graph: {e}")))?;
        drop(bytes);
        let folder = source.parent().unwrap_or(Path::new("."));
        self.builder(self.level)?
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                folder.to_string_lossy(),
            )
            .map_err(|e| Error::OrtLibrary(format!("configuring a session: {e}")))?
            .commit_from_memory(&edited)
            .map_err(|e| Error::model(source, format!("cannot load the {component} graph: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_optimization_levels() {
        assert_eq!(
            "ALL".parse::<OptimizationLevel>().ok(),
            Some(OptimizationLevel::All)
        );
        assert_eq!(
            "none".parse::<OptimizationLevel>().ok(),
            Some(OptimizationLevel::Disable)
        );
        assert_eq!(
            "layout".parse::<OptimizationLevel>().ok(),
            Some(OptimizationLevel::Layout)
        );
        let err = "max"
            .parse::<OptimizationLevel>()
            .expect_err("unknown level");
        assert_eq!(err.code(), crate::ErrorCode::InvalidArg);
    }
}
