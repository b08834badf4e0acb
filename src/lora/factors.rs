//! One layer's factors as a file stores them, checked for consistent shapes, and the full-rank
//! delta they stand for (LoRA/LoCon, LoHa, LoKr, LyCORIS `diff`) following LyCORIS' math.
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::keys::Kind;
use super::math;
use super::safetensors::{File, Tensor};
use super::Algorithm;
use crate::error::{Error, Result};

/// A layer's tensors keyed by kind, with the key each came from (for messages).
pub(crate) type Group = BTreeMap<Kind, String>;

#[derive(Debug)]
pub(crate) enum Factors {
    /// `up [o, r(,1,1)] @ down [r, i(, kh, kw)]`; with `mid [r, r, kh, kw]` the Tucker form.
    Lora {
        up: Tensor,
        down: Tensor,
        mid: Option<Tensor>,
    },
    /// `(w1a @ w1b) * (w2a @ w2b)`, elementwise; with `(t1, t2)` each side a Tucker rebuild
    /// from `w*a [r, out]`, `t* [r, r, kh, kw]`, `w*b [r, in]`.
    LoHa {
        w1a: Tensor,
        w1b: Tensor,
        w2a: Tensor,
        w2b: Tensor,
        tucker: Option<(Tensor, Tensor)>,
    },
    /// `kron(w1, w2)`.
    LoKr { w1: KronFactor, w2: KronFactor },
    /// The delta itself.
    Diff(Tensor),
}

#[derive(Debug)]
pub(crate) enum KronFactor {
    Full(Tensor),
    /// `a [out, r] @ b [r, in(...)]`.
    Low(Tensor, Tensor),
    /// Tucker rebuild from `t [r, r, k...]`, `a [r, out]`, `b [r, in]`.
    Tucker(Tensor, Tensor, Tensor),
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Refuses a tensor whose number of dims is outside `dims` (or that is empty), naming its key.
fn need(key: &str, t: &Tensor, dims: Range<usize>, what: &str) -> Result<()> {
    if dims.contains(&t.shape.len()) && !t.shape.contains(&0) {
        Ok(())
    } else {
        Err(Error::InvalidArg(format!(
            "LoRA tensor {key} has shape {:?}; expected {what}",
            t.shape
        )))
    }
}

fn mismatch(a: &str, a_shape: &[usize], b: &str, b_shape: &[usize]) -> Error {
    Error::InvalidArg(format!(
        "LoRA tensors {a} {a_shape:?} and {b} {b_shape:?} do not fit together"
    ))
}

/// Reads a group's tensors on demand, naming the layer when one is missing.
struct Reader<'a> {
    file: &'a File<'a>,
    group: &'a Group,
}

impl<'a> Reader<'a> {
    fn has(&self, kind: Kind) -> bool {
        self.group.contains_key(&kind)
    }

    fn get(&self, kind: Kind, name: &str) -> Result<(Tensor, &'a str)> {
        let Some(key) = self.group.get(&kind) else {
            let any = self.group.values().next().map_or("", String::as_str);
            return Err(Error::InvalidArg(format!(
                "LoRA layer of {any} has no {name} tensor"
            )));
        };
        Ok((self.file.tensor(key)?, key.as_str()))
    }

    /// A matrix factor.
    fn matrix(&self, kind: Kind, name: &str) -> Result<(Tensor, &'a str)> {
        let (t, key) = self.get(kind, name)?;
        need(key, &t, 2..3, "a matrix")?;
        Ok((t, key))
    }
}

impl Factors {
    /// Reads and checks the factors of `group`; `None` for a group holding only an `alpha`.
    pub fn read(file: &File, group: &Group) -> Result<Option<Self>> {
        let r = Reader { file, group };
        let algorithms: BTreeSet<Algorithm> = group.keys().filter_map(|k| k.algorithm()).collect();
        let mut algorithms = algorithms.into_iter();
        let Some(algorithm) = algorithms.next() else {
            return Ok(None);
        };
        if algorithms.next().is_some() {
            let keys: Vec<&String> = group.values().collect();
            return Err(Error::InvalidArg(format!(
                "LoRA tensors {keys:?} mix factorisations for one layer"
            )));
        }
        Ok(Some(match algorithm {
            Algorithm::Lora => Self::read_lora(&r)?,
            Algorithm::LoHa => Self::read_loha(&r)?,
            Algorithm::LoKr => Factors::LoKr {
                w1: read_w1(&r)?,
                w2: read_w2(&r)?,
            },
            Algorithm::Diff => {
                let (diff, key) = r.get(Kind::Diff, "diff")?;
                need(key, &diff, 1..5, "a weight-shaped tensor")?;
                Factors::Diff(diff)
            }
        }))
    }

    fn read_lora(r: &Reader) -> Result<Self> {
        let (down, dk) = r.get(Kind::Down, "down (lora_A / lora_down)")?;
        let (up, uk) = r.get(Kind::Up, "up (lora_B / lora_up)")?;
        need(dk, &down, 2..5, "[rank, in(, kh, kw)]")?;
        need(uk, &up, 2..5, "[out, rank(, 1, 1)]")?;
        let rank = down.shape[0];
        if numel(&up.shape[1..]) != rank {
            return Err(mismatch(uk, &up.shape, dk, &down.shape));
        }
        let mid = if r.has(Kind::Mid) {
            let (mid, mk) = r.get(Kind::Mid, "lora_mid")?;
            need(mk, &mid, 3..5, "[rank, rank, kh, kw]")?;
            if mid.shape[..2] != [rank, rank] || numel(&down.shape[2..]) != 1 {
                return Err(mismatch(mk, &mid.shape, dk, &down.shape));
            }
            Some(mid)
        } else {
            None
        };
        Ok(Factors::Lora { up, down, mid })
    }

    fn read_loha(r: &Reader) -> Result<Self> {
        let (w1a, k1a) = r.matrix(Kind::HadaW1A, "hada_w1_a")?;
        let (w2a, k2a) = r.matrix(Kind::HadaW2A, "hada_w2_a")?;
        if !r.has(Kind::HadaT1) && !r.has(Kind::HadaT2) {
            let (w1b, k1b) = r.get(Kind::HadaW1B, "hada_w1_b")?;
            let (w2b, k2b) = r.get(Kind::HadaW2B, "hada_w2_b")?;
            need(k1b, &w1b, 2..5, "[rank, in(, kh, kw)]")?;
            need(k2b, &w2b, 2..5, "[rank, in(, kh, kw)]")?;
            if w1a.shape[1] != w1b.shape[0] {
                return Err(mismatch(k1a, &w1a.shape, k1b, &w1b.shape));
            }
            if w2a.shape[1] != w2b.shape[0] {
                return Err(mismatch(k2a, &w2a.shape, k2b, &w2b.shape));
            }
            if w1a.shape[0] != w2a.shape[0] || w1b.shape[1..] != w2b.shape[1..] {
                return Err(mismatch(k1b, &w1b.shape, k2b, &w2b.shape));
            }
            return Ok(Factors::LoHa {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker: None,
            });
        }
        let (w1b, k1b) = r.matrix(Kind::HadaW1B, "hada_w1_b")?;
        let (w2b, k2b) = r.matrix(Kind::HadaW2B, "hada_w2_b")?;
        let (t1, kt1) = r.get(Kind::HadaT1, "hada_t1")?;
        let (t2, kt2) = r.get(Kind::HadaT2, "hada_t2")?;
        need(kt1, &t1, 3..5, "[rank, rank, kh, kw]")?;
        need(kt2, &t2, 3..5, "[rank, rank, kh, kw]")?;
        if t1.shape[..2] != [w1a.shape[0], w1b.shape[0]] {
            return Err(mismatch(kt1, &t1.shape, k1a, &w1a.shape));
        }
        if t2.shape[..2] != [w2a.shape[0], w2b.shape[0]] || t2.shape[2..] != t1.shape[2..] {
            return Err(mismatch(kt2, &t2.shape, k2a, &w2a.shape));
        }
        if w1a.shape[1] != w2a.shape[1] || w1b.shape[1] != w2b.shape[1] {
            return Err(mismatch(k1b, &w1b.shape, k2b, &w2b.shape));
        }
        Ok(Factors::LoHa {
            w1a,
            w1b,
            w2a,
            w2b,
            tucker: Some((t1, t2)),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Factors::Lora { .. } => Algorithm::Lora,
            Factors::LoHa { .. } => Algorithm::LoHa,
            Factors::LoKr { .. } => Algorithm::LoKr,
            Factors::Diff(_) => Algorithm::Diff,
        }
    }

    /// The delta's shape as the factors give it: `[out, in(, kh, kw)]`, or `[out, in * kh * kw]`
    /// where LyCORIS stores a conv factor flattened.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Factors::Lora { up, down, mid } => {
                let kernel = mid.as_ref().map_or(&down.shape[2..], |m| &m.shape[2..]);
                [&[up.shape[0], down.shape[1]], kernel].concat()
            }
            Factors::LoHa {
                w1a,
                w1b,
                tucker: Some((t1, _)),
                ..
            } => [&[w1a.shape[1], w1b.shape[1]], &t1.shape[2..]].concat(),
            Factors::LoHa { w1a, w1b, .. } => [&w1a.shape[..1], &w1b.shape[1..]].concat(),
            Factors::LoKr { w1, w2 } => {
                let (w1, w2) = (w1.shape(), w2.shape());
                [&[w1[0] * w2[0], w1[1] * w2[1]], &w2[2..]].concat()
            }
            Factors::Diff(diff) => diff.shape.clone(),
        }
    }

    /// The rank alpha is divided by, as LyCORIS and kohya take it; `None` where alpha does not
    /// apply (LoKr with both factors full, `diff`).
    pub fn rank(&self) -> Option<usize> {
        match self {
            Factors::Lora { down, .. } => Some(down.shape[0]),
            Factors::LoHa { w1b, .. } => Some(w1b.shape[0]),
            Factors::LoKr { w1, w2 } => match (w1, w2) {
                (KronFactor::Low(_, b), _) => Some(b.shape[0]),
                (_, KronFactor::Low(_, b) | KronFactor::Tucker(_, _, b)) => Some(b.shape[0]),
                _ => None,
            },
            Factors::Diff(_) => None,
        }
    }

    /// Rows `rows` of the unscaled delta, row-major over the flattened input dims. Plain LoRA
    /// and LoHa compute only those rows (FLUX's fused layers are large); the rest slice.
    pub fn delta_rows(&self, rows: Range<usize>) -> Vec<f32> {
        let cols = numel(&self.shape()[1..]);
        let product = |a: &Tensor, b: &Tensor| {
            let rank = b.shape[0];
            let a_rows = &a.data[rows.start * rank..rows.end * rank];
            math::matmul(a_rows, rows.len(), rank, &b.data, cols)
        };
        match self {
            Factors::Lora {
                up,
                down,
                mid: None,
            } => product(up, down),
            Factors::LoHa {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker: None,
            } => hadamard(product(w1a, w1b), product(w2a, w2b)),
            Factors::Lora {
                up,
                down,
                mid: Some(mid),
            } => slice(tucker(&up.data, mid, down), rows, cols),
            Factors::LoHa {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker: Some((t1, t2)),
            } => {
                let side = |a: &Tensor, t, b| tucker(&transposed(a), t, b);
                slice(hadamard(side(w1a, t1, w1b), side(w2a, t2, w2b)), rows, cols)
            }
            Factors::LoKr { w1, w2 } => {
                let (s1, s2) = (w1.shape(), w2.shape());
                let w2_cols = numel(&s2[1..]);
                let full = math::kron(
                    &w1.rebuild(),
                    (s1[0], s1[1]),
                    &w2.rebuild(),
                    (s2[0], w2_cols),
                );
                slice(full, rows, cols)
            }
            Factors::Diff(diff) => diff.data[rows.start * cols..rows.end * cols].to_vec(),
        }
    }
}

fn slice(full: Vec<f32>, rows: Range<usize>, cols: usize) -> Vec<f32> {
    if rows.start == 0 && rows.end * cols == full.len() {
        full
    } else {
        full[rows.start * cols..rows.end * cols].to_vec()
    }
}

fn hadamard(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(b) {
        *x *= y;
    }
    a
}

/// A `[r, n]` matrix as `[n, r]`.
fn transposed(t: &Tensor) -> Vec<f32> {
    math::transpose(&t.data, t.shape[0], t.shape[1])
}

/// `out[o, i, k] = sum_ab up[o, a] * core[a, b, k] * down[b, i]` for `up [o, r(,1,1)]` (as data),
/// `core [r, r, k...]` and `down [r, i(,1,1)]`.
fn tucker(up: &[f32], core: &Tensor, down: &Tensor) -> Vec<f32> {
    let (ra, rb) = (core.shape[0], core.shape[1]);
    let k_len = numel(&core.shape[2..]);
    let i_dim = numel(&down.shape[1..]);
    math::tucker(
        up,
        up.len() / ra,
        &core.data,
        (ra, rb, k_len),
        &down.data,
        i_dim,
    )
}

fn read_w1(r: &Reader) -> Result<KronFactor> {
    if r.has(Kind::LokrW1) {
        return Ok(KronFactor::Full(r.matrix(Kind::LokrW1, "lokr_w1")?.0));
    }
    let (a, ka) = r.matrix(Kind::LokrW1A, "lokr_w1 or lokr_w1_a")?;
    let (b, kb) = r.matrix(Kind::LokrW1B, "lokr_w1_b")?;
    if a.shape[1] != b.shape[0] {
        return Err(mismatch(ka, &a.shape, kb, &b.shape));
    }
    Ok(KronFactor::Low(a, b))
}

fn read_w2(r: &Reader) -> Result<KronFactor> {
    if r.has(Kind::LokrW2) {
        let (w2, key) = r.get(Kind::LokrW2, "lokr_w2")?;
        need(key, &w2, 2..5, "[out, in(, kh, kw)]")?;
        return Ok(KronFactor::Full(w2));
    }
    let (a, ka) = r.matrix(Kind::LokrW2A, "lokr_w2 or lokr_w2_a")?;
    if r.has(Kind::LokrT2) {
        let (b, _) = r.matrix(Kind::LokrW2B, "lokr_w2_b")?;
        let (t, kt) = r.get(Kind::LokrT2, "lokr_t2")?;
        need(kt, &t, 3..5, "[rank, rank, kh, kw]")?;
        if t.shape[..2] != [a.shape[0], b.shape[0]] {
            return Err(mismatch(kt, &t.shape, ka, &a.shape));
        }
        return Ok(KronFactor::Tucker(t, a, b));
    }
    let (b, kb) = r.get(Kind::LokrW2B, "lokr_w2_b")?;
    need(kb, &b, 2..5, "[rank, in(, kh, kw)]")?;
    if a.shape[1] != b.shape[0] {
        return Err(mismatch(ka, &a.shape, kb, &b.shape));
    }
    Ok(KronFactor::Low(a, b))
}

impl KronFactor {
    fn shape(&self) -> Vec<usize> {
        match self {
            KronFactor::Full(w) => w.shape.clone(),
            KronFactor::Low(a, b) => [&a.shape[..1], &b.shape[1..]].concat(),
            KronFactor::Tucker(t, a, b) => [&[a.shape[1], b.shape[1]], &t.shape[2..]].concat(),
        }
    }

    fn rebuild(&self) -> Vec<f32> {
        match self {
            KronFactor::Full(w) => w.data.clone(),
            KronFactor::Low(a, b) => math::matmul(
                &a.data,
                a.shape[0],
                a.shape[1],
                &b.data,
                numel(&b.shape[1..]),
            ),
            KronFactor::Tucker(t, a, b) => tucker(&transposed(a), t, b),
        }
    }
}
