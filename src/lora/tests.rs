//! End-to-end checks of `parse`/`load` on small files built in memory.
use std::path::Path;

use super::safetensors::tests::build;
use super::*;
use crate::ErrorCode;

type T = (String, Vec<usize>, Vec<f32>);

fn t(name: &str, shape: &[usize], data: &[f32]) -> T {
    (name.to_string(), shape.to_vec(), data.to_vec())
}

/// Values 1, 2, 3, ... scaled, so products are easy to check and differ per tensor.
fn seq(shape: &[usize], step: f32) -> Vec<f32> {
    (0..shape.iter().product::<usize>())
        .map(|i| (i as f32 + 1.0) * step)
        .collect()
}

/// A LoRA layer: down [r, in...] and up [out, r(,1,1)] with recognisable values.
fn lora(name: &str, down_suffix: &str, up_suffix: &str, down: &[usize], up: &[usize]) -> Vec<T> {
    vec![
        t(&format!("{name}{down_suffix}"), down, &seq(down, 0.5)),
        t(&format!("{name}{up_suffix}"), up, &seq(up, -0.25)),
    ]
}

fn sd_targets() -> Targets {
    let mut targets = Targets::default();
    let attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
    targets.insert("unet", &format!("{attn}.to_q"), vec![4, 4]);
    targets.insert("unet", &format!("{attn}.to_out.0"), vec![4, 4]);
    targets.insert(
        "unet",
        "down_blocks.0.attentions.0.proj_in",
        vec![4, 4, 1, 1],
    );
    targets.insert("unet", "down_blocks.0.resnets.0.conv1", vec![4, 2, 3, 3]);
    targets.insert("unet", "up_blocks.0.resnets.1.conv2", vec![4, 4, 3, 3]);
    let te = "text_model.encoder.layers.0";
    targets.insert(
        "text_encoder",
        &format!("{te}.self_attn.q_proj"),
        vec![6, 6],
    );
    targets.insert(
        "text_encoder",
        &format!("{te}.self_attn.out_proj"),
        vec![6, 6],
    );
    targets.insert("text_encoder", &format!("{te}.mlp.fc1"), vec![12, 6]);
    targets
}

const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

fn parse_ok(tensors: &[T], metadata: &[(&str, &str)], targets: &Targets) -> Adapter {
    parse(&build(tensors, metadata), targets, LoadOptions::default()).unwrap()
}

fn parse_err(tensors: &[T], targets: &Targets) -> Error {
    parse(&build(tensors, &[]), targets, LoadOptions::default()).unwrap_err()
}

fn modules(adapter: &Adapter) -> Vec<(String, String)> {
    let mut out: Vec<_> = adapter
        .layers
        .iter()
        .map(|l| (l.component.clone(), l.module.clone()))
        .collect();
    out.sort();
    out
}

fn pair(component: &str, module: &str) -> (String, String) {
    (component.to_string(), module.to_string())
}

fn layer<'a>(adapter: &'a Adapter, module: &str) -> &'a Layer {
    adapter.layers.iter().find(|l| l.module == module).unwrap()
}

#[test]
fn every_sd_naming_maps_to_the_same_modules() {
    let targets = sd_targets();
    let te = "text_model.encoder.layers.0";
    let want = vec![
        pair("text_encoder", &format!("{te}.mlp.fc1")),
        pair("text_encoder", &format!("{te}.self_attn.out_proj")),
        pair("text_encoder", &format!("{te}.self_attn.q_proj")),
        pair(
            "unet",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
        ),
        pair("unet", Q),
    ];
    let attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
    let files: Vec<(Format, Vec<T>)> = vec![
        (
            Format::Diffusers,
            [
                lora(
                    &format!("unet.{Q}"),
                    ".lora_A.weight",
                    ".lora_B.weight",
                    &[2, 4],
                    &[4, 2],
                ),
                lora(
                    &format!("unet.{attn}.to_out.0"),
                    ".lora_A.default.weight",
                    ".lora_B.default.weight",
                    &[2, 4],
                    &[4, 2],
                ),
                lora(
                    &format!("text_encoder.{te}.self_attn.q_proj"),
                    ".lora_A.weight",
                    ".lora_B.weight",
                    &[2, 6],
                    &[6, 2],
                ),
                lora(
                    &format!("text_encoder.{te}.self_attn.out_proj"),
                    ".lora_A.weight",
                    ".lora_B.weight",
                    &[2, 6],
                    &[6, 2],
                ),
                lora(
                    &format!("text_encoder.{te}.mlp.fc1"),
                    ".lora_A.weight",
                    ".lora_B.weight",
                    &[2, 6],
                    &[12, 2],
                ),
            ]
            .concat(),
        ),
        (
            Format::DiffusersLegacy,
            [
                lora(
                    &format!("unet.{attn}.processor.to_q_lora"),
                    ".down.weight",
                    ".up.weight",
                    &[2, 4],
                    &[4, 2],
                ),
                lora(
                    &format!("unet.{attn}.processor.to_out_lora"),
                    ".down.weight",
                    ".up.weight",
                    &[2, 4],
                    &[4, 2],
                ),
                lora(
                    &format!("text_encoder.{te}.self_attn.to_q_lora"),
                    ".down.weight",
                    ".up.weight",
                    &[2, 6],
                    &[6, 2],
                ),
                lora(
                    &format!("text_encoder.{te}.self_attn.to_out_lora"),
                    ".down.weight",
                    ".up.weight",
                    &[2, 6],
                    &[6, 2],
                ),
                lora(
                    &format!("text_encoder.{te}.mlp.fc1.lora_linear_layer"),
                    ".down.weight",
                    ".up.weight",
                    &[2, 6],
                    &[12, 2],
                ),
            ]
            .concat(),
        ),
        (
            Format::Kohya,
            [
                lora(
                    &format!("lora_unet_{}", Q.replace('.', "_")),
                    ".lora_down.weight",
                    ".lora_up.weight",
                    &[2, 4],
                    &[4, 2],
                ),
                lora(
                    &format!("lora_unet_{attn}_to_out_0").replace('.', "_"),
                    ".lora_down.weight",
                    ".lora_up.weight",
                    &[2, 4],
                    &[4, 2],
                ),
                lora(
                    &format!("lora_te_{te}_self_attn_q_proj").replace('.', "_"),
                    ".lora_down.weight",
                    ".lora_up.weight",
                    &[2, 6],
                    &[6, 2],
                ),
                lora(
                    &format!("lora_te_{te}_self_attn_out_proj").replace('.', "_"),
                    ".lora_down.weight",
                    ".lora_up.weight",
                    &[2, 6],
                    &[6, 2],
                ),
                lora(
                    &format!("lora_te_{te}_mlp_fc1").replace('.', "_"),
                    ".lora_down.weight",
                    ".lora_up.weight",
                    &[2, 6],
                    &[12, 2],
                ),
            ]
            .concat(),
        ),
    ];
    for (format, tensors) in files {
        let adapter = parse_ok(&tensors, &[], &targets);
        assert_eq!(adapter.format, format);
        assert_eq!(modules(&adapter), want, "{format}");
        assert!(adapter.unmatched.is_empty());
    }

    // Prefixless PEFT keys and the older diffusers `.lora.down` name the denoiser.
    for (name, down, up, format) in [
        (
            format!("base_model.model.{Q}"),
            ".lora_A.weight",
            ".lora_B.weight",
            Format::Peft,
        ),
        (
            Q.to_string(),
            ".lora_A.weight",
            ".lora_B.weight",
            Format::Peft,
        ),
        (
            format!("unet.{Q}"),
            ".lora.down.weight",
            ".lora.up.weight",
            Format::DiffusersLegacy,
        ),
    ] {
        let adapter = parse_ok(&lora(&name, down, up, &[2, 4], &[4, 2]), &[], &targets);
        assert_eq!(
            (adapter.format, modules(&adapter)),
            (format, vec![pair("unet", Q)]),
            "{name}"
        );
    }
}

#[test]
fn linear_delta_is_up_times_down_times_alpha_over_rank() {
    let targets = sd_targets();
    let name = format!("lora_unet_{}", Q.replace('.', "_"));
    // up [4, 1] = [1, 2, 3, 4], down [1, 4] = [1, 0, -1, 2], alpha 0.5 over rank 1.
    let tensors = vec![
        t(
            &format!("{name}.lora_up.weight"),
            &[4, 1],
            &[1., 2., 3., 4.],
        ),
        t(
            &format!("{name}.lora_down.weight"),
            &[1, 4],
            &[1., 0., -1., 2.],
        ),
        t(&format!("{name}.alpha"), &[], &[0.5]),
    ];
    let adapter = parse_ok(&tensors, &[], &targets);
    let l = &adapter.layers[0];
    assert_eq!(
        (l.shape.clone(), l.algorithm()),
        (vec![4, 4], Algorithm::Lora)
    );
    #[rustfmt::skip]
    let want = [0.5, 0., -0.5, 1., 1., 0., -1., 2., 1.5, 0., -1.5, 3., 2., 0., -2., 4.];
    assert_eq!(l.delta(), want);

    // Without an alpha the scale is 1 (alpha = rank); alpha 0 reads as absent, like kohya.
    for alpha in [None, Some(0.0)] {
        let mut tensors = tensors[..2].to_vec();
        if let Some(a) = alpha {
            tensors.push(t(&format!("{name}.alpha"), &[1], &[a]));
        }
        let delta = parse_ok(&tensors, &[], &targets).layers[0].delta();
        assert_eq!(delta, want.map(|v| v * 2.0), "{alpha:?}");
    }
}

#[test]
fn diffusers_alpha_comes_from_the_adapter_metadata() {
    let targets = sd_targets();
    let tensors = lora(
        &format!("unet.{Q}"),
        ".lora_A.weight",
        ".lora_B.weight",
        &[4, 4],
        &[4, 4],
    );
    let plain = parse_ok(&tensors, &[], &targets).layers[0].delta();
    let scaled = |meta: &str| {
        let adapter = parse_ok(&tensors, &[("lora_adapter_metadata", meta)], &targets);
        let delta = adapter.layers[0].delta();
        delta[0] / plain[0]
    };
    assert_eq!(scaled(r#"{"unet.r": 4, "unet.lora_alpha": 8}"#), 2.0);
    assert_eq!(
        scaled(r#"{"unet.r": 4, "unet.lora_alpha": 8, "unet.use_rslora": true}"#),
        4.0
    );
    assert_eq!(
        scaled(r#"{"unet.lora_alpha": 8, "unet.alpha_pattern": {"attn1.to_q": 1}}"#),
        0.25
    );
    assert_eq!(
        scaled(r#"{"text_encoder.lora_alpha": 8}"#),
        1.0,
        "another component's config"
    );
}

#[test]
fn conv_locon_and_lora_mid() {
    let mut targets = Targets::default();
    targets.insert("unet", "down_blocks.0.resnets.0.conv1", vec![2, 2, 1, 2]);
    let name = "lora_unet_down_blocks_0_resnets_0_conv1";
    // LoCon: down [1, 2, 1, 2] = [1, 2, 3, 4], up [2, 1, 1, 1] = [1, -1].
    let tensors = vec![
        t(
            &format!("{name}.lora_down.weight"),
            &[1, 2, 1, 2],
            &[1., 2., 3., 4.],
        ),
        t(&format!("{name}.lora_up.weight"), &[2, 1, 1, 1], &[1., -1.]),
    ];
    let adapter = parse_ok(&tensors, &[], &targets);
    assert_eq!(
        adapter.layers[0].delta(),
        vec![1., 2., 3., 4., -1., -2., -3., -4.]
    );

    // Tucker: down [1, 2, 1, 1] = [1, 2], mid [1, 1, 1, 2] = [3, 5], up [2, 1, 1, 1] = [1, -1],
    // rank 1 with alpha 2: delta[o, i, 0, k] = 2 * up[o] * down[i] * mid[k].
    let tensors = vec![
        t(
            &format!("{name}.lora_down.weight"),
            &[1, 2, 1, 1],
            &[1., 2.],
        ),
        t(&format!("{name}.lora_mid.weight"), &[1, 1, 1, 2], &[3., 5.]),
        t(&format!("{name}.lora_up.weight"), &[2, 1, 1, 1], &[1., -1.]),
        t(&format!("{name}.alpha"), &[], &[2.]),
    ];
    let adapter = parse_ok(&tensors, &[], &targets);
    assert_eq!(
        adapter.layers[0].delta(),
        vec![6., 10., 12., 20., -6., -10., -12., -20.]
    );
}

#[test]
fn lora_mid_with_rank_two_matches_the_einsum() {
    let mut targets = Targets::default();
    targets.insert("unet", "conv_in", vec![3, 2, 2, 1]);
    let (down, mid, up) = (
        seq(&[2, 2], 1.0),
        seq(&[2, 2, 2, 1], 0.5),
        seq(&[3, 2], -1.0),
    );
    let tensors = vec![
        t("lora_unet_conv_in.lora_down.weight", &[2, 2, 1, 1], &down),
        t("lora_unet_conv_in.lora_mid.weight", &[2, 2, 2, 1], &mid),
        t("lora_unet_conv_in.lora_up.weight", &[3, 2, 1, 1], &up),
    ];
    let delta = parse_ok(&tensors, &[], &targets).layers[0].delta();
    for o in 0..3 {
        for i in 0..2 {
            for k in 0..2 {
                let mut want = 0.0;
                for a in 0..2 {
                    for b in 0..2 {
                        want += up[o * 2 + a] * mid[(a * 2 + b) * 2 + k] * down[b * 2 + i];
                    }
                }
                assert_eq!(delta[(o * 2 + i) * 2 + k], want);
            }
        }
    }
}

#[test]
fn loha_is_a_hadamard_product_scaled_by_alpha_over_rank() {
    let mut targets = Targets::default();
    targets.insert("unet", "conv_in", vec![2, 2]);
    // w1 = [1, 2]^T [1, 1] = [[1, 1], [2, 2]]; w2 = [1, 1]^T [3, 4] = [[3, 4], [3, 4]].
    let tensors = vec![
        t("lora_unet_conv_in.hada_w1_a", &[2, 1], &[1., 2.]),
        t("lora_unet_conv_in.hada_w1_b", &[1, 2], &[1., 1.]),
        t("lora_unet_conv_in.hada_w2_a", &[2, 1], &[1., 1.]),
        t("lora_unet_conv_in.hada_w2_b", &[1, 2], &[3., 4.]),
        t("lora_unet_conv_in.alpha", &[], &[0.5]),
    ];
    let adapter = parse_ok(&tensors, &[], &targets);
    assert_eq!(adapter.layers[0].algorithm(), Algorithm::LoHa);
    assert_eq!(adapter.layers[0].delta(), vec![1.5, 2., 3., 4.]);

    // Tucker LoHa, rank 1: w*_a [1, out], t* [1, 1, 1, 1], w*_b [1, in].
    let mut targets = Targets::default();
    targets.insert("unet", "conv_in", vec![2, 2, 1, 1]);
    let tensors = vec![
        t("lora_unet_conv_in.hada_w1_a", &[1, 2], &[1., 2.]),
        t("lora_unet_conv_in.hada_t1", &[1, 1, 1, 1], &[2.]),
        t("lora_unet_conv_in.hada_w1_b", &[1, 2], &[1., 1.]),
        t("lora_unet_conv_in.hada_w2_a", &[1, 2], &[1., 1.]),
        t("lora_unet_conv_in.hada_t2", &[1, 1, 1, 1], &[1.]),
        t("lora_unet_conv_in.hada_w2_b", &[1, 2], &[3., 4.]),
    ];
    assert_eq!(
        parse_ok(&tensors, &[], &targets).layers[0].delta(),
        vec![6., 8., 12., 16.]
    );
}

#[test]
fn lokr_is_a_kronecker_product() {
    let mut targets = Targets::default();
    targets.insert("unet", "conv_in", vec![4, 2]);
    // kron([[1], [2]], [[1, 2], [3, 4]]): both factors full, so alpha is ignored (scale 1).
    let full = vec![
        t("lora_unet_conv_in.lokr_w1", &[2, 1], &[1., 2.]),
        t("lora_unet_conv_in.lokr_w2", &[2, 2], &[1., 2., 3., 4.]),
        t("lora_unet_conv_in.alpha", &[], &[7.]),
    ];
    let want = vec![1., 2., 3., 4., 2., 4., 6., 8.];
    let adapter = parse_ok(&full, &[], &targets);
    assert_eq!(adapter.layers[0].algorithm(), Algorithm::LoKr);
    assert_eq!(adapter.layers[0].delta(), want);

    // w2 as a rank-1 product [[1], [3]] @ [[1, 2]] = [[1, 2], [3, 6]], alpha 2 over rank 1.
    let low = vec![
        full[0].clone(),
        t("lora_unet_conv_in.lokr_w2_a", &[2, 1], &[1., 3.]),
        t("lora_unet_conv_in.lokr_w2_b", &[1, 2], &[1., 2.]),
        t("lora_unet_conv_in.alpha", &[], &[2.]),
    ];
    let delta = parse_ok(&low, &[], &targets).layers[0].delta();
    assert_eq!(delta, vec![2., 4., 6., 12., 4., 8., 12., 24.]);
}

#[test]
fn lokr_conv_factors_expand_over_the_kernel() {
    let mut targets = Targets::default();
    targets.insert("unet", "conv_in", vec![2, 2, 1, 2]);
    // kron(w1 [2, 1], w2 [1, 2, 1, 2]) -> [2, 2, 1, 2].
    let tensors = vec![
        t("lora_unet_conv_in.lokr_w1", &[2, 1], &[1., -1.]),
        t(
            "lora_unet_conv_in.lokr_w2",
            &[1, 2, 1, 2],
            &[1., 2., 3., 4.],
        ),
    ];
    let delta = parse_ok(&tensors, &[], &targets).layers[0].delta();
    assert_eq!(delta, vec![1., 2., 3., 4., -1., -2., -3., -4.]);
}

#[test]
fn lycoris_diff_is_the_delta() {
    let mut targets = Targets::default();
    targets.insert("unet", "conv_in", vec![2, 2]);
    let tensors = vec![t("lora_unet_conv_in.diff", &[2, 2], &[1., 2., 3., 4.])];
    let adapter = parse_ok(&tensors, &[], &targets);
    assert_eq!(adapter.layers[0].algorithm(), Algorithm::Diff);
    assert_eq!(adapter.layers[0].delta(), vec![1., 2., 3., 4.]);
}

#[test]
fn kohya_and_diffusers_namings_give_identical_deltas() {
    let targets = sd_targets();
    let shapes = [
        (Q, [2, 4], [4, 2]),
        ("down_blocks.0.attentions.0.proj_in", [2, 4], [4, 2]),
    ];
    let mut kohya = Vec::new();
    let mut diffusers = Vec::new();
    for (module, down, up) in shapes {
        let kname = format!("lora_unet_{}", module.replace('.', "_"));
        kohya.extend(lora(
            &kname,
            ".lora_down.weight",
            ".lora_up.weight",
            &down,
            &up,
        ));
        kohya.push(t(&format!("{kname}.alpha"), &[], &[4.]));
        diffusers.extend(lora(
            &format!("unet.{module}"),
            ".lora_A.weight",
            ".lora_B.weight",
            &down,
            &up,
        ));
    }
    let conv_down = [2, 2, 3, 3];
    kohya.extend(lora(
        "lora_unet_down_blocks_0_resnets_0_conv1",
        ".lora_down.weight",
        ".lora_up.weight",
        &conv_down,
        &[4, 2, 1, 1],
    ));
    kohya.push(t(
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha",
        &[],
        &[4.],
    ));
    diffusers.extend(lora(
        "unet.down_blocks.0.resnets.0.conv1",
        ".lora_A.weight",
        ".lora_B.weight",
        &conv_down,
        &[4, 2, 1, 1],
    ));
    let meta = [(
        "lora_adapter_metadata",
        r#"{"unet.r": 2, "unet.lora_alpha": 4}"#,
    )];
    let a = parse_ok(&kohya, &[], &targets);
    let b = parse_ok(&diffusers, &meta, &targets);
    assert_eq!(modules(&a), modules(&b));
    assert_eq!(a.layers.len(), 3);
    for la in &a.layers {
        let lb = layer(&b, &la.module);
        assert_eq!(la.delta(), lb.delta(), "{}", la.module);
        assert_eq!(la.delta().len(), la.shape.iter().product::<usize>());
    }
}

/// A tiny SDXL-like UNet (one layer per block, attention on level 1) with two text encoders.
fn sdxl_targets() -> Targets {
    let mut targets = Targets::default();
    for module in [
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.downsamplers.0.conv",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.proj_out",
        "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2",
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.1.resnets.1.time_emb_proj",
    ] {
        targets.insert("unet", module, vec![4, 4]);
    }
    targets.insert(
        "text_encoder",
        "text_model.encoder.layers.0.self_attn.k_proj",
        vec![4, 4],
    );
    targets.insert(
        "text_encoder_2",
        "text_model.encoder.layers.0.self_attn.k_proj",
        vec![4, 4],
    );
    targets.insert("text_encoder_2", "text_projection", vec![4, 4]);
    targets
}

#[test]
fn kohya_sdxl_sgm_names_map_to_diffusers_blocks() {
    let targets = sdxl_targets();
    let cases = [
        (
            "input_blocks_1_0_in_layers_2",
            "down_blocks.0.resnets.0.conv1",
        ),
        ("input_blocks_2_0_op", "down_blocks.0.downsamplers.0.conv"),
        (
            "input_blocks_3_1_transformer_blocks_0_attn2_to_k",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        ),
        ("middle_block_1_proj_out", "mid_block.attentions.0.proj_out"),
        (
            "output_blocks_1_1_transformer_blocks_0_ff_net_2",
            "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2",
        ),
        ("output_blocks_1_2_conv", "up_blocks.0.upsamplers.0.conv"),
        (
            "output_blocks_3_0_emb_layers_1",
            "up_blocks.1.resnets.1.time_emb_proj",
        ),
    ];
    let mut tensors = Vec::new();
    for (sgm, _) in cases {
        tensors.extend(lora(
            &format!("lora_unet_{sgm}"),
            ".lora_down.weight",
            ".lora_up.weight",
            &[1, 4],
            &[4, 1],
        ));
    }
    for te in ["lora_te1_", "lora_te2_"] {
        let name = format!("{te}text_model_encoder_layers_0_self_attn_k_proj");
        tensors.extend(lora(
            &name,
            ".lora_down.weight",
            ".lora_up.weight",
            &[1, 4],
            &[4, 1],
        ));
    }
    tensors.extend(lora(
        "lora_te2_text_projection",
        ".lora_down.weight",
        ".lora_up.weight",
        &[1, 4],
        &[4, 1],
    ));
    let adapter = parse_ok(&tensors, &[], &targets);
    assert_eq!(adapter.format, Format::Kohya);
    for (sgm, module) in cases {
        assert_eq!(layer(&adapter, module).key, format!("lora_unet_{sgm}"));
    }
    let components: Vec<_> = modules(&adapter)
        .into_iter()
        .filter(|(c, _)| c != "unet")
        .collect();
    assert_eq!(
        components,
        vec![
            pair(
                "text_encoder",
                "text_model.encoder.layers.0.self_attn.k_proj"
            ),
            pair(
                "text_encoder_2",
                "text_model.encoder.layers.0.self_attn.k_proj"
            ),
            pair("text_encoder_2", "text_projection"),
        ]
    );
}

/// A tiny FLUX transformer: 4-wide attention, 8-wide MLP, one double and one single block.
fn flux_targets() -> Targets {
    let mut targets = Targets::default();
    let mut add = |m: &str, shape: &[usize]| targets.insert("transformer", m, shape.to_vec());
    for m in [
        "to_q",
        "to_k",
        "to_v",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_out.0",
        "to_add_out",
    ] {
        add(&format!("transformer_blocks.0.attn.{m}"), &[4, 4]);
    }
    add("transformer_blocks.0.ff.net.0.proj", &[8, 4]);
    add("transformer_blocks.0.norm1.linear", &[24, 4]);
    for m in ["attn.to_q", "attn.to_k", "attn.to_v"] {
        add(&format!("single_transformer_blocks.0.{m}"), &[4, 4]);
    }
    add("single_transformer_blocks.0.proj_mlp", &[8, 4]);
    add("single_transformer_blocks.0.proj_out", &[4, 12]);
    add("norm_out.linear", &[8, 4]);
    add("x_embedder", &[4, 6]);
    targets.insert(
        "text_encoder",
        "text_model.encoder.layers.0.mlp.fc2",
        vec![4, 8],
    );
    targets
}

#[test]
fn flux_fused_qkv_splits_up_rows_and_shares_down() {
    let targets = flux_targets();
    let tensors = [
        lora(
            "lora_unet_double_blocks_0_img_attn_qkv",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 4],
            &[12, 2],
        ),
        vec![t(
            "lora_unet_double_blocks_0_img_attn_qkv.alpha",
            &[],
            &[1.],
        )],
        lora(
            "lora_unet_double_blocks_0_txt_attn_qkv",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 4],
            &[12, 2],
        ),
        lora(
            "lora_unet_single_blocks_0_linear1",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 4],
            &[20, 2],
        ),
        lora(
            "lora_unet_single_blocks_0_linear2",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 12],
            &[4, 2],
        ),
        lora(
            "lora_unet_double_blocks_0_img_mod_lin",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 4],
            &[24, 2],
        ),
        lora(
            "lora_unet_img_in",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 6],
            &[4, 2],
        ),
        lora(
            "lora_te1_text_model_encoder_layers_0_mlp_fc2",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 8],
            &[4, 2],
        ),
    ]
    .concat();
    let adapter = parse_ok(&tensors, &[], &targets);
    let d = |m: &str| pair("transformer", m);
    let mut want = vec![pair("text_encoder", "text_model.encoder.layers.0.mlp.fc2")];
    for m in [
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "norm1.linear",
    ] {
        want.push(d(&format!("transformer_blocks.0.{m}")));
    }
    for m in [
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "proj_mlp",
        "proj_out",
    ] {
        want.push(d(&format!("single_transformer_blocks.0.{m}")));
    }
    want.push(d("x_embedder"));
    want.sort();
    assert_eq!(modules(&adapter), want);

    // Each split is its block of rows of 0.5 * up @ down (alpha 1 over rank 2).
    let up = seq(&[12, 2], -0.25);
    let down = seq(&[2, 4], 0.5);
    let full: Vec<f32> = math::matmul(&up, 12, 2, &down, 4)
        .iter()
        .map(|v| v * 0.5)
        .collect();
    for (i, m) in ["to_q", "to_k", "to_v"].iter().enumerate() {
        let l = layer(&adapter, &format!("transformer_blocks.0.attn.{m}"));
        assert_eq!(l.delta(), full[i * 16..(i + 1) * 16].to_vec(), "{m}");
    }
    // linear1 covers q, k, v (4 rows each) then the 8-row MLP.
    let up = seq(&[20, 2], -0.25);
    let full = math::matmul(&up, 20, 2, &down, 4);
    assert_eq!(
        layer(&adapter, "single_transformer_blocks.0.proj_mlp").delta(),
        full[48..].to_vec()
    );
}

#[test]
fn flux_diffusers_and_bfl_namings_agree() {
    let targets = flux_targets();
    let (down, up) = (&[2, 4][..], &[12, 2][..]);
    let diffusers = [
        lora(
            "transformer.transformer_blocks.0.attn.to_q",
            ".lora_A.weight",
            ".lora_B.weight",
            down,
            &[4, 2],
        ),
        lora(
            "transformer.norm_out.linear",
            ".lora_A.weight",
            ".lora_B.weight",
            down,
            &[8, 2],
        ),
    ]
    .concat();
    let a = parse_ok(&diffusers, &[], &targets);
    assert_eq!(a.format, Format::Diffusers);

    // BFL names under `diffusion_model.`: the fused qkv's first 4 rows are to_q; the final
    // modulation's halves are swapped (BFL: shift, scale; diffusers: scale, shift).
    let up_fused: Vec<f32> = [seq(&[4, 2], -0.25), vec![9.0; 16]].concat();
    let up_final: Vec<f32> = {
        let u = seq(&[8, 2], -0.25);
        [&u[8..], &u[..8]].concat()
    };
    let bfl = vec![
        t(
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight",
            down,
            &seq(down, 0.5),
        ),
        t(
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight",
            up,
            &up_fused,
        ),
        t(
            "diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight",
            down,
            &seq(down, 0.5),
        ),
        t(
            "diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight",
            &[8, 2],
            &up_final,
        ),
    ];
    let b = parse(
        &build(&bfl, &[]),
        &targets,
        LoadOptions {
            allow_partial: true,
        },
    )
    .unwrap();
    assert_eq!(b.format, Format::Native);
    for module in ["transformer_blocks.0.attn.to_q", "norm_out.linear"] {
        assert_eq!(
            layer(&a, module).delta(),
            layer(&b, module).delta(),
            "{module}"
        );
    }
}

#[test]
fn refusals_name_the_key_and_carry_a_code() {
    let targets = sd_targets();
    let kq = format!("lora_unet_{}", Q.replace('.', "_"));
    let ok = lora(
        &kq,
        ".lora_down.weight",
        ".lora_up.weight",
        &[2, 4],
        &[4, 2],
    );
    let with = |extra: Vec<T>| [ok.clone(), extra].concat();
    let cases: Vec<(&str, Vec<T>, ErrorCode, Vec<&str>)> = vec![
        (
            "DoRA",
            with(vec![t(&format!("{kq}.dora_scale"), &[4, 1], &[1.; 4])]),
            ErrorCode::Unsupported,
            vec!["DoRA", "dora_scale"],
        ),
        (
            "unknown kind",
            with(vec![t(&format!("{kq}.lora_B.bias"), &[4], &[1.; 4])]),
            ErrorCode::Unsupported,
            vec!["lora_B.bias"],
        ),
        (
            "no LoRA keys",
            vec![t("model.weight", &[2], &[1., 2.])],
            ErrorCode::Unsupported,
            vec!["model.weight"],
        ),
        (
            "unmatched",
            with(lora(
                "lora_unet_nowhere_to_q",
                ".lora_down.weight",
                ".lora_up.weight",
                &[2, 4],
                &[4, 2],
            )),
            ErrorCode::InvalidArg,
            vec!["2 LoRA tensors", "lora_unet_nowhere_to_q.lora_down.weight"],
        ),
        (
            "other model",
            lora(
                &kq,
                ".lora_down.weight",
                ".lora_up.weight",
                &[2, 8],
                &[8, 2],
            ),
            ErrorCode::InvalidArg,
            vec!["different model", &kq, "[8, 8]", "[4, 4]"],
        ),
        (
            "same module twice",
            with(lora(
                &format!("unet.{Q}"),
                ".lora_A.weight",
                ".lora_B.weight",
                &[2, 4],
                &[4, 2],
            )),
            ErrorCode::InvalidArg,
            vec!["both write", &kq, Q],
        ),
        (
            "same factor twice",
            with(vec![t(&format!("{kq}.lora_A.weight"), &[2, 4], &[1.; 8])]),
            ErrorCode::InvalidArg,
            vec!["same factor"],
        ),
        (
            "non-finite",
            vec![
                t(
                    &format!("{kq}.lora_down.weight"),
                    &[1, 4],
                    &[1., f32::INFINITY, 0., 0.],
                ),
                t(&format!("{kq}.lora_up.weight"), &[4, 1], &[1.; 4]),
            ],
            ErrorCode::InvalidArg,
            vec!["non-finite", "lora_down"],
        ),
        (
            "missing up",
            ok[..1].to_vec(),
            ErrorCode::InvalidArg,
            vec!["lora_up", &kq],
        ),
        (
            "rank mismatch",
            vec![
                ok[0].clone(),
                t(&format!("{kq}.lora_up.weight"), &[4, 3], &[1.; 12]),
            ],
            ErrorCode::InvalidArg,
            vec!["do not fit", "[4, 3]"],
        ),
        (
            "alpha not scalar",
            with(vec![t(&format!("{kq}.alpha"), &[2], &[1., 2.])]),
            ErrorCode::InvalidArg,
            vec!["alpha", "single value"],
        ),
    ];
    for (what, tensors, code, words) in cases {
        let err = parse_err(&tensors, &targets);
        assert_eq!(err.code(), code, "{what}: {err}");
        for word in words {
            assert!(err.to_string().contains(word), "{what}: {err} lacks {word}");
        }
    }
}

#[test]
fn allow_partial_keeps_what_matches_and_lists_the_rest() {
    let targets = sd_targets();
    let kq = format!("lora_unet_{}", Q.replace('.', "_"));
    let tensors = [
        lora(
            &kq,
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 4],
            &[4, 2],
        ),
        lora(
            "lora_unet_nowhere",
            ".lora_down.weight",
            ".lora_up.weight",
            &[2, 4],
            &[4, 2],
        ),
        vec![t(&format!("{kq}.lora_B.bias"), &[4], &[1.; 4])],
    ]
    .concat();
    let adapter = parse(
        &build(&tensors, &[]),
        &targets,
        LoadOptions {
            allow_partial: true,
        },
    )
    .unwrap();
    assert_eq!(modules(&adapter), vec![pair("unet", Q)]);
    let mut unmatched = adapter.unmatched.clone();
    unmatched.sort();
    assert_eq!(
        unmatched,
        vec![
            format!("{kq}.lora_B.bias"),
            "lora_unet_nowhere.lora_down.weight".to_string(),
            "lora_unet_nowhere.lora_up.weight".to_string(),
        ]
    );
}

#[test]
fn an_sdxl_lora_on_an_sd15_model_is_refused_as_another_model() {
    // SD 1.5's layout read as SGM puts input_blocks.1.1 at down_blocks.0.attentions.0.
    let mut targets = Targets::default();
    targets.insert(
        "unet",
        "down_blocks.0.resnets.0.conv1",
        vec![320, 320, 3, 3],
    );
    targets.insert(
        "unet",
        "down_blocks.0.resnets.1.conv1",
        vec![320, 320, 3, 3],
    );
    targets.insert(
        "unet",
        "down_blocks.0.attentions.0.proj_in",
        vec![320, 320, 1, 1],
    );
    let tensors = lora(
        "lora_unet_input_blocks_1_1_proj_in",
        ".lora_down.weight",
        ".lora_up.weight",
        &[1, 640],
        &[640, 1],
    );
    let err = parse_err(&tensors, &targets);
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("different model"), "{err}");
}

#[test]
fn load_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let targets = sd_targets();
    let missing = dir.path().join("missing.safetensors");
    let err = load(&missing, &targets, LoadOptions::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Io);
    assert!(err.to_string().contains("missing.safetensors"), "{err}");

    for (name, bytes, code) in [
        (
            "garbage.safetensors",
            b"not a safetensors file at all".to_vec(),
            ErrorCode::InvalidArg,
        ),
        (
            "empty.safetensors",
            build::<&str>(&[], &[]),
            ErrorCode::Unsupported,
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path, &targets, LoadOptions::default()).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }

    let path = dir.path().join("good.safetensors");
    let name = format!("unet.{Q}");
    std::fs::write(
        &path,
        build(
            &lora(&name, ".lora_A.weight", ".lora_B.weight", &[2, 4], &[4, 2]),
            &[],
        ),
    )
    .unwrap();
    let adapter = load(&path, &targets, LoadOptions::default()).unwrap();
    assert_eq!(modules(&adapter), vec![pair("unet", Q)]);
    assert!(!targets.is_empty() && Targets::default().is_empty());
}

/// The model's targets as a diffusers-format file implies them: each `lora_A`/`lora_B` pair's
/// module with the shape `[rows of B] + A's input dims`.
fn targets_of(bytes: &[u8]) -> Targets {
    let file = safetensors::File::parse(bytes).unwrap();
    let mut targets = Targets::default();
    for (key, entry) in &file.entries {
        let Some(name) = key.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let (component, module) = name.split_once('.').unwrap();
        let rows = file.entries[&format!("{name}.lora_B.weight")].shape[0];
        targets.insert(component, module, [&[rows], &entry.shape[1..]].concat());
    }
    targets
}

/// models/lora's twins (models/make_lora.py: the same LoRA in two formats) give the same deltas.
#[test]
fn generated_twin_files_agree() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lora");
    if !dir.join("sd_a.safetensors").exists() {
        return;
    }
    let twins = [
        ("sd_a.safetensors", "sd_a_kohya.safetensors", Format::Kohya),
        (
            "sd_a.safetensors",
            "sd_a_old.safetensors",
            Format::DiffusersLegacy,
        ),
        (
            "sd_te.safetensors",
            "sd_te_kohya.safetensors",
            Format::Kohya,
        ),
        (
            "sdxl_a.safetensors",
            "sdxl_a_kohya.safetensors",
            Format::Kohya,
        ),
        (
            "flux_diffusers.safetensors",
            "flux_bfl.safetensors",
            Format::Kohya,
        ),
    ];
    for (reference, twin, format) in twins {
        let bytes = std::fs::read(dir.join(reference)).unwrap();
        let targets = targets_of(&bytes);
        let a = parse(&bytes, &targets, LoadOptions::default()).unwrap();
        let b = load(&dir.join(twin), &targets, LoadOptions::default()).unwrap();
        assert_eq!((a.format, b.format), (Format::Diffusers, format), "{twin}");
        assert_eq!(modules(&a), modules(&b), "{twin}");
        for la in &a.layers {
            let (da, db) = (la.delta(), layer(&b, &la.module).delta());
            let scale = da.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = da
                .iter()
                .zip(&db)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "{twin} {}: {worst} of {scale}",
                la.module
            );
        }
    }
    // sd_b is kohya LoCon; alpha 2 over rank 4 halves up @ down.
    let b = std::fs::read(dir.join("sd_b.safetensors")).unwrap();
    let file = safetensors::File::parse(&b).unwrap();
    let mut targets = Targets::default();
    let name = "lora_unet_down_blocks_0_resnets_0_conv1";
    let down = file.tensor(&format!("{name}.lora_down.weight")).unwrap();
    let up = file.tensor(&format!("{name}.lora_up.weight")).unwrap();
    targets.insert(
        "unet",
        "down_blocks.0.resnets.0.conv1",
        [&up.shape[..1], &down.shape[1..]].concat(),
    );
    let adapter = parse(
        &b,
        &targets,
        LoadOptions {
            allow_partial: true,
        },
    )
    .unwrap();
    let want: Vec<f32> = math::matmul(&up.data, up.shape[0], 4, &down.data, down.data.len() / 4)
        .iter()
        .map(|v| v * 0.5)
        .collect();
    assert_eq!(adapter.layers[0].delta(), want);
}
