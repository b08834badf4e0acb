//! Replacement weights fed to a graph in place of some of its initializers (LoRA-merged weights).
use ort::value::{DynTensor, Tensor};

use super::binding::{place, Placement};
use super::session::Graph;
use crate::error::Result;

/// Values for some of a graph's promoted initializers, placed where the graph runs (host or CUDA
/// memory). Built once per adapter stack and shared by every run that uses it; runs bind them
/// without copying.
pub struct WeightSet {
    values: Vec<(String, DynTensor)>,
    bytes: usize,
}

impl std::fmt::Debug for WeightSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightSet")
            .field("weights", &self.values.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl WeightSet {
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = (&str, &DynTensor)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of weights replaced.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Memory the replacement weights take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Graph {
    /// A weight set for this graph from `(initializer, stored shape, float32 values)` triples.
    pub fn weight_set(&self, weights: Vec<(String, Vec<usize>, Vec<f32>)>) -> Result<WeightSet> {
        let mut values = Vec::with_capacity(weights.len());
        let mut bytes = 0;
        for (name, shape, data) in weights {
            bytes += data.len() * 4;
            let host = Tensor::from_array((shape, data))
                .map_err(|e| self.fail(format!("weight `{name}`: {e}")))?
                .upcast();
            let placed = place(self, Placement::of(self.provider()), &name, host)?;
            values.push((name, placed));
        }
        Ok(WeightSet { values, bytes })
    }
}
