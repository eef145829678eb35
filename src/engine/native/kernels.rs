//! The arithmetic of the native evaluators: a blocked matrix-vector product and the
//! LSTM's activations, written so that the compiler vectorises them (elementwise
//! loops over fixed-size blocks, no reductions: IEEE order is kept, nothing needs
//! fast-math). Hand-written because ONNX Runtime's LSTM kernel costs ≈ 30 µs per
//! 2×128 step here where the arithmetic (0.8 MB of weights, 207 K multiply-adds)
//! streams from L2 in under 10 µs: measured in `tickinfer bench` ("native" rows).

/// The largest intermediate value a native evaluator lets its arithmetic reach: far
/// below `f32::MAX`, so that no sum overflows to ±∞ (where the order of operations
/// would decide between ∞, NaN and a number, and ONNX Runtime's order is not ours).
pub const INTERMEDIATE_LIMIT: f32 = 1e30;

/// The largest |input| for which a chain of layers keeps every intermediate under
/// [`INTERMEDIATE_LIMIT`]: `grow` maps a bound on one layer's |values| to the next's
/// (monotone); tried from 1e30 down by factors of ten.
pub fn input_bound(grow: impl Fn(f32) -> f32) -> f32 {
    let mut b = INTERMEDIATE_LIMIT;
    while b >= 1e-3 {
        let top = grow(b);
        if top.is_finite() && top <= INTERMEDIATE_LIMIT {
            return b;
        }
        b /= 10.0;
    }
    0.0
}

/// Outputs per block: 8 AVX registers of accumulators, enough independent FMA chains
/// to hide the FMA latency.
pub const BLOCK: usize = 64;

/// Weights of `y = W·v` packed for [`Packed::gemv_add`]: `rows` (padded to a multiple of
/// [`BLOCK`]) × `cols`, stored block by block, each block column-major
/// (`packed[b][j][k] = W[b·BLOCK + k][j]`), so one block streams contiguously.
#[derive(Clone, Debug)]
pub struct Packed {
    /// Block-major weights; padding rows are zero.
    data: Vec<f32>,
    /// Rows before padding.
    rows: usize,
    cols: usize,
    /// Largest Σ|W[r][c]| over rows: |W·v| ≤ this × max|v| (the native range's bound).
    row_abs_sum: f32,
}

impl Packed {
    /// Pack a row-major `rows × cols` matrix (`w[r * cols + c]`).
    pub fn new(w: &[f32], rows: usize, cols: usize) -> Packed {
        assert_eq!(w.len(), rows * cols, "matrix size");
        let blocks = rows.div_ceil(BLOCK);
        let mut data = vec![0.0; blocks * BLOCK * cols];
        for r in 0..rows {
            let (b, k) = (r / BLOCK, r % BLOCK);
            for c in 0..cols {
                data[(b * cols + c) * BLOCK + k] = w[r * cols + c];
            }
        }
        let row_abs_sum =
            w.chunks_exact(cols.max(1)).map(|r| r.iter().map(|v| v.abs()).sum::<f32>()).fold(0.0, f32::max);
        Packed { data, rows, cols, row_abs_sum }
    }

    /// Largest Σ|W[r][c]| over rows: `|W·v|_∞ ≤ row_abs_sum() · |v|_∞`.
    pub fn row_abs_sum(&self) -> f32 {
        self.row_abs_sum
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `y += W·v` (`y.len()` = rows, `v.len()` = cols). No allocation.
    #[inline]
    pub fn gemv_add(&self, v: &[f32], y: &mut [f32]) {
        debug_assert_eq!(v.len(), self.cols);
        debug_assert_eq!(y.len(), self.rows);
        #[cfg(target_arch = "x86_64")]
        if fma_available() {
            // SAFETY: the CPU has AVX2 and FMA (checked at runtime just above).
            unsafe { gemv_add_fma(&self.data, self.cols, v, y) };
            return;
        }
        gemv_add_portable(&self.data, self.cols, v, y);
    }
}

#[cfg(target_arch = "x86_64")]
fn fma_available() -> bool {
    // std caches the CPUID answer: a load and a branch per call.
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

macro_rules! gemv_body {
    ($data:expr, $cols:expr, $v:expr, $y:expr, $madd:expr) => {{
        for (block, y) in $data.chunks_exact($cols * BLOCK).zip($y.chunks_mut(BLOCK)) {
            let mut acc = [0f32; BLOCK];
            for (col, &vj) in block.chunks_exact(BLOCK).zip($v) {
                let col: &[f32; BLOCK] = col.try_into().expect("chunks_exact(BLOCK)");
                for k in 0..BLOCK {
                    acc[k] = $madd(col[k], vj, acc[k]);
                }
            }
            for (y, a) in y.iter_mut().zip(&acc) {
                *y += *a;
            }
        }
    }};
}

/// [`Packed::gemv_add`] with fused multiply-adds on 8-wide AVX registers.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_add_fma(data: &[f32], cols: usize, v: &[f32], y: &mut [f32]) {
    gemv_body!(data, cols, v, y, |w: f32, x: f32, a: f32| w.mul_add(x, a))
}

/// [`Packed::gemv_add`] for any CPU (separate multiply and add).
fn gemv_add_portable(data: &[f32], cols: usize, v: &[f32], y: &mut [f32]) {
    gemv_body!(data, cols, v, y, |w: f32, x: f32, a: f32| a + w * x)
}

/// tanh in place: the rational approximation ONNX Runtime's MLAS and Eigen use
/// (odd degree-13 over even degree-6 polynomial on [-9, 9]; |error| < 1e-6),
/// branch-free so the loop vectorises.
#[inline]
pub fn tanh_in_place(xs: &mut [f32]) {
    for x in xs {
        *x = tanh(*x);
    }
}

/// logistic σ(x) = ½ + ½·tanh(x/2) in place.
#[inline]
pub fn sigmoid_in_place(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5f32.mul_add(tanh(0.5 * *x), 0.5);
    }
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    const A13: f32 = -2.760_768_5e-16;
    const A11: f32 = 2.000_188e-13;
    const A9: f32 = -8.604_672e-11;
    const A7: f32 = 5.122_297e-8;
    const A5: f32 = 1.485_722_4e-5;
    const A3: f32 = 6.372_619_3e-4;
    const A1: f32 = 4.893_524_6e-3;
    const B6: f32 = 1.198_258_4e-6;
    const B4: f32 = 1.185_347_1e-4;
    const B2: f32 = 2.268_434_7e-3;
    const B0: f32 = 4.893_525e-3;
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let mut p = x2 * A13 + A11;
    p = p * x2 + A9;
    p = p * x2 + A7;
    p = p * x2 + A5;
    p = p * x2 + A3;
    p = p * x2 + A1;
    p *= x;
    let mut q = x2 * B6 + B4;
    q = q * x2 + B2;
    q = q * x2 + B0;
    p / q
}

/// Softmax in place (max-subtracted; the exponentials are std's, the row is short).
#[inline]
pub fn softmax_in_place(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in xs.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in xs.iter_mut() {
        *x /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_matches_the_naive_product_at_odd_sizes() {
        for (rows, cols) in [(1, 1), (3, 5), (64, 7), (65, 130), (512, 144)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let v: Vec<f32> = (0..cols).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
            let packed = Packed::new(&w, rows, cols);
            let mut y = vec![1.0f32; rows];
            packed.gemv_add(&v, &mut y);
            let mut z = vec![1.0f32; rows];
            gemv_add_portable(&packed.data, cols, &v, &mut z);
            for r in 0..rows {
                let want: f64 = 1.0 + (0..cols).map(|c| w[r * cols + c] as f64 * v[c] as f64).sum::<f64>();
                assert!((y[r] as f64 - want).abs() < 1e-4, "{rows}x{cols} row {r}: {} vs {want}", y[r]);
                assert!((z[r] as f64 - want).abs() < 1e-4, "portable {rows}x{cols} row {r}");
            }
        }
    }

    #[test]
    fn activations_are_within_a_millionth() {
        let mut worst = (0.0f64, 0.0f64);
        for i in -20_000..=20_000 {
            let x = i as f32 / 1000.0;
            let (mut t, mut s) = ([x], [x]);
            tanh_in_place(&mut t);
            sigmoid_in_place(&mut s);
            let xt = (x as f64).tanh();
            let xs = 1.0 / (1.0 + (-(x as f64)).exp());
            worst.0 = worst.0.max((t[0] as f64 - xt).abs());
            worst.1 = worst.1.max((s[0] as f64 - xs).abs());
        }
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "max |error| tanh {:e}, sigmoid {:e}", worst.0, worst.1);
        let mut p = [1.0f32, 2.0, 3.0];
        softmax_in_place(&mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && p[2] > p[1]);
    }
}
