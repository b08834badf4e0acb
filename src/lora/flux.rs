//! FLUX's original (BFL) module names -> diffusers' `FluxTransformer2DModel` modules, as
//! diffusers' `_convert_kohya_flux_lora_to_diffusers` maps them. BFL fuses some projections that
//! diffusers keeps apart (`img_attn.qkv` = `attn.to_q/to_k/to_v`, `linear1` = q, k, v and
//! `proj_mlp`); a fused layer's output rows are split by the diffusers weights' row counts.
use std::collections::BTreeSet;

/// How a BFL layer's output rows map onto diffusers modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fuse {
    /// One module, rows as they are.
    Same,
    /// Consecutive row blocks, one per module, sized by each module's output rows.
    Split,
    /// One module whose two row halves are swapped: BFL's final modulation emits (shift, scale),
    /// diffusers' `norm_out` (scale, shift).
    SwapHalves,
}

/// Every BFL name with the diffusers modules it covers, for the block indices the model has.
pub(crate) fn aliases<'a>(
    modules: impl Iterator<Item = &'a str>,
) -> Vec<(String, Vec<String>, Fuse)> {
    let mut double = BTreeSet::new();
    let mut single = BTreeSet::new();
    for module in modules {
        let mut segs = module.split('.');
        let (Some(head), Some(index)) = (
            segs.next(),
            segs.next().and_then(|s| s.parse::<usize>().ok()),
        ) else {
            continue;
        };
        match head {
            "transformer_blocks" => double.insert(index),
            "single_transformer_blocks" => single.insert(index),
            _ => false,
        };
    }
    let mut out = Vec::new();
    let mut add = |bfl: String, modules: &[String], fuse| out.push((bfl, modules.to_vec(), fuse));
    let top: [(&str, &str, Fuse); 10] = [
        ("img_in", "x_embedder", Fuse::Same),
        ("txt_in", "context_embedder", Fuse::Same),
        (
            "time_in.in_layer",
            "time_text_embed.timestep_embedder.linear_1",
            Fuse::Same,
        ),
        (
            "time_in.out_layer",
            "time_text_embed.timestep_embedder.linear_2",
            Fuse::Same,
        ),
        (
            "vector_in.in_layer",
            "time_text_embed.text_embedder.linear_1",
            Fuse::Same,
        ),
        (
            "vector_in.out_layer",
            "time_text_embed.text_embedder.linear_2",
            Fuse::Same,
        ),
        (
            "guidance_in.in_layer",
            "time_text_embed.guidance_embedder.linear_1",
            Fuse::Same,
        ),
        (
            "guidance_in.out_layer",
            "time_text_embed.guidance_embedder.linear_2",
            Fuse::Same,
        ),
        ("final_layer.linear", "proj_out", Fuse::Same),
        (
            "final_layer.adaLN_modulation.1",
            "norm_out.linear",
            Fuse::SwapHalves,
        ),
    ];
    for (bfl, module, fuse) in top {
        add(bfl.into(), &[module.into()], fuse);
    }
    for i in double {
        let d = |m: &str| format!("transformer_blocks.{i}.{m}");
        let b = |m: &str| format!("double_blocks.{i}.{m}");
        add(
            b("img_attn.qkv"),
            &[d("attn.to_q"), d("attn.to_k"), d("attn.to_v")],
            Fuse::Split,
        );
        add(
            b("txt_attn.qkv"),
            &[
                d("attn.add_q_proj"),
                d("attn.add_k_proj"),
                d("attn.add_v_proj"),
            ],
            Fuse::Split,
        );
        for (bfl, module) in [
            ("img_attn.proj", "attn.to_out.0"),
            ("txt_attn.proj", "attn.to_add_out"),
            ("img_mlp.0", "ff.net.0.proj"),
            ("img_mlp.2", "ff.net.2"),
            ("txt_mlp.0", "ff_context.net.0.proj"),
            ("txt_mlp.2", "ff_context.net.2"),
            ("img_mod.lin", "norm1.linear"),
            ("txt_mod.lin", "norm1_context.linear"),
        ] {
            add(b(bfl), &[d(module)], Fuse::Same);
        }
    }
    for i in single {
        let d = |m: &str| format!("single_transformer_blocks.{i}.{m}");
        let b = |m: &str| format!("single_blocks.{i}.{m}");
        add(
            b("linear1"),
            &[
                d("attn.to_q"),
                d("attn.to_k"),
                d("attn.to_v"),
                d("proj_mlp"),
            ],
            Fuse::Split,
        );
        add(b("linear2"), &[d("proj_out")], Fuse::Same);
        add(b("modulation.lin"), &[d("norm.linear")], Fuse::Same);
    }
    out
}
