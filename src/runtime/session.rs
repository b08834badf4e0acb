//! One ONNX graph loaded into an ONNX Runtime session, with the I/O signature read from the graph.
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::cache::CacheStatus;
use super::pool::{Lease, Pool, PoolStats};
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
pub struct Graph {
    component: String,
    path: PathBuf,
    pool: Pool<Session>,
    sessions: Sessions,
    cache: CacheStatus,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("component", &self.component)
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("sessions", &self.pool.stats())
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
            pool: Pool::new(sessions.limit, session),
            sessions,
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
        self.pool.stats()
    }

    /// Builds sessions until `count` exist (capped at `sessions_per_graph`), so that the first
    /// concurrent requests do not pay for building them.
    pub fn reserve_sessions(&self, count: usize) -> Result<()> {
        self.pool.reserve(count, || self.new_session())
    }

    /// The provider this graph's sessions run on.
    pub(crate) fn provider(&self) -> &ExecutionProvider {
        &self.sessions.spec.provider
    }

    /// A session for one run: an idle one, a new one, or the next one returned.
    pub(crate) fn session(&self) -> Result<Lease<'_, Session>> {
        self.pool.acquire(|| self.new_session())
    }

    fn new_session(&self) -> Result<Session> {
        self.sessions
            .spec
            .reopen(&self.component, &self.sessions.origin)
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
        let fail = |e: ort::Error| Error::backend(&self.component, e);
        let mut values = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            values.push((*name, input.value().map_err(fail)?));
        }
        let mut session = self.session()?;
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
