//! LoRA adapters on the tiny packages: parity with diffusers' `load_lora_weights` / `set_adapters`
//! (goldens from models/make_lora.py), naming variants, stacks, unloading and bad files.
mod common;

use diffgentor::{LoraUse, Request};

fn lora(file: &str) -> std::path::PathBuf {
    common::repo().join("models/lora").join(file)
}

#[test]
fn runs_without_a_stack_are_the_base_output_bit_for_bit() {
    let pipeline = common::pipeline("tiny-sd");
    let mut request = Request::new("a red fox");
    request.steps = 3;
    request.seed = Some(7);
    let base = pipeline.generate(&request).expect("base");
    pipeline
        .load_lora("a", &lora("sd_a.safetensors"))
        .expect("load");
    let again = pipeline.generate(&request).expect("after load");
    assert_eq!(base.latents, again.latents, "no stack must feed nothing");
    request.loras = Some(vec![LoraUse::new("a", 1.0)]);
    let with = pipeline.generate(&request).expect("with a");
    let diff = (&with.latents - &base.latents)
        .mapv(f32::abs)
        .fold(0.0f32, |m, &v| m.max(v));
    assert!(
        diff > 1e-3,
        "the LoRA must change the output (max diff {diff})"
    );
    request.loras = Some(vec![LoraUse::new("a", 0.0)]);
    let zero = pipeline.generate(&request).expect("strength 0");
    let diff0 = (&zero.latents - &base.latents)
        .mapv(f32::abs)
        .fold(0.0f32, |m, &v| m.max(v));
    println!("max diff with a: {diff}, at strength 0: {diff0}");
    assert!(diff0 < 1e-4, "strength 0 is the base weights fed as inputs");
}
