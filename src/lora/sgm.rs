//! diffusers UNet module names -> the original (SGM/LDM) names kohya uses for SDXL
//! (`input_blocks.4.1.transformer_blocks.0.attn1.to_q`). Going this way round is exact, where
//! inverting kohya's `_`-joined names is not. The block layout is read from the model's own
//! module names, so small test UNets map as well as real ones.
use std::collections::BTreeSet;

/// How many layers each resolution level has and which levels carry attention.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// diffusers' `layers_per_block`: resnets per down block (up blocks have one more).
    layers: usize,
    up_attention: BTreeSet<usize>,
}

impl Layout {
    /// Reads the layout from a UNet's module names; `None` if they do not look like a UNet.
    pub fn from_modules<'a>(modules: impl Iterator<Item = &'a str>) -> Option<Self> {
        let mut down_layers = None;
        let mut up_layers = None;
        let mut up_attention = BTreeSet::new();
        for module in modules {
            let segs: Vec<&str> = module.split('.').collect();
            if let ["down_blocks", _, "resnets" | "attentions", l, ..] = segs.as_slice() {
                let l: usize = l.parse().ok()?;
                down_layers = Some(down_layers.unwrap_or(0).max(l + 1));
            }
            if let ["up_blocks", b, kind @ ("resnets" | "attentions"), l, ..] = segs.as_slice() {
                let l: usize = l.parse().ok()?;
                up_layers = Some(up_layers.unwrap_or(0).max(l + 1));
                if *kind == "attentions" {
                    up_attention.insert(b.parse().ok()?);
                }
            }
        }
        // Up blocks hold `layers + 1`; either side alone is enough if the other lists nothing.
        let layers = match (down_layers, up_layers) {
            (Some(d), _) => d,
            (None, Some(u)) if u > 1 => u - 1,
            _ => return None,
        };
        Some(Layout {
            layers,
            up_attention,
        })
    }

    /// The SGM name of a diffusers UNet module, if it has one.
    pub fn sgm_name(&self, module: &str) -> Option<String> {
        let segs: Vec<&str> = module.split('.').collect();
        let per_level = self.layers + 1;
        let num = |s: &str| s.parse::<usize>().ok();
        let join = |head: String, rest: &[&str]| {
            std::iter::once(head.as_str())
                .chain(rest.iter().copied())
                .collect::<Vec<_>>()
                .join(".")
        };
        let name = match segs.as_slice() {
            ["conv_in", rest @ ..] => join("input_blocks.0.0".into(), rest),
            ["time_embedding", "linear_1", rest @ ..] => join("time_embed.0".into(), rest),
            ["time_embedding", "linear_2", rest @ ..] => join("time_embed.2".into(), rest),
            ["add_embedding", "linear_1", rest @ ..] => join("label_emb.0.0".into(), rest),
            ["add_embedding", "linear_2", rest @ ..] => join("label_emb.0.2".into(), rest),
            ["conv_norm_out", rest @ ..] => join("out.0".into(), rest),
            ["conv_out", rest @ ..] => join("out.2".into(), rest),
            ["down_blocks", b, "resnets", l, rest @ ..] => {
                let i = 1 + num(b)? * per_level + num(l)?;
                join(format!("input_blocks.{i}.0.{}", resnet(rest)?), &[])
            }
            ["down_blocks", b, "attentions", l, rest @ ..] => {
                let i = 1 + num(b)? * per_level + num(l)?;
                join(format!("input_blocks.{i}.1"), rest)
            }
            ["down_blocks", b, "downsamplers", "0", "conv", rest @ ..] => {
                let i = (num(b)? + 1) * per_level;
                join(format!("input_blocks.{i}.0.op"), rest)
            }
            ["mid_block", "resnets", l, rest @ ..] => {
                let i = match *l {
                    "0" => 0,
                    "1" => 2,
                    _ => return None,
                };
                join(format!("middle_block.{i}.{}", resnet(rest)?), &[])
            }
            ["mid_block", "attentions", "0", rest @ ..] => join("middle_block.1".into(), rest),
            ["up_blocks", b, "resnets", l, rest @ ..] => {
                let i = num(b)? * per_level + num(l)?;
                join(format!("output_blocks.{i}.0.{}", resnet(rest)?), &[])
            }
            ["up_blocks", b, "attentions", l, rest @ ..] => {
                let i = num(b)? * per_level + num(l)?;
                join(format!("output_blocks.{i}.1"), rest)
            }
            ["up_blocks", b, "upsamplers", "0", "conv", rest @ ..] => {
                let b = num(b)?;
                // The upsampler follows the level's last layer: after its attention if it has one.
                let slot = if self.up_attention.contains(&b) { 2 } else { 1 };
                join(
                    format!("output_blocks.{}.{slot}.conv", b * per_level + self.layers),
                    rest,
                )
            }
            _ => return None,
        };
        Some(name)
    }
}

/// A ResBlock's inner names: sgm keeps them in `in_layers`/`out_layers` sequentials.
fn resnet(rest: &[&str]) -> Option<String> {
    let (head, tail) = rest.split_first()?;
    let head = match *head {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(
        std::iter::once(head)
            .chain(tail.iter().copied())
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real SDXL: 2 layers per block, attention in down 1-2 and up 0-1.
    fn sdxl() -> Layout {
        let modules = [
            "down_blocks.0.resnets.1.conv1",
            "down_blocks.1.attentions.1.proj_in",
            "up_blocks.0.attentions.2.proj_in",
            "up_blocks.1.attentions.2.proj_in",
            "up_blocks.2.resnets.2.conv1",
        ];
        Layout::from_modules(modules.into_iter()).unwrap()
    }

    #[test]
    fn maps_sdxl_like_diffusers_inverse() {
        let layout = sdxl();
        let cases = [
            ("conv_in", "input_blocks.0.0"),
            ("time_embedding.linear_1", "time_embed.0"),
            ("add_embedding.linear_2", "label_emb.0.2"),
            ("conv_out", "out.2"),
            (
                "down_blocks.0.resnets.0.conv1",
                "input_blocks.1.0.in_layers.2",
            ),
            (
                "down_blocks.0.resnets.1.time_emb_proj",
                "input_blocks.2.0.emb_layers.1",
            ),
            ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
            (
                "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q",
                "input_blocks.4.1.transformer_blocks.1.attn1.to_q",
            ),
            (
                "down_blocks.1.resnets.0.conv_shortcut",
                "input_blocks.4.0.skip_connection",
            ),
            (
                "down_blocks.2.attentions.1.proj_out",
                "input_blocks.8.1.proj_out",
            ),
            ("mid_block.resnets.0.conv2", "middle_block.0.out_layers.3"),
            (
                "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
                "middle_block.1.transformer_blocks.0.ff.net.2",
            ),
            ("mid_block.resnets.1.norm1", "middle_block.2.in_layers.0"),
            (
                "up_blocks.0.resnets.0.conv1",
                "output_blocks.0.0.in_layers.2",
            ),
            (
                "up_blocks.0.attentions.2.proj_in",
                "output_blocks.2.1.proj_in",
            ),
            ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
            (
                "up_blocks.1.resnets.1.conv2",
                "output_blocks.4.0.out_layers.3",
            ),
            (
                "up_blocks.2.resnets.2.conv1",
                "output_blocks.8.0.in_layers.2",
            ),
        ];
        for (module, want) in cases {
            assert_eq!(layout.sgm_name(module).as_deref(), Some(want), "{module}");
        }
        assert_eq!(layout.sgm_name("text_model.encoder"), None);
    }

    #[test]
    fn reads_a_small_layout_from_the_model() {
        // One layer per block; up level 1 has no attention, so its upsampler sits in slot 1.
        let modules = [
            "down_blocks.0.resnets.0.conv1",
            "up_blocks.0.attentions.1.proj_in",
            "up_blocks.1.resnets.1.conv1",
        ];
        let layout = Layout::from_modules(modules.into_iter()).unwrap();
        assert_eq!(
            layout.sgm_name("down_blocks.1.resnets.0.conv1").as_deref(),
            Some("input_blocks.3.0.in_layers.2")
        );
        assert_eq!(
            layout.sgm_name("up_blocks.0.upsamplers.0.conv").as_deref(),
            Some("output_blocks.1.2.conv")
        );
        assert_eq!(
            layout.sgm_name("up_blocks.1.upsamplers.0.conv").as_deref(),
            Some("output_blocks.3.1.conv")
        );
        assert!(Layout::from_modules(["transformer_blocks.0.attn.to_q"].into_iter()).is_none());
    }
}
