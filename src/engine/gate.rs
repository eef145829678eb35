//! The load-time gate: before a native evaluator may serve, it must give ONNX Runtime's
//! answer on rows that cover the model — not on rows the model never branches on.
//!
//! Rows:
//! - **Tree ensembles** are covered from their own structure ([`Trees::covering_rows`]):
//!   for every leaf a row can reach, rows that reach it with each feature at the inside
//!   edges of its path's range (and NaN where missing values lead there); every threshold
//!   `t` with the values just above and below it; zeros of both signs, the smallest
//!   normals, a denormal, huge finite values, infinities, NaN. The report counts branch
//!   nodes taken both ways and leaves reached against what any row can reach.
//! - **Dense, linear and LSTM models** get rows at the scale of their real inputs: the
//!   manifest's `[input] min`/`max` where given, else ±4 around the mean when the manifest
//!   normalises (`mean`/`std`), else magnitudes from 1e-3 to 1e6 of either sign; then each
//!   feature alone at ±1e3 … ±3e38 (saturating sigmoid, tanh and softmax), all at once,
//!   zeros of both signs. A recurrent model's input state is, row by row, one ONNX Runtime
//!   reached itself over a stream of those rows, or uniform in ±1 or ±3.
//!
//! Each row runs through both backends (ONNX Runtime in batches on the engine's slots, the
//! native evaluator row by row, on this thread with denormals as zero as the serving thread
//! runs). [`compare`] (shared with the live verifier, `crate::verify`) holds them to:
//! every output and returned state value within [`TOLERANCE`] of ONNX Runtime's (relative
//! above 1; **0 for tree ensembles**, whose evaluator repeats ONNX Runtime's operations in
//! its order), NaN and ±∞ where it has them, and the same decoded signal (direction,
//! confidence, target price). A decoded signal may differ only where the outputs differ
//! within the tolerance and that difference straddles a rounding edge or a tie — counted
//! as a boundary row, never for a tree ensemble.

use super::native::trees::Coverage;
use super::native::NativeModel;
use super::{fpenv, Engine, EngineError};
use crate::manifest::{InputScale, Manifest};
use crate::wire::MlRequest;

/// Largest |native − ORT| accepted in any output or state value of an approximate
/// evaluator (dense, linear, LSTM), relative to the value above 1.
pub const TOLERANCE: f32 = 1e-4;

/// Random rows drawn at the model's input scale (dense, linear, LSTM).
const SCALE_ROWS: usize = 512;

/// What the gate found.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Rows compared.
    pub rows: usize,
    /// How the rows were made.
    pub drawn: String,
    /// A tree ensemble's coverage.
    pub coverage: Option<Coverage>,
    /// Largest |native − ORT| over agreeing rows.
    pub worst: f32,
    /// Rows whose decoded signal differed only at a rounding edge or tie within the tolerance.
    pub boundary: usize,
    /// Rows outside the native evaluator's range (values so large that its arithmetic
    /// could overflow, or not finite): served by ONNX Runtime, so not compared.
    pub deferred: usize,
    /// The first disagreeing row, described; `None` when every row agreed.
    pub disagreement: Option<String>,
    /// Up to 64 of the rows with every value finite, for timing the backends at load.
    pub timing_rows: Vec<f32>,
    /// How long the gate took (rows made, both backends run, compared).
    pub took: std::time::Duration,
}

impl Gate {
    /// Every row agreed.
    pub fn agrees(&self) -> bool {
        self.disagreement.is_none()
    }

    /// The rows covered the model (every reachable leaf and two-sided branch of a tree
    /// ensemble; other families are covered by scale, not structure).
    pub fn full(&self) -> bool {
        self.coverage.is_none_or(|c| c.full())
    }

    /// One line for the report: rows, coverage, agreement.
    pub fn summary(&self) -> String {
        let coverage = self.coverage.map(|c| format!("; {c}")).unwrap_or_default();
        let verdict = match &self.disagreement {
            Some(first) => format!("DISAGREES: {first}"),
            None if self.boundary == 0 => {
                format!("agrees on every row (max |Δ| {:.1e}), decoded signal identical", self.worst)
            }
            None => format!(
                "agrees on every row (max |Δ| {:.1e}); decoded signal identical but on {} rows at a rounding edge \
                 within that |Δ|",
                self.worst, self.boundary
            ),
        };
        let deferred = match self.deferred {
            0 => String::new(),
            n => format!("; {n} rows beyond the native range left to ONNX Runtime"),
        };
        format!("gate: {} rows ({}, {:.0?}){coverage}{deferred}; {verdict}", self.rows, self.drawn, self.took)
    }
}

/// Run the gate: `native` against the engine's ONNX Runtime session.
pub(super) fn run(engine: &mut Engine, native: &mut NativeModel) -> Result<Gate, EngineError> {
    let t0 = std::time::Instant::now();
    fpenv::denormals_as_zero();
    let manifest = engine.manifest.clone();
    let width = manifest.features.len();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (x, drawn, coverage) = match native {
        NativeModel::Trees(t) => {
            let x = t.covering_rows();
            let coverage = t.coverage(&x);
            (x, "from the trees' thresholds and leaves".to_string(), Some(coverage))
        }
        _ => {
            let (x, drawn) = scale_rows(&manifest, width, &mut rng);
            (x, drawn, None)
        }
    };
    let n = x.len() / width;
    let memory_len: usize = engine.parts.state_widths.iter().sum();
    let memory_in = if memory_len == 0 { Vec::new() } else { states(engine, &x, n, memory_len, &mut rng)? };
    let out_width = manifest.output.width();
    let (mut want, mut want_state) = (vec![0f32; n * out_width], vec![0f32; n * memory_len]);
    engine.reference_rows(&x, &memory_in, &mut want, &mut want_state)?;
    let tolerance = if native.exact() { 0.0 } else { TOLERANCE };
    let req = engine.warm_request(0);
    let (mut got, mut memory) = (vec![0f32; out_width], vec![0f32; memory_len]);
    let timing_rows: Vec<f32> = x
        .chunks_exact(width)
        .filter(|r| r.iter().all(|v| v.is_finite() && v.abs() < 1e30))
        .take(64)
        .flatten()
        .copied()
        .collect();
    let timing_rows = if timing_rows.is_empty() { vec![0.0; width] } else { timing_rows };
    let mut gate = Gate {
        rows: n,
        drawn,
        coverage,
        worst: 0.0,
        boundary: 0,
        deferred: 0,
        disagreement: None,
        timing_rows,
        took: Default::default(),
    };
    for r in 0..n {
        let row = &x[r * width..(r + 1) * width];
        memory.copy_from_slice(&memory_in[r * memory_len..(r + 1) * memory_len]);
        if !native.accepts(row, &memory) {
            gate.deferred += 1;
            continue;
        }
        let ok = native.run(row, &mut memory, &mut got);
        let theirs = Reference {
            out: &want[r * out_width..(r + 1) * out_width],
            state: &want_state[r * memory_len..(r + 1) * memory_len],
        };
        match compare(&manifest, &req, tolerance, Reference { out: &got, state: &memory }, ok, theirs) {
            Check::Agree(d) => gate.worst = gate.worst.max(d),
            Check::Boundary(d) => {
                gate.worst = gate.worst.max(d);
                gate.boundary += 1;
            }
            Check::Disagree(why) => {
                gate.disagreement = Some(format!("row {r} {}: {why}", show(row)));
                break;
            }
        }
    }
    gate.took = t0.elapsed();
    Ok(gate)
}

/// One backend's answer for a row: its output and, for a recurrent model, the state it returned.
#[derive(Clone, Copy)]
pub struct Reference<'a> {
    pub out: &'a [f32],
    pub state: &'a [f32],
}

/// How a native answer compares with ONNX Runtime's.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Within the tolerance, the same decoded signal; the largest |Δ|.
    Agree(f32),
    /// Within the tolerance, but the decoded signal differs at a rounding edge or tie that
    /// the |Δ| straddles (never with tolerance 0).
    Boundary(f32),
    /// Outside the tolerance, or NaN/±∞ where the other has a number, or (tolerance 0) any
    /// difference in the decoded signal: why.
    Disagree(String),
}

/// Compare the native answer `ours` (its state kept when `state_ok`; zeroed when it came
/// back non-finite) with ONNX Runtime's `theirs` for request `req`.
pub fn compare(
    manifest: &Manifest,
    req: &MlRequest,
    tolerance: f32,
    ours: Reference,
    state_ok: bool,
    theirs: Reference,
) -> Check {
    let mut worst = 0f32;
    for (k, (&a, &b)) in ours.out.iter().zip(theirs.out).enumerate() {
        match differ(a, b, tolerance) {
            Ok(d) => worst = worst.max(d),
            Err(()) => return Check::Disagree(format!("output {k}: native {a:e}, ONNX Runtime {b:e}")),
        }
    }
    if !theirs.state.is_empty() {
        let finite = theirs.state.iter().all(|v| v.is_finite());
        if finite != state_ok {
            return Check::Disagree(format!(
                "returned state finite: native {state_ok}, ONNX Runtime {finite}"
            ));
        }
        if finite {
            for (k, (&a, &b)) in ours.state.iter().zip(theirs.state).enumerate() {
                match differ(a, b, tolerance) {
                    Ok(d) => worst = worst.max(d),
                    Err(()) => {
                        return Check::Disagree(format!("state value {k}: native {a:e}, ONNX Runtime {b:e}"))
                    }
                }
            }
        }
    }
    let (mine, want) = (manifest.decode(ours.out, req), manifest.decode(theirs.out, req));
    if mine == want {
        Check::Agree(worst)
    } else if tolerance > 0.0 && worst > 0.0 {
        Check::Boundary(worst)
    } else {
        Check::Disagree(format!("decoded native {mine:?}, ONNX Runtime {want:?}"))
    }
}

/// |a − b| when within `tolerance` (relative above 1); both NaN, or the same infinity, is 0.
fn differ(a: f32, b: f32, tolerance: f32) -> Result<f32, ()> {
    if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || a == b {
        return Ok(0.0);
    }
    let d = (a - b).abs();
    if d.is_finite() && d <= tolerance * b.abs().max(1.0) {
        Ok(d)
    } else {
        Err(())
    }
}

/// A row for a message: its first 8 values.
fn show(row: &[f32]) -> String {
    let shown: Vec<String> = row.iter().take(8).map(|v| format!("{v:e}")).collect();
    format!("[{}{}]", shown.join(", "), if row.len() > 8 { ", …" } else { "" })
}

/// Rows at the model's input scale (model-input units: after the manifest's normalisation),
/// then saturating extremes. Row-major.
fn scale_rows(manifest: &Manifest, width: usize, rng: &mut Rng) -> (Vec<f32>, String) {
    let (ranges, drawn): (Option<Vec<(f64, f64)>>, &str) = match &manifest.input_scale {
        InputScale::Ranges(r) => (Some(r.clone()), "at the manifest's feature ranges"),
        InputScale::Normalized => (Some(vec![(-4.0, 4.0); width]), "at ±4 of the manifest's normalisation"),
        InputScale::Unknown => (None, "no scale in the manifest: magnitudes 1e-3 to 1e6"),
    };
    let mut x = Vec::with_capacity((SCALE_ROWS + 8 * width + 8) * width);
    for _ in 0..SCALE_ROWS {
        for f in 0..width {
            x.push(match &ranges {
                Some(r) => (r[f].0 + (r[f].1 - r[f].0) * rng.unit()) as f32,
                None if rng.unit() < 0.1 => 0.0,
                None => {
                    let m = 10f64.powf(-3.0 + 9.0 * rng.unit());
                    (if rng.unit() < 0.5 { -m } else { m }) as f32
                }
            });
        }
    }
    let extremes = [1e3f32, 1e6, 1e12, 3e38];
    for f in 0..width {
        for k in extremes {
            for sign in [1.0, -1.0] {
                let mut row = vec![0f32; width];
                row[f] = sign * k;
                x.extend(row);
            }
        }
    }
    for v in [1e4f32, -1e4, 3e38, -3e38, 0.0, -0.0] {
        x.extend(std::iter::repeat_n(v, width));
    }
    let n = x.len() / width;
    (x, format!("{drawn}, {n} rows with extremes"))
}

/// A recurrent model's input state per row: states ONNX Runtime itself reached over a
/// stream of the rows (from zero), and uniform values in ±1 and ±3, in turn.
fn states(
    engine: &mut Engine,
    x: &[f32],
    n: usize,
    len: usize,
    rng: &mut Rng,
) -> Result<Vec<f32>, EngineError> {
    let width = x.len() / n;
    let out_width = engine.manifest.output.width();
    let steps = n.min(128);
    let mut reached = Vec::with_capacity(steps * len);
    let (mut state, mut next, mut out) = (vec![0f32; len], vec![0f32; len], vec![0f32; out_width]);
    for r in 0..steps {
        engine.reference_rows(&x[r * width..(r + 1) * width], &state, &mut out, &mut next)?;
        if !next.iter().all(|v| v.is_finite()) {
            next.fill(0.0);
        }
        reached.extend_from_slice(&next);
        std::mem::swap(&mut state, &mut next);
    }
    let mut memory = Vec::with_capacity(n * len);
    for r in 0..n {
        match r % 3 {
            0 => {
                let k = (r / 3) % steps;
                memory.extend_from_slice(&reached[k * len..(k + 1) * len]);
            }
            kind => {
                let span = if kind == 1 { 1.0 } else { 3.0 };
                memory.extend((0..len).map(|_| (span * (2.0 * rng.unit() - 1.0)) as f32));
            }
        }
    }
    Ok(memory)
}

/// A seeded xorshift64* stream: the same rows every load.
struct Rng(u64);

impl Rng {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::differ;

    #[test]
    fn tolerance_is_relative_above_one_and_nan_matches_nan() {
        assert_eq!(differ(1.0, 1.0, 0.0), Ok(0.0));
        assert_eq!(differ(f32::NAN, f32::NAN, 0.0), Ok(0.0));
        assert_eq!(differ(f32::INFINITY, f32::INFINITY, 0.0), Ok(0.0));
        assert!(differ(1.0, 1.0 + f32::EPSILON, 0.0).is_err(), "tolerance 0 means bit for bit");
        assert!(differ(0.0, -0.0, 0.0).is_ok(), "signed zeros compare equal");
        assert!(differ(1000.0, 1000.05, 1e-4).is_ok());
        assert!(differ(1.0, 1.001, 1e-4).is_err());
        assert!(differ(1.0, f32::NAN, 1e-4).is_err());
        assert!(differ(f32::INFINITY, f32::MAX, 1e-4).is_err());
    }
}
