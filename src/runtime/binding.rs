//! Repeated runs of one graph with some inputs fixed, through ONNX Runtime's IO binding.
//!
//! A denoising loop runs the UNet once per step with the same `encoder_hidden_states`. A [`Binding`]
//! copies such inputs once (into device memory when the graph runs on CUDA or TensorRT), binds the
//! per-step inputs on every run, and has ONNX Runtime write the output into one buffer that every
//! run reuses instead of allocating a new one.
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::ArrayViewMutD;
use ort::memory::{AllocationDevice, Allocator};
use ort::session::IoBinding;
use ort::value::{DynTensor, Tensor, TensorElementType};

use super::session::{Graph, Input};
use super::weights::WeightSet;
use super::ExecutionProvider;
use crate::error::{Error, Result};

/// Where fixed inputs live: host memory for the CPU provider, device memory for CUDA and TensorRT
/// (both run on CUDA memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Host,
    Cuda { device_id: i32 },
}

impl Placement {
    pub(crate) fn of(provider: &ExecutionProvider) -> Placement {
        match provider {
            ExecutionProvider::Cpu => Placement::Host,
            ExecutionProvider::Cuda { device_id }
            | ExecutionProvider::TensorRt { device_id, .. } => Placement::Cuda {
                device_id: *device_id,
            },
        }
    }
}

/// Runs of one graph that share fixed inputs and one float32 output buffer; made by
/// [`Graph::binding`]. Use it from one thread at a time (`run` takes `&mut self`); make one per
/// request. Each run still takes a session from the graph's pool, so bindings of concurrent requests
/// run concurrently as far as `sessions_per_graph` allows.
pub struct Binding<'g> {
    graph: &'g Graph,
    placement: Placement,
    fixed: Vec<(String, DynTensor)>,
    /// Host buffers the per-step inputs are copied into. ort 2.0.0-rc.15's `IoBinding::bind_input`
    /// deep-copies a *borrowed* tensor through a helper that takes a global lock it already holds
    /// (a deadlock), so only owned tensors are bound; reusing them also saves an allocation per run.
    step_inputs: Vec<(String, DynTensor)>,
    /// Replacement weights bound with the fixed inputs (shared, not copied).
    weights: Option<Arc<WeightSet>>,
    output_name: String,
    output: Tensor<f32>,
    /// ONNX Runtime's binding per session (by pool generation and id), with the fixed inputs and
    /// the output bound when it was made; a binding belongs to the session that created it.
    bound: Vec<((u64, usize), IoBinding)>,
}

impl std::fmt::Debug for Binding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("graph", &self.graph.component())
            .field("placement", &self.placement)
            .field(
                "fixed",
                &self.fixed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("output", &self.output_name)
            .field("sessions_bound", &self.bound.len())
            .finish()
    }
}

impl Graph {
    /// Starts repeated runs of this graph whose float32 output `output` has shape `output_shape`
    /// (ONNX Runtime writes every run's result into the same buffer). Fix constant inputs with
    /// [`Binding::fix`], then call [`Binding::run`] with the rest.
    pub fn binding(&self, output: &str, output_shape: &[usize]) -> Result<Binding<'_>> {
        if self.output(output).is_none() {
            return Err(Error::InvalidArg(format!(
                "{} graph has no output `{output}`; it has {}",
                self.component(),
                self.signature()
            )));
        }
        let buffer = Tensor::<f32>::new(&Allocator::default(), output_shape.to_vec())
            .map_err(|e| self.fail(format!("allocating output `{output}`: {e}")))?;
        Ok(Binding {
            graph: self,
            placement: Placement::of(self.provider()),
            fixed: Vec::new(),
            weights: None,
            step_inputs: Vec::new(),
            output_name: output.to_string(),
            output: buffer,
            bound: Vec::new(),
        })
    }

    pub(crate) fn fail(&self, message: impl std::fmt::Display) -> Error {
        Error::backend(self.component(), message)
    }
}

/// `host` at `placement`: as is on the host, copied to the device for CUDA and TensorRT. With a
/// CPU-only ONNX Runtime a device copy is `EP_UNAVAILABLE`.
pub(crate) fn place(
    graph: &Graph,
    placement: Placement,
    name: &str,
    host: DynTensor,
) -> Result<DynTensor> {
    match placement {
        Placement::Host => Ok(host),
        Placement::Cuda { device_id } => {
            // Copies to CUDA memory go through ONNX Runtime's CUDA provider (TensorRT builds have
            // it too): name it plainly when this ONNX Runtime lacks it.
            ExecutionProvider::Cuda { device_id }.check_compiled_in()?;
            host.to(AllocationDevice::CUDA, device_id)
                .map_err(|e| graph.fail(format!("input `{name}`: {e}")))
        }
    }
}

impl<'g> Binding<'g> {
    /// Fixes input `name` for every later run: copied once now, to the device when the graph runs on
    /// CUDA/TensorRT. With a CPU-only ONNX Runtime that is `EP_UNAVAILABLE`.
    pub fn fix(&mut self, name: &str, input: Input<'_>) -> Result<()> {
        if self.graph.input(name).is_none() {
            return Err(Error::InvalidArg(format!(
                "{} graph has no input `{name}`; it has {}",
                self.graph.component(),
                self.graph.signature()
            )));
        }
        let fail = |e: ort::Error| self.graph.fail(format!("input `{name}`: {e}"));
        let host: DynTensor = match input {
            Input::F32(a) => Tensor::from_array(a.to_owned()).map_err(fail)?.upcast(),
            Input::I32(a) => Tensor::from_array(a.to_owned()).map_err(fail)?.upcast(),
            Input::I64(a) => Tensor::from_array(a.to_owned()).map_err(fail)?.upcast(),
        };
        let value = place(self.graph, self.placement, name, host)?;
        self.fixed.retain(|(n, _)| n != name);
        self.fixed.push((name.to_string(), value));
        // Bindings made before this call lack the new value: make them again on the next run.
        self.bound.clear();
        Ok(())
    }

    /// Feeds `set` in place of the graph's weights on every later run (bound without a copy).
    pub fn weights(&mut self, set: Arc<WeightSet>) {
        self.weights = Some(set);
        self.bound.clear();
    }

    /// Runs the graph with the fixed inputs plus `inputs` and returns the output buffer (valid until
    /// the next run), with the time spent inside ONNX Runtime.
    pub fn run(
        &mut self,
        inputs: &[(&str, Input<'_>)],
    ) -> Result<(ArrayViewMutD<'_, f32>, Duration)> {
        let graph = self.graph;
        let live = graph.live();
        if let Some(set) = &self.weights {
            graph.check_promoted(&live, set)?;
        }
        let mut session = graph.session(&live)?;
        let key = (live.generation, session.id());
        let slot = match self.bound.iter().position(|(k, _)| *k == key) {
            Some(slot) => slot,
            None => {
                let fail = |e: ort::Error| graph.fail(format!("binding: {e}"));
                let mut binding = session.create_binding().map_err(fail)?;
                for (name, value) in &self.fixed {
                    binding.bind_input(name.as_str(), value).map_err(fail)?;
                }
                for (name, value) in self.weights.iter().flat_map(|set| set.values()) {
                    binding.bind_input(name, value).map_err(fail)?;
                }
                binding
                    .bind_output(self.output_name.as_str(), &mut self.output)
                    .map_err(fail)?;
                self.bound.push((key, binding));
                self.bound.len() - 1
            }
        };
        for (name, input) in inputs {
            let fail = |e: ort::Error| graph.fail(format!("input `{name}`: {e}"));
            let buffer = stage(&mut self.step_inputs, name, input).map_err(fail)?;
            // Bound on every run: on CUDA, binding is what copies the new values to the device.
            self.bound[slot].1.bind_input(*name, buffer).map_err(fail)?;
        }
        let binding = &self.bound[slot].1;
        let started = Instant::now();
        session.run_binding(binding).map_err(|e| graph.fail(e))?;
        let elapsed = started.elapsed();
        drop(session);
        let output = self
            .output
            .try_extract_array_mut()
            .map_err(|e| graph.fail(format!("output `{}`: {e}", self.output_name)))?;
        Ok((output, elapsed))
    }
}

/// Copies `input` into the reusable host buffer for `name`, (re)allocating it when the shape or
/// element type changed.
fn stage<'b>(
    buffers: &'b mut Vec<(String, DynTensor)>,
    name: &str,
    input: &Input<'_>,
) -> ort::Result<&'b DynTensor> {
    let (shape, dtype) = match input {
        Input::F32(a) => (a.shape(), TensorElementType::Float32),
        Input::I32(a) => (a.shape(), TensorElementType::Int32),
        Input::I64(a) => (a.shape(), TensorElementType::Int64),
    };
    let fits = |t: &DynTensor| {
        *t.data_type() == dtype
            && t.shape().len() == shape.len()
            && t.shape()
                .iter()
                .zip(shape)
                .all(|(&a, &b)| usize::try_from(a) == Ok(b))
    };
    let slot = match buffers.iter().position(|(n, t)| n == name && fits(t)) {
        Some(slot) => slot,
        None => {
            buffers.retain(|(n, _)| n != name);
            let tensor = DynTensor::new(&Allocator::default(), dtype, shape.to_vec())?;
            buffers.push((name.to_string(), tensor));
            buffers.len() - 1
        }
    };
    let tensor = &mut buffers[slot].1;
    match input {
        Input::F32(a) => tensor.try_extract_array_mut::<f32>()?.assign(a),
        Input::I32(a) => tensor.try_extract_array_mut::<i32>()?.assign(a),
        Input::I64(a) => tensor.try_extract_array_mut::<i64>()?.assign(a),
    }
    Ok(&buffers[slot].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Runtime, RuntimeOptions};
    use crate::ErrorCode;

    fn unet() -> Graph {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundled = repo.join(".ort/lib/libonnxruntime.so.1.31.1");
        let runtime = Runtime::new(RuntimeOptions {
            ort_library: bundled.is_file().then_some(bundled),
            ..RuntimeOptions::default()
        })
        .unwrap_or_else(|e| panic!("ONNX Runtime must load (run `make ort`): {e}"));
        runtime
            .load_graph("unet", &repo.join("models/tiny-sd/unet/model.onnx"))
            .unwrap_or_else(|e| panic!("tiny-sd unet: {e}"))
    }

    #[test]
    fn fixing_an_input_on_cuda_is_a_clear_error_without_a_cuda_build() {
        let graph = unet();
        let mut binding = graph.binding("out_sample", &[2, 4, 8, 8]).expect("binding");
        // The graph runs on the CPU here; pretend its sessions were on CUDA device 0 to exercise the
        // device path (provider check, then the copy to the device).
        binding.placement = Placement::of(&ExecutionProvider::Cuda { device_id: 0 });
        let cond = ndarray::ArrayD::<f32>::zeros(vec![2, 77, 32]);
        let result = binding.fix("encoder_hidden_states", Input::F32(cond.view()));
        let has_cuda = crate::runtime::library::available_providers()
            .expect("providers")
            .iter()
            .any(|p| p == "CUDAExecutionProvider");
        match result {
            Err(err) if !has_cuda => {
                assert_eq!(err.code(), ErrorCode::EpUnavailable, "{err}");
                assert!(err.to_string().contains("CUDAExecutionProvider"), "{err}");
            }
            Err(err) => assert_eq!(err.code(), ErrorCode::Backend, "{err}"),
            Ok(()) => assert!(
                has_cuda,
                "a CPU-only ONNX Runtime cannot place tensors on CUDA"
            ),
        }
    }

    #[test]
    fn unknown_names_are_invalid_arguments() {
        let graph = unet();
        let err = graph.binding("nope", &[1]).expect_err("no such output");
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains("out_sample"), "{err}");
        let mut binding = graph.binding("out_sample", &[2, 4, 8, 8]).expect("binding");
        let x = ndarray::ArrayD::<f32>::zeros(vec![1]);
        let err = binding
            .fix("nope", Input::F32(x.view()))
            .expect_err("no such input");
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains("encoder_hidden_states"), "{err}");
    }
}
