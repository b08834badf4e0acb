//! Typed components over loaded graphs: each knows which of the known I/O variants its graph has.
use crate::error::{Error, Result};
use crate::runtime::{ElementType, Graph, TensorInfo};

/// The shape the UNet wants its timestep in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepShape {
    /// 0-d, as optimum exports SD 1.x/2.x.
    Scalar,
    /// A fixed `[1]`, shared by the whole batch.
    Single,
    /// `[batch]`, one value per batch item.
    Batch,
}

/// How the UNet wants its timestep: float32 or int64, in one of three shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestepKind {
    pub dtype: ElementType,
    pub shape: TimestepShape,
}

impl TimestepKind {
    fn of(info: &TensorInfo) -> Option<TimestepKind> {
        if !matches!(info.dtype, ElementType::F32 | ElementType::I64) {
            return None;
        }
        let shape = match info.shape.as_slice() {
            [] => TimestepShape::Scalar,
            [1] => TimestepShape::Single,
            [_] => TimestepShape::Batch,
            _ => return None,
        };
        Some(TimestepKind {
            dtype: info.dtype,
            shape,
        })
    }
}

fn mismatch(graph: &Graph, expected: &str) -> Error {
    Error::model(
        graph.path(),
        format!(
            "{} graph does not match any known variant (expected {expected}); it has inputs [{}] and outputs [{}]",
            graph.component(),
            graph.inputs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            graph.outputs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        ),
    )
}

fn is(info: Option<&TensorInfo>, dtypes: &[ElementType], ranks: &[usize]) -> bool {
    info.is_some_and(|i| dtypes.contains(&i.dtype) && ranks.contains(&i.rank()))
}

/// CLIP text encoder: `input_ids` (int32 or int64 [batch, seq]) -> `last_hidden_state`, plus the
/// per-layer `hidden_states.N` and the projected `text_embeds` when the export has them (SDXL).
#[derive(Debug)]
pub struct TextEncoder {
    pub graph: Graph,
    pub ids_dtype: ElementType,
    /// The output holding the penultimate layer (diffusers' `hidden_states[-2]`), if exported.
    pub penultimate: Option<String>,
    /// Whether the graph outputs the pooled, projected `text_embeds` (CLIPTextModelWithProjection).
    pub has_text_embeds: bool,
}

impl TextEncoder {
    pub fn new(graph: Graph) -> Result<TextEncoder> {
        let ids = graph.input("input_ids");
        let ok = graph.inputs().len() == 1
            && is(ids, &[ElementType::I32, ElementType::I64], &[2])
            && is(graph.output("last_hidden_state"), &[ElementType::F32], &[3]);
        if !ok {
            return Err(mismatch(
                &graph,
                "input_ids: int32|int64[batch, seq] -> last_hidden_state: float32[batch, seq, hidden]",
            ));
        }
        let ids_dtype = ids.map_or(ElementType::I64, |i| i.dtype);
        // hidden_states.0 is the embedding output and hidden_states.L the last layer, so [-2] is L-1.
        let last_layer = graph
            .outputs()
            .iter()
            .filter_map(|o| o.name.strip_prefix("hidden_states.")?.parse::<usize>().ok())
            .max();
        let penultimate = last_layer
            .filter(|&l| l > 0)
            .map(|l| format!("hidden_states.{}", l - 1));
        let has_text_embeds = is(graph.output("text_embeds"), &[ElementType::F32], &[2]);
        Ok(TextEncoder {
            graph,
            ids_dtype,
            penultimate,
            has_text_embeds,
        })
    }
}

/// The denoiser of SD 1.x/2.x: `sample`, `timestep`, `encoder_hidden_states` -> `out_sample`,
/// plus `timestep_cond` on LCM-distilled UNets.
#[derive(Debug)]
pub struct Unet {
    pub graph: Graph,
    pub timestep: TimestepKind,
    /// Width of the guidance-scale embedding an LCM-distilled UNet takes as `timestep_cond`.
    pub timestep_cond: Option<usize>,
    /// SDXL's added conditioning: the width of `time_ids` (6; 5 on refiners) when the UNet takes
    /// `text_embeds` and `time_ids`.
    pub time_ids: Option<usize>,
}

impl Unet {
    pub fn new(graph: Graph) -> Result<Unet> {
        const EXPECTED: &str =
            "sample: float32[b, c, h, w], timestep: float32|int64 [] | [1] | [b], \
                                encoder_hidden_states: float32[b, seq, dim] -> out_sample";
        let sample_ok = is(graph.input("sample"), &[ElementType::F32], &[4])
            && is(
                graph.input("encoder_hidden_states"),
                &[ElementType::F32],
                &[3],
            )
            && graph.output("out_sample").is_some();
        let timestep = graph.input("timestep").and_then(TimestepKind::of);
        let timestep_cond = match graph.input("timestep_cond") {
            None => None,
            Some(info) => match info.shape.as_slice() {
                [_, dim] if info.dtype == ElementType::F32 && *dim > 0 => Some(*dim as usize),
                _ => {
                    return Err(mismatch(
                        &graph,
                        "timestep_cond: float32[b, dim] with a fixed dim",
                    ))
                }
            },
        };
        let time_ids = match (graph.input("text_embeds"), graph.input("time_ids")) {
            (None, None) => None,
            (Some(embeds), Some(ids)) => match ids.shape.as_slice() {
                [_, width] if *width > 0 && embeds.rank() == 2 => Some(*width as usize),
                _ => {
                    return Err(mismatch(
                        &graph,
                        "text_embeds: float32[b, dim], time_ids: float32[b, 5 or 6]",
                    ))
                }
            },
            _ => {
                return Err(mismatch(
                    &graph,
                    "both text_embeds and time_ids, or neither",
                ))
            }
        };
        let known = [
            "sample",
            "timestep",
            "encoder_hidden_states",
            "timestep_cond",
            "text_embeds",
            "time_ids",
        ];
        let extra: Vec<&str> = graph
            .inputs()
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !known.contains(n))
            .collect();
        match timestep {
            Some(timestep) if sample_ok && extra.is_empty() => Ok(Unet {
                graph,
                timestep,
                timestep_cond,
                time_ids,
            }),
            Some(_) if sample_ok => Err(Error::Unsupported(format!(
                "{}: UNet inputs [{}] need a pipeline this version does not run yet",
                graph.path().display(),
                extra.join(", ")
            ))),
            _ => Err(mismatch(&graph, EXPECTED)),
        }
    }
}

/// VAE decoder: `latent_sample` -> `sample` (scaling is applied outside the graph).
#[derive(Debug)]
pub struct VaeDecoder {
    pub graph: Graph,
}

impl VaeDecoder {
    pub fn new(graph: Graph) -> Result<VaeDecoder> {
        let ok = graph.inputs().len() == 1
            && is(graph.input("latent_sample"), &[ElementType::F32], &[4])
            && is(graph.output("sample"), &[ElementType::F32], &[4]);
        if !ok {
            return Err(mismatch(
                &graph,
                "latent_sample: float32[b, c, h, w] -> sample: float32[b, 3, H, W]",
            ));
        }
        Ok(VaeDecoder { graph })
    }
}

/// VAE encoder: `sample` (pixels in [-1, 1]) -> `latent_parameters` (mean ++ logvar along channels;
/// the scaling factor is applied outside the graph, as optimum exports it).
#[derive(Debug)]
pub struct VaeEncoder {
    pub graph: Graph,
}

impl VaeEncoder {
    pub fn new(graph: Graph) -> Result<VaeEncoder> {
        let ok = graph.inputs().len() == 1
            && is(graph.input("sample"), &[ElementType::F32], &[4])
            && is(graph.output("latent_parameters"), &[ElementType::F32], &[4]);
        if !ok {
            return Err(mismatch(
                &graph,
                "sample: float32[b, 3, H, W] -> latent_parameters: float32[b, 2c, h, w]",
            ));
        }
        Ok(VaeEncoder { graph })
    }
}

/// Which transformer pipeline a `transformer/` graph belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformerKind {
    /// SD3 MMDiT: `hidden_states` [b, c, h, w], `timestep` [b] in 0..1000.
    Sd3,
    /// FLUX: packed `hidden_states` [b, hw/4, 4c], `timestep` [b] in 0..1, `img_ids`, `txt_ids`.
    Flux,
}

/// The SD3 / FLUX denoiser: `hidden_states`, `encoder_hidden_states`, `pooled_projections`,
/// `timestep` (+ FLUX's `img_ids`, `txt_ids` and optional `guidance`) -> `out_hidden_states`.
#[derive(Debug)]
pub struct Transformer {
    pub graph: Graph,
    pub kind: TransformerKind,
    /// Element type of FLUX's `img_ids`/`txt_ids` (exports differ: float32 or int64).
    pub ids_dtype: ElementType,
    /// FLUX-dev style guidance distillation: the graph takes the guidance scale as `guidance`.
    pub guidance: bool,
}

impl Transformer {
    pub fn new(graph: Graph, kind: TransformerKind) -> Result<Transformer> {
        let f32_rank =
            |name: &str, rank: usize| is(graph.input(name), &[ElementType::F32], &[rank]);
        let mut ok = f32_rank("encoder_hidden_states", 3)
            && f32_rank("pooled_projections", 2)
            && f32_rank("timestep", 1)
            && graph.output("out_hidden_states").is_some();
        let mut known = vec![
            "hidden_states",
            "encoder_hidden_states",
            "pooled_projections",
            "timestep",
        ];
        let ids_dtype = graph.input("img_ids").map_or(ElementType::F32, |i| i.dtype);
        let expected = match kind {
            TransformerKind::Sd3 => {
                ok &= f32_rank("hidden_states", 4);
                "hidden_states: float32[b, c, h, w], encoder_hidden_states, pooled_projections, \
                 timestep: float32[b] -> out_hidden_states"
            }
            TransformerKind::Flux => {
                let ids = [ElementType::F32, ElementType::I64];
                ok &= f32_rank("hidden_states", 3)
                    && is(graph.input("img_ids"), &ids, &[2])
                    && is(graph.input("txt_ids"), &[ids_dtype], &[2]);
                known.extend(["img_ids", "txt_ids", "guidance"]);
                "hidden_states: float32[b, seq, 4c], encoder_hidden_states, pooled_projections, \
                 timestep: float32[b], img_ids, txt_ids: [seq, 3] (+ guidance: float32[b]) \
                 -> out_hidden_states"
            }
        };
        let guidance = f32_rank("guidance", 1);
        let unknown = graph
            .inputs()
            .iter()
            .any(|i| !known.contains(&i.name.as_str()));
        if !ok || unknown {
            return Err(mismatch(&graph, expected));
        }
        Ok(Transformer {
            graph,
            kind,
            ids_dtype,
            guidance,
        })
    }
}

/// The network that predicts noise (or velocity) at every step.
#[derive(Debug)]
pub enum Denoiser {
    Unet(Unet),
    Transformer(Transformer),
}

impl Denoiser {
    pub fn graph(&self) -> &Graph {
        match self {
            Denoiser::Unet(u) => &u.graph,
            Denoiser::Transformer(t) => &t.graph,
        }
    }

    /// The UNet, for the families that have one.
    pub fn unet(&self) -> Option<&Unet> {
        match self {
            Denoiser::Unet(u) => Some(u),
            Denoiser::Transformer(_) => None,
        }
    }
}
