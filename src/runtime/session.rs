//! One ONNX graph loaded into an ONNX Runtime session, with the I/O signature read from the graph.
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::cache::CacheStatus;
use super::pool::{Lease, Pool, PoolStats};
use super::weights::WeightSet;
use super::{ExecutionProvider, SessionOrigin, SessionSpec};
use crate::error::{Error, Result};

/// Element types the pipelines exchange with graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F16,
    I32,
    I64,
    Other,
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElementType::F32 => "float32",
            ElementType::F16 => "float16",
            ElementType::I32 => "int32",
            ElementType::I64 => "int64",
            ElementType::Other => "other",
        })
    }
}

/// Name, element type and shape (-1 = dynamic) of one graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: ElementType,
    pub shape: Vec<i64>,
}

impl TensorInfo {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
            .collect();
        write!(f, "{}: {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// A tensor handed to [`Graph::run`], borrowed from the caller (no copy on the CPU provider).
pub enum Input<'a> {
    F32(ArrayViewD<'a, f32>),
    I32(ArrayViewD<'a, i32>),
    I64(ArrayViewD<'a, i64>),
}

impl Input<'_> {
    /// A view of the tensor that ONNX Runtime can read in place.
    pub(crate) fn value(&self) -> ort::Result<ort::session::SessionInputValue<'_>> {
        Ok(match self {
            Input::F32(a) => TensorRef::from_array_view(a.view())?.into(),
            Input::I32(a) => TensorRef::from_array_view(a.view())?.into(),
            Input::I64(a) => TensorRef::from_array_view(a.view())?.into(),
        })
    }
}

/// How a graph builds more sessions.
#[derive(Debug)]
pub(crate) struct Sessions {
    pub spec: SessionSpec,
    pub origin: SessionOrigin,
    /// `RuntimeOptions::sessions_per_graph`.
    pub limit: usize,
}

/// A loaded graph with a pool of up to `sessions_per_graph` sessions. `Session::run` needs exclusive
/// access, so each run takes a session from the pool (building one when all are busy and the limit
/// allows, else waiting for one).
///
/// Some weights can be promoted to overridable inputs ([`Graph::promote`], for adapters): that swaps
/// in a new pool built from the edited graph; runs already going keep the pool they started on.
pub struct Graph {
    component: String,
    path: PathBuf,
    spec: SessionSpec,
    limit: usize,
    live: RwLock<Arc<Live>>,
    /// Serialises promotions (each rebuilds a session).
    promoting: Mutex<()>,
    cache: CacheStatus,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

/// The sessions runs use now, and which initializers they can take as inputs.
pub(crate) struct Live {
    /// Changes with every promotion, so per-session state (IO bindings) is never reused across pools.
    pub generation: u64,
    origin: SessionOrigin,
    pool: Pool<Session>,
    pub promoted: Arc<BTreeSet<String>>,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("component", &self.component)
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("sessions", &self.pool_stats())
            .field("cache", &self.cache)
            .finish()
    }
}

fn describe(ty: &ValueType, name: &str) -> TensorInfo {
    let (dtype, shape) = match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = match ty {
                TensorElementType::Float32 => ElementType::F32,
                TensorElementType::Float16 => ElementType::F16,
                TensorElementType::Int32 => ElementType::I32,
                TensorElementType::Int64 => ElementType::I64,
                _ => ElementType::Other,
            };
            (dtype, shape.iter().copied().collect())
        }
        _ => (ElementType::Other, Vec::new()),
    };
    TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
    }
}

impl Graph {
    pub(crate) fn new(
        component: &str,
        path: &Path,
        session: Session,
        sessions: Sessions,
        cache: CacheStatus,
    ) -> Graph {
        let inputs = session
            .inputs()
            .iter()
            .map(|o| describe(o.dtype(), o.name()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| describe(o.dtype(), o.name()))
            .collect();
        Graph {
            component: component.to_string(),
            path: path.to_path_buf(),
            spec: sessions.spec,
            limit: sessions.limit,
            live: RwLock::new(Arc::new(Live {
                generation: 0,
                origin: sessions.origin,
                pool: Pool::new(sessions.limit, session),
                promoted: Arc::default(),
            })),
            promoting: Mutex::new(()),
            cache,
            inputs,
            outputs,
        }
    }

    /// What the optimized-graph cache did when this graph was loaded.
    pub fn cache_status(&self) -> &CacheStatus {
        &self.cache
    }

    /// The graph's session pool right now.
    pub fn pool_stats(&self) -> PoolStats {
        self.live().pool.stats()
    }

    /// Builds sessions until `count` exist (capped at `sessions_per_graph`), so that the first
    /// concurrent requests do not pay for building them.
    pub fn reserve_sessions(&self, count: usize) -> Result<()> {
        let live = self.live();
        live.pool
            .reserve(count, || self.spec.reopen(&self.component, &live.origin))
    }

    /// The provider this graph's sessions run on.
    pub(crate) fn provider(&self) -> &ExecutionProvider {
        &self.spec.provider
    }

    /// The pool runs take sessions from now; hold it for the whole run.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A session of `live` for one run: an idle one, a new one, or the next one returned.
    pub(crate) fn session<'l>(&self, live: &'l Live) -> Result<Lease<'l, Session>> {
        live.pool
            .acquire(|| self.spec.reopen(&self.component, &live.origin))
    }

    /// Makes the named initializers overridable inputs (keeping those promoted before), so that runs
    /// can feed other values for them ([`WeightSet`]); a run that feeds none gets the stored weights.
    /// Rebuilds the graph's session from the edited model (not through the optimized-graph cache);
    /// a no-op when all are promoted already.
    pub(crate) fn promote(&self, names: &BTreeSet<String>) -> Result<()> {
        let _one_at_a_time = self
            .promoting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let live = self.live();
        if names.is_subset(&live.promoted) {
            return Ok(());
        }
        let promoted: Arc<BTreeSet<String>> =
            Arc::new(live.promoted.union(names).cloned().collect());
        let origin = SessionOrigin::Promoted {
            source: self.path.clone(),
            names: promoted.clone(),
        };
        let session = self.spec.reopen(&self.component, &origin)?;
        let next = Arc::new(Live {
            generation: live.generation + 1,
            origin,
            pool: Pool::new(self.limit, session),
            promoted,
        });
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// Fails unless every weight of `set` is an input of `live`'s sessions.
    pub(crate) fn check_promoted(&self, live: &Live, set: &WeightSet) -> Result<()> {
        match set.names().find(|n| !live.promoted.contains(*n)) {
            Some(name) => Err(Error::internal(
                &self.component,
                format!("weight `{name}` is fed but was never promoted to an input"),
            )),
            None => Ok(()),
        }
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    pub fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|i| i.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorInfo> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// "name: dtype[dims], ..." for error messages and `dg doctor`.
    pub fn signature(&self) -> String {
        let list = |v: &[TensorInfo]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("({}) -> ({})", list(&self.inputs), list(&self.outputs))
    }

    /// Runs the graph and returns the named float32 output, plus the time spent inside ONNX Runtime.
    pub fn run(
        &self,
        inputs: &[(&str, Input<'_>)],
        output: &str,
    ) -> Result<(ArrayD<f32>, Duration)> {
        let (mut arrays, elapsed) = self.run_outputs(inputs, &[output])?;
        let array = arrays.pop().ok_or_else(|| {
            Error::internal(
                &self.component,
                format!("graph produced no output `{output}`"),
            )
        })?;
        Ok((array, elapsed))
    }

    /// Runs the graph once and returns the named float32 outputs in the order asked for.
    pub fn run_outputs(
        &self,
        inputs: &[(&str, Input<'_>)],
        names: &[&str],
    ) -> Result<(Vec<ArrayD<f32>>, Duration)> {
        self.run_outputs_with(inputs, None, names)
    }

    /// [`Graph::run_outputs`] with a set of replacement weights fed as well.
    pub fn run_outputs_with(
        &self,
        inputs: &[(&str, Input<'_>)],
        weights: Option<&WeightSet>,
        names: &[&str],
    ) -> Result<(Vec<ArrayD<f32>>, Duration)> {
        let fail = |e: ort::Error| Error::backend(&self.component, e);
        let live = self.live();
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            values.push((name, input.value().map_err(fail)?));
        }
        if let Some(set) = weights {
            self.check_promoted(&live, set)?;
            values.extend(set.values().map(|(n, v)| (n, SessionInputValue::from(v))));
        }
        let mut session = self.session(&live)?;
        let started = Instant::now();
        let outputs = session.run(values).map_err(fail)?;
        let elapsed = started.elapsed();
        let arrays = names
            .iter()
            .map(|name| {
                let value = outputs.get(*name).ok_or_else(|| {
                    Error::internal(
                        &self.component,
                        format!("graph produced no output named `{name}`"),
                    )
                })?;
                Ok(value
                    .try_extract_array::<f32>()
                    .map_err(|e| Error::backend(&self.component, format!("output `{name}`: {e}")))?
                    .to_owned())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((arrays, elapsed))
    }
}
