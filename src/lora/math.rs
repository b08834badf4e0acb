//! Dense kernels for rebuilding full-rank deltas from factors: row-major f32, shapes checked by
//! the caller (factors.rs) before any of these run.

/// `a [m, k] @ b [k, n]`. The i-k-j order streams rows of `b`, which vectorises well.
pub(crate) fn matmul(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    let mut out = vec![0.0f32; m * n];
    for (row, out_row) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (&x, b_row) in row.iter().zip(b.chunks_exact(n)) {
            if x != 0.0 {
                for (o, &y) in out_row.iter_mut().zip(b_row) {
                    *o += x * y;
                }
            }
        }
    }
    out
}

/// `a [rows, cols]` transposed to `[cols, rows]`.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

/// The Tucker rebuild LyCORIS uses for LoCon's `lora_mid`, LoHa's `hada_t*` and LoKr's `lokr_t2`:
/// `out[o, i, k] = sum_a sum_b up[o, a] * core[a, b, k] * down[b, i]`, with `up [o_dim, ra]`,
/// `core [ra, rb, k_len]` (k = the flattened kernel) and `down [rb, i_dim]`; result `[o_dim, i_dim * k_len]`.
pub(crate) fn tucker(
    up: &[f32],
    o_dim: usize,
    core: &[f32],
    (ra, rb, k_len): (usize, usize, usize),
    down: &[f32],
    i_dim: usize,
) -> Vec<f32> {
    // inner[a, i, k] = sum_b core[a, b, k] * down[b, i], then one matmul with `up`.
    let mut inner = vec![0.0f32; ra * i_dim * k_len];
    for a in 0..ra {
        for b in 0..rb {
            let core_ab = &core[(a * rb + b) * k_len..][..k_len];
            for i in 0..i_dim {
                let d = down[b * i_dim + i];
                let dst = &mut inner[(a * i_dim + i) * k_len..][..k_len];
                for (o, &c) in dst.iter_mut().zip(core_ab) {
                    *o += c * d;
                }
            }
        }
    }
    matmul(up, o_dim, ra, &inner, i_dim * k_len)
}

/// Kronecker product of `a [p, q]` and `b [r, s]`: `[p * r, q * s]`.
pub(crate) fn kron(
    a: &[f32],
    (p, q): (usize, usize),
    b: &[f32],
    (r, s): (usize, usize),
) -> Vec<f32> {
    let cols = q * s;
    let mut out = vec![0.0f32; p * r * cols];
    for i in 0..p {
        for j in 0..q {
            let x = a[i * q + j];
            for k in 0..r {
                let dst = &mut out[(i * r + k) * cols + j * s..][..s];
                for (o, &y) in dst.iter_mut().zip(&b[k * s..(k + 1) * s]) {
                    *o = x * y;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_and_transpose() {
        // [[1,2],[3,4],[5,6]] @ [[1,0,2],[0,1,3]]
        let out = matmul(
            &[1., 2., 3., 4., 5., 6.],
            3,
            2,
            &[1., 0., 2., 0., 1., 3.],
            3,
        );
        assert_eq!(out, vec![1., 2., 8., 3., 4., 18., 5., 6., 28.]);
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn kron_matches_definition() {
        let out = kron(&[1., 2.], (1, 2), &[1., 10., 100., 1000.], (2, 2));
        assert_eq!(out, vec![1., 10., 2., 20., 100., 1000., 200., 2000.]);
    }

    #[test]
    fn tucker_matches_the_einsum_by_brute_force() {
        let (o_dim, ra, rb, k_len, i_dim) = (3, 2, 2, 2, 3);
        let up: Vec<f32> = (0..o_dim * ra).map(|v| v as f32 - 2.0).collect();
        let core: Vec<f32> = (0..ra * rb * k_len).map(|v| (v as f32) * 0.5).collect();
        let down: Vec<f32> = (0..rb * i_dim).map(|v| 1.0 - v as f32).collect();
        let out = tucker(&up, o_dim, &core, (ra, rb, k_len), &down, i_dim);
        for o in 0..o_dim {
            for i in 0..i_dim {
                for k in 0..k_len {
                    let mut want = 0.0;
                    for a in 0..ra {
                        for b in 0..rb {
                            want += up[o * ra + a]
                                * core[(a * rb + b) * k_len + k]
                                * down[b * i_dim + i];
                        }
                    }
                    assert_eq!(out[(o * i_dim + i) * k_len + k], want);
                }
            }
        }
    }
}
