//! ONNX Runtime: library loading, execution providers and sessions. Knows nothing of diffusion.
mod ep;
pub mod library;
mod session;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

pub use ep::{ExecutionProvider, TensorRtOptions};
pub use library::{LibrarySource, OrtLibrary};
pub use session::{ElementType, Graph, Input, TensorInfo};

use crate::error::{Error, Result};

/// How a [`Runtime`] is set up. `Default` is CPU with ONNX Runtime's own thread choice.
#[derive(Debug, Clone, Default)]
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
        let ep = &self.options.execution_provider;
        let mut builder = self.session_builder()?;
        ep.register(&mut builder)
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

    fn session_builder(&self) -> Result<ort::session::builder::SessionBuilder> {
        let setup = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            Error::OrtLibrary(format!("configuring a session: {e}"))
        };
        let mut builder = Session::builder(&self.library.environment)
            .map_err(|e| Error::OrtLibrary(format!("creating a session builder: {e}")))?
            .with_optimization_level(self.options.optimization.ort())
            .map_err(setup)?;
        if let Some(threads) = self.options.intra_threads {
            builder = builder.with_intra_threads(threads).map_err(setup)?;
        }
        if self.options.no_spinning {
            builder = builder.with_intra_op_spinning(false).map_err(setup)?;
        }
        Ok(builder)
    }

    /// Loads one graph file as a session on this runtime's provider.
    pub fn load_graph(&self, component: &str, path: &Path) -> Result<Graph> {
        if !path.is_file() {
            return Err(Error::model(path, format!("{component} graph is missing")));
        }
        let mut builder = self.session_builder()?;
        let provider = self.effective_provider();
        if let Err(err) = provider.register(&mut builder) {
            self.fall_back_or(err)?;
            builder = self.session_builder()?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| Error::model(path, format!("cannot load the {component} graph: {e}")))?;
        Ok(Graph::new(component, path, session))
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
