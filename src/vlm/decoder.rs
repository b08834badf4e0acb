//! An autoregressive decoder graph with its key/value cache, bound by name.
//!
//! Two cache disciplines exist in exported decoders:
//! - growing (optimum, transformers.js, mobius): `present.N.*` = concat(`past_key_values.N.*`, new);
//!   each step hands ONNX Runtime's own present values back as the next past, with no copy on our
//!   side (the concat inside the graph is the graph's own work);
//! - shared buffer (onnxruntime-genai builder graphs with GroupQueryAttention, `genai_config.json`
//!   `past_present_share_buffer`): past and present are one buffer of the request's whole length,
//!   allocated once per request and bound as both input and output, so the cache is written in place.
use std::borrow::Cow;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, Axis};
use ort::memory::Allocator;
use ort::session::{IoBinding, SessionInputValue};
use ort::value::{DynValue, Tensor};

use crate::error::{Error, Result};
use crate::runtime::Graph;

/// One cache input and the output that updates it.
#[derive(Debug, Clone)]
struct CacheSlot {
    past: String,
    present: String,
}

/// Names a config gives for a decoder's inputs and outputs.
#[derive(Debug, Clone)]
pub(crate) struct DecoderNames {
    pub logits: String,
    pub attention_mask: String,
    /// (past input, present output) pairs, when a config lists them.
    pub cache: Option<Vec<(String, String)>>,
}

impl Default for DecoderNames {
    fn default() -> DecoderNames {
        DecoderNames {
            logits: "logits".into(),
            attention_mask: "attention_mask".into(),
            cache: None,
        }
    }
}

/// A decoder graph and the names of its cache and bookkeeping inputs.
#[derive(Debug)]
pub(crate) struct Decoder {
    graph: Graph,
    logits: String,
    slots: Vec<CacheSlot>,
    /// [heads, head_dim] of every cache tensor.
    kv_dims: [usize; 2],
    shared_buffer: bool,
    attention_mask: Option<String>,
    /// optimum's merged decoders: false on the first run (no past), true afterwards.
    use_cache_branch: Option<String>,
    /// Some exports compute logits for the last `num_logits_to_keep` positions only.
    num_logits_to_keep: Option<String>,
}

/// The cache of one request.
pub(crate) struct CacheState {
    values: Vec<DynValue>,
    /// Shared-buffer decoders: the IO binding with the cache bound, and the pool id of the session
    /// it belongs to.
    bound: Option<((u64, usize), IoBinding)>,
    /// Tokens the cache holds.
    len: usize,
    /// The most tokens it can hold (the shared buffer's length, or the context length).
    capacity: usize,
}

impl CacheState {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Decoder {
    /// Binds the decoder by name. `names` gives the cache pairs and the logits/mask names where a
    /// config lists them (genai_config.json); otherwise every `past_key_values.*` input is paired
    /// with the output `present.*` of the same suffix. `kv_dims` comes from the model config when
    /// the graph's shapes are symbolic.
    pub fn new(
        graph: Graph,
        names: &DecoderNames,
        kv_dims: Option<[usize; 2]>,
        shared_buffer: bool,
    ) -> Result<Decoder> {
        let fail = |what: String| {
            Error::model(
                graph.path(),
                format!("{what}; the decoder graph has {}", graph.signature()),
            )
        };
        let logits = graph
            .output(&names.logits)
            .map(|o| o.name.clone())
            .ok_or_else(|| fail(format!("no `{}` output", names.logits)))?;
        let pairs = match &names.cache {
            Some(pairs) => pairs.clone(),
            None => graph
                .inputs()
                .iter()
                .filter_map(|i| {
                    let suffix = i.name.strip_prefix("past_key_values.")?;
                    Some((i.name.clone(), format!("present.{suffix}")))
                })
                .collect(),
        };
        let mut slots = Vec::with_capacity(pairs.len());
        for (past, present) in pairs {
            if graph.input(&past).is_none() {
                return Err(fail(format!("no cache input `{past}`")));
            }
            if graph.output(&present).is_none() {
                return Err(fail(format!(
                    "cache input `{past}` has no `{present}` output"
                )));
            }
            slots.push(CacheSlot { past, present });
        }
        if slots.is_empty() {
            return Err(fail(
                "no key/value cache inputs (`past_key_values.N.key/value`): export the decoder \
                 with past (optimum `--task ...-with-past`, a merged decoder)"
                    .into(),
            ));
        }
        let declared = graph.input(&slots[0].past).map(|i| i.shape.clone());
        let kv_dims = match (declared.as_deref(), kv_dims) {
            (Some([_, h, _, d]), _) if *h > 0 && *d > 0 => [*h as usize, *d as usize],
            (Some([_, _, _, _]), Some(dims)) => dims,
            _ => return Err(fail(
                "cache inputs must be [batch, heads, length, head_dim] with heads and head_dim \
                     known from the graph or the config"
                    .into(),
            )),
        };
        let name_of = |n: &str| graph.input(n).map(|i| i.name.clone());
        Ok(Decoder {
            logits,
            slots,
            kv_dims,
            shared_buffer,
            attention_mask: name_of(&names.attention_mask),
            use_cache_branch: name_of("use_cache_branch"),
            num_logits_to_keep: name_of("num_logits_to_keep"),
            graph,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// An empty cache for a request that will hold at most `capacity` tokens: zero-length tensors
    /// for a growing cache, the whole buffer (zeroed) for a shared one.
    pub fn start(&self, capacity: usize) -> Result<CacheState> {
        let [heads, head_dim] = self.kv_dims;
        let fail = |e: ort::Error| self.fail(format!("allocating the cache: {e}"));
        let values = self
            .slots
            .iter()
            .map(|_| {
                if self.shared_buffer {
                    // Only allocator-made tensors can be bound as outputs.
                    let shape = [1, heads, capacity, head_dim];
                    let mut buffer =
                        Tensor::<f32>::new(&Allocator::default(), shape).map_err(fail)?;
                    buffer
                        .try_extract_array_mut::<f32>()
                        .map_err(fail)?
                        .fill(0.0);
                    Ok(buffer.into_dyn())
                } else {
                    let empty = ndarray::Array4::<f32>::zeros((1, heads, 0, head_dim));
                    Tensor::from_array(empty)
                        .map(Tensor::into_dyn)
                        .map_err(fail)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CacheState {
            values,
            bound: None,
            len: 0,
            capacity,
        })
    }

    /// Runs the decoder over `new_tokens` positions after what `cache` holds, with the caller's
    /// other inputs (`inputs_embeds` or `input_ids`, positions, encoder states), and returns the
    /// logits of the last position plus the time spent in ONNX Runtime.
    pub fn run(
        &self,
        cache: &mut CacheState,
        inputs: Vec<(&str, SessionInputValue<'_>)>,
        new_tokens: usize,
    ) -> Result<(Vec<f32>, Duration)> {
        let total = cache.len + new_tokens;
        if total > cache.capacity {
            return Err(Error::InvalidArg(format!(
                "the sequence would have {total} tokens; this request allows {}",
                cache.capacity
            )));
        }
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = inputs
            .into_iter()
            .map(|(n, v)| (Cow::Borrowed(n), v))
            .collect();
        if let Some(name) = &self.attention_mask {
            let mask = Array2::<i64>::ones((1, total));
            feeds.push((
                name.as_str().into(),
                value(self.graph.component(), mask)?.into(),
            ));
        }
        if let Some(name) = &self.use_cache_branch {
            let branch = Array1::from_elem(1, cache.len > 0);
            feeds.push((
                name.as_str().into(),
                value(self.graph.component(), branch)?.into(),
            ));
        }
        if let Some(name) = &self.num_logits_to_keep {
            let keep = ndarray::arr0(1_i64);
            feeds.push((
                name.as_str().into(),
                value(self.graph.component(), keep)?.into(),
            ));
        }
        let (logits, elapsed) = if self.shared_buffer {
            self.run_in_place(cache, feeds)?
        } else {
            self.run_growing(cache, feeds)?
        };
        cache.len = total;
        Ok((logits, elapsed))
    }

    fn run_growing(
        &self,
        cache: &mut CacheState,
        feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
    ) -> Result<(Vec<f32>, Duration)> {
        let (logits, presents, elapsed) = {
            let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
            values.extend(feeds);
            for (slot, value) in self.slots.iter().zip(&cache.values) {
                values.push((Cow::Borrowed(slot.past.as_str()), value.into()));
            }
            let live = self.graph.live();
            let mut session = self.graph.session(&live)?;
            let started = Instant::now();
            let mut outputs = session.run(values).map_err(|e| self.fail(e))?;
            let elapsed = started.elapsed();
            let logits = self.last_logits(outputs.get(&self.logits))?;
            let mut presents = Vec::with_capacity(self.slots.len());
            for slot in &self.slots {
                presents.push(outputs.remove(&slot.present).ok_or_else(|| {
                    self.fail(format!("the graph produced no `{}`", slot.present))
                })?);
            }
            (logits, presents, elapsed)
        };
        cache.values = presents;
        Ok((logits, elapsed))
    }

    fn run_in_place(
        &self,
        cache: &mut CacheState,
        feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
    ) -> Result<(Vec<f32>, Duration)> {
        let fail = |e: ort::Error| self.fail(format!("binding: {e}"));
        let live = self.graph.live();
        let mut session = self.graph.session(&live)?;
        let id = (live.generation, session.id());
        // The cache buffers are bound once per session a request runs on (a binding belongs to its
        // session); each step rebinds only its own inputs and the logits output.
        if cache
            .bound
            .as_ref()
            .is_none_or(|(bound_to, _)| *bound_to != id)
        {
            let mut binding = session.create_binding().map_err(fail)?;
            for (slot, value) in self.slots.iter().zip(cache.values.iter_mut()) {
                binding
                    .bind_input(slot.past.as_str(), value)
                    .map_err(fail)?;
                binding
                    .bind_output(slot.present.as_str(), value)
                    .map_err(fail)?;
            }
            cache.bound = Some((id, binding));
        }
        let Some((_, binding)) = cache.bound.as_mut() else {
            return Err(self.fail("binding: not made"));
        };
        for (name, value) in &feeds {
            binding.bind_input(name.as_ref(), &**value).map_err(fail)?;
        }
        // Bound afresh every step: a device-bound output keeps the last run's buffer, whose shape
        // (prompt length, then one position) would not fit.
        binding
            .bind_output_to_device(self.logits.as_str(), session.allocator().memory_info())
            .map_err(fail)?;
        let started = Instant::now();
        let outputs = session.run_binding(binding).map_err(|e| self.fail(e))?;
        let elapsed = started.elapsed();
        let logits = self.last_logits(outputs.get(&self.logits))?;
        Ok((logits, elapsed))
    }

    /// The logits row of the last position, from [batch, positions, vocab].
    fn last_logits(&self, value: Option<&DynValue>) -> Result<Vec<f32>> {
        let value = value.ok_or_else(|| self.fail(format!("no `{}` output", self.logits)))?;
        let array = value
            .try_extract_array::<f32>()
            .map_err(|e| self.fail(format!("`{}`: {e}", self.logits)))?;
        match *array.shape() {
            [1, n, _] if n > 0 => {
                let row = array.index_axis(Axis(1), n - 1);
                // The last row of a [1, n, vocab] tensor is contiguous: one memcpy.
                Ok(match row.as_slice() {
                    Some(slice) => slice.to_vec(),
                    None => row.iter().copied().collect(),
                })
            }
            ref shape => Err(self.fail(format!(
                "`{}` has shape {shape:?}, expected [1, positions, vocab]",
                self.logits
            ))),
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> Error {
        Error::backend(self.graph.component(), message)
    }
}

/// A host tensor as an ONNX Runtime value (for the callers' own inputs).
pub(crate) fn value<T, D>(component: &str, array: ndarray::Array<T, D>) -> Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
    D: ndarray::Dimension + 'static,
{
    Tensor::from_array(array)
        .map(Tensor::into_dyn)
        .map_err(|e| Error::backend(component, e))
}
