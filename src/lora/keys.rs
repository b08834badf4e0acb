//! Splitting a tensor key into the layer it belongs to and the factor it holds, across the
//! spellings trainers write: PEFT `lora_A/lora_B`, kohya `lora_down/lora_up/alpha`, LyCORIS
//! `hada_*`/`lokr_*`, and diffusers' older `to_q_lora.down` / `lora_linear_layer.down`.
use super::Algorithm;

/// Which factor of a layer a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Down,
    Up,
    Mid,
    Alpha,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
    Diff,
}

impl Kind {
    /// The factorisation a factor belongs to; `None` for `alpha`, which they all share.
    pub fn algorithm(self) -> Option<Algorithm> {
        use Kind::*;
        match self {
            Alpha => None,
            Down | Up | Mid => Some(Algorithm::Lora),
            HadaW1A | HadaW1B | HadaW2A | HadaW2B | HadaT1 | HadaT2 => Some(Algorithm::LoHa),
            LokrW1 | LokrW1A | LokrW1B | LokrW2 | LokrW2A | LokrW2B | LokrT2 => {
                Some(Algorithm::LoKr)
            }
            Diff => Some(Algorithm::Diff),
        }
    }
}

/// What a key turned out to be.
#[derive(Debug, PartialEq)]
pub(crate) enum Split {
    Factor {
        /// The layer's name in the file, normalised so every factor of one layer shares it.
        name: String,
        kind: Kind,
        /// diffusers' attention-processor form: `to_q` may also mean a text encoder's `q_proj`.
        legacy: bool,
    },
    /// DoRA magnitudes: merging them needs the base weight's norm, which this module never sees.
    Dora,
    Unknown,
}

/// LyCORIS tensors are named without a `.weight` suffix.
const LYCORIS: [(&str, Kind); 14] = [
    ("hada_w1_a", Kind::HadaW1A),
    ("hada_w1_b", Kind::HadaW1B),
    ("hada_w2_a", Kind::HadaW2A),
    ("hada_w2_b", Kind::HadaW2B),
    ("hada_t1", Kind::HadaT1),
    ("hada_t2", Kind::HadaT2),
    ("lokr_w1", Kind::LokrW1),
    ("lokr_w1_a", Kind::LokrW1A),
    ("lokr_w1_b", Kind::LokrW1B),
    ("lokr_w2", Kind::LokrW2),
    ("lokr_w2_a", Kind::LokrW2A),
    ("lokr_w2_b", Kind::LokrW2B),
    ("lokr_t2", Kind::LokrT2),
    ("diff", Kind::Diff),
];

pub(crate) fn split(key: &str) -> Split {
    let segs: Vec<&str> = key.split('.').collect();
    if segs
        .iter()
        .any(|s| *s == "dora_scale" || *s == "lora_magnitude_vector")
    {
        return Split::Dora;
    }
    let n = segs.len();
    let factor = |keep: usize, kind: Kind| Split::Factor {
        name: segs[..keep].join("."),
        kind,
        legacy: false,
    };
    let last = segs[n - 1];
    if n >= 2 {
        if last == "alpha" {
            return factor(n - 1, Kind::Alpha);
        }
        if let Some((_, kind)) = LYCORIS.iter().find(|(s, _)| *s == last) {
            return factor(n - 1, *kind);
        }
    }
    if last != "weight" || n < 3 {
        return Split::Unknown;
    }
    let lora_kind = |s: &str| match s {
        "lora_A" | "lora_down" => Some(Kind::Down),
        "lora_B" | "lora_up" => Some(Kind::Up),
        "lora_mid" => Some(Kind::Mid),
        _ => None,
    };
    if let Some(kind) = lora_kind(segs[n - 2]) {
        return factor(n - 2, kind);
    }
    // PEFT's unfiltered state dict names the adapter: `lora_A.default.weight`.
    if n >= 4 && matches!(segs[n - 3], "lora_A" | "lora_B") {
        if let Some(kind) = lora_kind(segs[n - 3]) {
            return factor(n - 3, kind);
        }
    }
    let kind = match segs[n - 2] {
        "down" => Kind::Down,
        "up" => Kind::Up,
        _ => return Split::Unknown,
    };
    if n < 4 {
        return Split::Unknown;
    }
    let holder = segs[n - 3];
    let legacy = |name: String| Split::Factor {
        name,
        kind,
        legacy: true,
    };
    match holder {
        "lora" | "lora_linear_layer" => legacy(segs[..n - 3].join(".")),
        _ => match holder.strip_suffix("_lora") {
            Some(base) => {
                // `attn1.processor.to_out_lora` is the module `attn1.to_out.0`.
                let mut path: Vec<&str> = segs[..n - 3].to_vec();
                if path.last() == Some(&"processor") {
                    path.pop();
                }
                path.push(if base == "to_out" { "to_out.0" } else { base });
                legacy(path.join("."))
            }
            None => Split::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, kind: Kind, legacy: bool) -> Split {
        Split::Factor {
            name: name.into(),
            kind,
            legacy,
        }
    }

    #[test]
    fn splits_every_spelling() {
        let cases = [
            (
                "unet.a.to_q.lora_A.weight",
                f("unet.a.to_q", Kind::Down, false),
            ),
            (
                "unet.a.to_q.lora_B.default.weight",
                f("unet.a.to_q", Kind::Up, false),
            ),
            (
                "lora_unet_a.lora_down.weight",
                f("lora_unet_a", Kind::Down, false),
            ),
            (
                "lora_unet_a.lora_up.weight",
                f("lora_unet_a", Kind::Up, false),
            ),
            (
                "lora_unet_a.lora_mid.weight",
                f("lora_unet_a", Kind::Mid, false),
            ),
            ("lora_unet_a.alpha", f("lora_unet_a", Kind::Alpha, false)),
            (
                "lora_unet_a.hada_w1_a",
                f("lora_unet_a", Kind::HadaW1A, false),
            ),
            ("lora_unet_a.lokr_t2", f("lora_unet_a", Kind::LokrT2, false)),
            ("lora_unet_a.diff", f("lora_unet_a", Kind::Diff, false)),
            (
                "unet.b.attn1.processor.to_out_lora.up.weight",
                f("unet.b.attn1.to_out.0", Kind::Up, true),
            ),
            (
                "unet.b.attn2.processor.to_k_lora.down.weight",
                f("unet.b.attn2.to_k", Kind::Down, true),
            ),
            (
                "text_encoder.m.mlp.fc1.lora_linear_layer.down.weight",
                f("text_encoder.m.mlp.fc1", Kind::Down, true),
            ),
            (
                "unet.c.proj_in.lora.up.weight",
                f("unet.c.proj_in", Kind::Up, true),
            ),
        ];
        for (key, want) in cases {
            assert_eq!(split(key), want, "{key}");
        }
    }

    #[test]
    fn flags_dora_and_unknown() {
        assert_eq!(split("lora_unet_a.dora_scale"), Split::Dora);
        assert_eq!(split("unet.a.lora_magnitude_vector.weight"), Split::Dora);
        for key in [
            "alpha",
            "weight",
            "unet.a.weight",
            "unet.a.lora_B.bias",
            "a.lokr_t1",
            "x.down.weight",
        ] {
            assert_eq!(split(key), Split::Unknown, "{key}");
        }
    }
}
